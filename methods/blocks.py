"""Where a method inserts its modules into an open_clip model, and how (MoE-Adapters, DIKI).

A *site* is one place in one tower:

- `block`: an open_clip `ResidualAttentionBlock` (every open_clip ViT and text transformer builds these,
  with `nn.MultiheadAttention`); a method's module goes beside the block's MLP (`beside_mlp`) or into
  its attention (`into_attention`), by replacing the block's `forward` on that instance only, so the
  block's own parameters keep their names (checkpoints, frozen prefixes) and its class.
- `projection`: a tower with no open_clip transformer block (the mini model's timm CNN and Hugging Face
  text towers, frozen and cached) offers the pooled features just before its projection: the module
  then sees them as a one-token sequence [N, 1, D] and its output is added to them (`before_projection`).
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import List, Optional

import torch
from torch import nn

from clipbench.errors import ClipbenchError


@dataclass
class Site:
    tower: str  # "image" or "text"
    layer: int  # the block's index in its tower (0 for a projection site)
    kind: str  # "block" or "projection"
    width: int  # the residual stream's width (the projection's input width)
    heads: int  # attention heads (0 for a projection site)
    module: nn.Module  # the ResidualAttentionBlock, or the projection layer
    parent: Optional[nn.Module] = None  # a projection site: the module holding the projection ...
    attr: str = ""  # ... under this attribute name


def _tower(name: str) -> Optional[str]:
    if name.startswith("visual"):
        return "image"
    if name == "transformer" or name.startswith("text."):  # CLIP's text transformer; CustomTextCLIP's text tower
        return "text"
    return None  # e.g. CoCa's multimodal decoder


def find_sites(clip: nn.Module, method: str) -> List[Site]:
    """Every block of every open_clip transformer in the image and text towers, in layer order; a tower
    without one offers its projection instead. Unsupported blocks fail with one clear line."""
    from open_clip.transformer import CustomResidualAttentionBlock, ResidualAttentionBlock, Transformer

    sites: List[Site] = []
    for tower in ("image", "text"):
        transformers = [(n, m) for n, m in clip.named_modules() if isinstance(m, Transformer) and _tower(n) == tower]
        for name, transformer in transformers:
            for layer, block in enumerate(transformer.resblocks):
                where = f"{name}.resblocks.{layer}"
                if isinstance(block, CustomResidualAttentionBlock) or not isinstance(block, ResidualAttentionBlock):
                    raise ClipbenchError(f"{method} needs open_clip's ResidualAttentionBlock (nn.MultiheadAttention); "
                                         f"{where} is a {type(block).__name__}: choose another model.arch")
                if hasattr(block, "ln_1_kv"):
                    raise ClipbenchError(f"{method}: {where} is a cross-attention block; choose another model.arch")
                sites.append(Site(tower, layer, "block", block.attn.embed_dim, block.attn.num_heads, block))
        if not transformers:
            sites.append(_projection_site(clip, tower, method))
    return sites


def _projection_site(clip: nn.Module, tower: str, method: str) -> Site:
    """The linear projection that takes a non-transformer tower's pooled output (open_clip's timm head,
    `Sequential(drop, proj)`, or its Hugging Face text tower's `proj`)."""
    owner = getattr(clip, "visual" if tower == "image" else "text", None)
    parent, attr = owner, "head" if tower == "image" else "proj"
    layer = getattr(owner, attr, None)
    if isinstance(layer, nn.Sequential) and isinstance(getattr(layer, "proj", None), nn.Linear):
        parent, attr, layer = layer, "proj", layer.proj
    if not isinstance(layer, nn.Linear):
        raise ClipbenchError(f"{method} found neither an open_clip transformer block nor a linear projection in the "
                             f"{tower} tower of this model")
    return Site(tower, 0, "projection", layer.in_features, 0, layer, parent, attr)


def _batch_first(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """x as [N, L, D] and back (open_clip builds batch-first blocks; a sequence-first one is transposed)."""
    return x if block.attn.batch_first else x.transpose(0, 1)


def beside_mlp(site: Site, extra: nn.Module) -> None:
    """x <- x + attn(ln_1 x); x <- x + mlp(ln_2 x) + extra(x), `extra` taking and returning [N, L, D]
    (None: nothing added). A projection site: proj(p + extra(p)) with p as [N, 1, D]."""
    if site.kind == "projection":
        return _before_projection(site, extra, with_attention=False)
    site.module.add_module("inserted", extra)
    site.module.forward = types.MethodType(_forward_beside_mlp, site.module)


def into_attention(site: Site, extra: nn.Module) -> None:
    """x <- x + attn(ln_1 x) + extra(ln_1 x, block.attn); x <- x + mlp(ln_2 x), `extra` taking the
    normalised tokens [N, L, D] and the block's nn.MultiheadAttention and returning [N, L, D] in the
    attention's output space (None: nothing added). A projection site: proj(p + extra(p, None))."""
    if site.kind == "projection":
        return _before_projection(site, extra, with_attention=True)
    site.module.add_module("inserted", extra)
    site.module.forward = types.MethodType(_forward_into_attention, site.module)


# The replaced forwards are bound methods of the block (not closures), so a deep copy of the model stays whole.
def _forward_beside_mlp(self, q_x: torch.Tensor, k_x=None, v_x=None, attn_mask: Optional[torch.Tensor] = None):
    x = q_x + self.ls_1(self.attention(q_x=self.ln_1(q_x), attn_mask=attn_mask))
    out = x + self.ls_2(self.mlp(self.ln_2(x)))
    added = self.inserted(_batch_first(self, x))
    return out if added is None else out + _batch_first(self, added)


def _forward_into_attention(self, q_x: torch.Tensor, k_x=None, v_x=None, attn_mask: Optional[torch.Tensor] = None):
    y = self.ln_1(q_x)
    a = self.attention(q_x=y, attn_mask=attn_mask)
    added = self.inserted(_batch_first(self, y), self.attn)
    if added is not None:
        a = a + _batch_first(self, added)
    x = q_x + self.ls_1(a)
    return x + self.ls_2(self.mlp(self.ln_2(x)))


class BeforeProjection(nn.Module):
    """proj(p + inserted(p)) for pooled features p [N, D], which `inserted` sees as [N, 1, D]."""

    def __init__(self, proj: nn.Linear, inserted: nn.Module, with_attention: bool):
        super().__init__()
        self.proj = proj
        self.inserted = inserted
        self.with_attention = with_attention

    @property
    def weight(self) -> torch.Tensor:  # code that inspects the layer (dtype, device) sees the original
        return self.proj.weight

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        tokens = p[:, None, :]
        added = self.inserted(tokens, None) if self.with_attention else self.inserted(tokens)
        return self.proj(p if added is None else p + added[:, 0, :])


def _before_projection(site: Site, extra: nn.Module, with_attention: bool) -> None:
    wrapped = BeforeProjection(site.module, extra, with_attention)
    setattr(site.parent, site.attr, wrapped)
    site.module = wrapped
