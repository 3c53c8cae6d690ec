"""The image tower's bridge layer: the projection from its pooled feature into the joint space.

ENGINE and BOFA (LAMDA-CL) read the pooled, pre-projection feature of the image tower (their
`visual_forward_`: ViT-B-16's 768-d ln_post'ed class token) for GDA, and BOFA replaces the projection
itself (768 -> 512 in ViT-B-16, "the bridge layer"). Here, for any model clipbench runs:

- an open_clip `VisionTransformer`: pooled = `_pool(transformer(_embeds(x)))` (exactly the code's
  `visual_forward_`), projection = `pooled @ proj`;
- a timm tower (`TimmModel`, the mini model's EfficientNet-Lite0): pooled = the trunk's pooled output
  (the mini model's cached `visual.pooled`), projection = the head's linear `proj` (1280 -> 256 in the mini model).

`install(visual, head)` makes the tower compute `head(pooled)` in place of its projection, and records,
for every forward pass without gradient (evaluation), each output row's pooled feature, keyed by the
row's L2-normalised bytes: `Method.scores` only receives the evaluator's normalised image features,
and finds the pooled features of those rows by that key (`PooledRecord.lookup`).
"""

from __future__ import annotations

import types
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from clipbench.errors import ClipbenchError


def _kind(visual: nn.Module, method: str) -> str:
    from open_clip.timm_model import TimmModel
    from open_clip.transformer import VisionTransformer

    if isinstance(visual, VisionTransformer):
        if visual.proj is None:
            raise ClipbenchError(f"{method} needs the image tower's projection; this VisionTransformer has none "
                                 "(choose another model.arch)")
        return "vit"
    if isinstance(visual, TimmModel):
        head = dict(visual.head.named_children())
        proj = head.get("proj")
        if set(head) - {"drop", "proj"} or not isinstance(proj, nn.Linear) or proj.bias is not None:
            raise ClipbenchError(f"{method} needs the timm image tower's head to be one bias-free linear projection "
                                 f"(open_clip's timm_proj 'linear'); this one has {sorted(head)}")
        return "timm"
    raise ClipbenchError(f"{method} needs an open_clip VisionTransformer or timm image tower with a linear projection; "
                         f"this model's image tower is a {type(visual).__name__}")


def check(visual: nn.Module, method: str) -> None:
    """One clear line when the tower has no bridge layer this module knows."""
    _kind(visual, method)


def pooled(visual: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The pooled, pre-projection image feature (the code's `visual_forward_`)."""
    if hasattr(visual, "pooled"):  # the mini model's frozen, content-cached trunk
        return visual.pooled(x)
    if _kind(visual, "bridge") == "timm":
        return visual.trunk(x)
    x = visual._embeds(x)
    x = visual.transformer(x)
    return visual._pool(x)[0]


def project(visual: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """The tower's own (frozen) projection of pooled features: the CLIP image feature."""
    if _kind(visual, "bridge") == "vit":
        return features @ visual.proj
    return visual.head(features)


def projection_weight(visual: nn.Module) -> torch.Tensor:
    """The projection as an (out x in) matrix W0, so that project(p) = p W0^T (OLF's `W0_torch`)."""
    if _kind(visual, "bridge") == "vit":
        return visual.proj.detach().T.clone()
    return visual.head.proj.weight.detach().clone()


class PooledRecord:
    """Pooled features of the rows the tower computed without gradient, by the bytes of each row's
    L2-normalised float32 output (what the evaluator hands to `Method.scores`)."""

    def __init__(self) -> None:
        self.index: Dict[bytes, int] = {}
        self.rows: List[torch.Tensor] = []

    def clear(self) -> None:
        self.index, self.rows = {}, []

    @staticmethod
    def _keys(features: torch.Tensor) -> List[bytes]:
        rows = features.detach().float().cpu().contiguous().numpy()
        return [r.tobytes() for r in rows]

    def add(self, output: torch.Tensor, pooled_features: torch.Tensor) -> None:
        keys = self._keys(F.normalize(output.float(), dim=-1))
        pooled_cpu = pooled_features.detach().float().cpu()
        for key, row in zip(keys, pooled_cpu):
            if key not in self.index:
                self.index[key] = len(self.rows)
                self.rows.append(row)

    def lookup(self, image_features: torch.Tensor, method: str) -> torch.Tensor:
        """The pooled features [N, P] of evaluated image features [N, D]."""
        try:
            found = [self.index[k] for k in self._keys(image_features)]
        except KeyError:
            raise RuntimeError(f"{method}: scored image features that the image tower did not compute in this "
                               "evaluation (their pooled features are unknown)") from None
        if not found:
            return torch.empty(0, 0)
        return torch.stack([self.rows[i] for i in found])


def _forward_with_head(self, x: torch.Tensor) -> torch.Tensor:
    p = pooled(self, x)
    out = self.bridge_head(p)
    if not torch.is_grad_enabled() and self.bridge_record is not None:
        self.bridge_record.add(out, p)
    return out


def install(visual: nn.Module, head: nn.Module, record: Optional[PooledRecord], method: str) -> None:
    """The tower computes `head(pooled(x))`; `head` becomes the submodule `visual.bridge_head` (its
    parameters are image parameters). Rows computed without gradient go into `record`."""
    check(visual, method)
    visual.add_module("bridge_head", head)
    visual.bridge_record = record
    # a bound method of the instance, not a closure: a deep copy of the model stays whole
    visual.forward = types.MethodType(_forward_with_head, visual)
