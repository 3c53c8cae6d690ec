"""Prompt-based CIL on CLIP's image encoder as C3Box fits it (L2P, DualPrompt, CODA-Prompt): the shared parts.

C3Box (LAMDA-CL/C3Box at 1378ab2118f04d4ca0d4782d22bd0098a3eeb666) rebuilds the open_clip ViT-B-16 image tower
with prompts (`backbone/l2p_model.py`, `dualprompt_model.py`, `codaprompt_model.py`), puts a linear head on the
projected CLS token (`nn.Linear(512, classes)`), keeps a frozen copy of the tower (`original_backbone`) whose output
is the query that selects the prompts, and replays herding exemplars (`models/base.py`).

Here the suite's own image tower is used in place:

- an open_clip `VisionTransformer`: `encode` recomputes its forward (patch embedding, class token, positional
  embedding, `ln_pre`, the blocks, `ln_post`, the pooled token, `proj`) with prompt tokens inserted after the class
  token (L2P) or key/value prefixes concatenated in chosen blocks' attention (DualPrompt, CODA: prefix-tuning, the
  `Attention.forward(prompt=...)` of those files), per head;
- a tower without transformer blocks (the mini model's frozen, cached EfficientNet): the documented analogous
  placement is the pooled feature p before the projection, seen as a one-token sequence; the prompts are a prefix of
  one identity-projection attention added to it, p <- p + softmax(p K^T / sqrt(P)) V with K = [prefix keys; p],
  V = [prefix values; p] (L2P's prompt tokens are both), then the tower's projection.

The query of every method is the frozen tower's output (the unprompted forward of the same tower, without grad).
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from clipbench.errors import ClipbenchError
from clipbench.streams import LabelledImages

from . import bridge
from .base import Method, MethodConfig
from .icarl import herding

C3BOX = "LAMDA-CL/C3Box at 1378ab2118f04d4ca0d4782d22bd0098a3eeb666"

Prefix = Tuple[torch.Tensor, torch.Tensor]  # keys, values [B, Lp, D]


# ---------------------------------------------------------------------------------------------- cores

def l2_normalize(x: torch.Tensor, dim: int) -> torch.Tensor:
    """`Prompt.l2_normalize`: x * rsqrt(max(sum x^2, 1e-12))."""
    square = torch.sum(x ** 2, dim=dim, keepdim=True)
    return x * torch.rsqrt(torch.clamp(square, min=1e-12))


def select_prompts(query: torch.Tensor, keys: torch.Tensor, top_k: int, batchwise: bool,
                   mask: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """`backbone/prompt.py::Prompt.forward` (and `EPrompt.forward`)'s choice of prompts from a pool.

    cos = norm(query) @ norm(keys)^T [B, pool]; each image's top_k keys; with `batchwise` the batch takes the
    top_k most frequent ids (ids sorted, the missing ones padded with the smallest chosen id and count 0, as the
    code's port of `jnp.unique(size=pool)`); `mask` [B, top_k] overrides the choice. Returns the ids [B, top_k]
    and the pull term reduce_sim = sum(norm(key_idx) * norm(query)) / B."""
    key_norm = l2_normalize(keys, dim=-1)
    q_norm = l2_normalize(query, dim=-1)
    if mask is None:
        similarity = q_norm @ key_norm.T
        _, idx = torch.topk(similarity, k=top_k, dim=1)
        if batchwise:
            ids, counts = torch.unique(idx, return_counts=True, sorted=True)
            pool = len(keys)
            if len(ids) < pool:
                ids = torch.cat([ids, torch.full((pool - len(ids),), int(idx.min()), device=ids.device)])
                counts = torch.cat([counts, torch.zeros(pool - len(counts), dtype=counts.dtype, device=counts.device)])
            _, major = torch.topk(counts, k=top_k)
            idx = ids[major].expand(len(query), -1)
    else:
        idx = mask
    reduce_sim = torch.sum(key_norm[idx] * q_norm[:, None, :]) / len(query)
    return idx, reduce_sim


def task_mask(task: int, top_k: int, pool: int, batch: int, device) -> Optional[torch.Tensor]:
    """C3Box's `use_prompt_mask` in training: task t uses ids [t*top_k, (t+1)*top_k) while they fit the pool;
    afterwards None (query selection)."""
    start, end = task * top_k, (task + 1) * top_k
    if end > pool:
        return None
    return torch.arange(start, end, device=device)[None].expand(batch, -1)


def prefix_attention(y: torch.Tensor, attn: nn.MultiheadAttention, prefix: Optional[Prefix]) -> torch.Tensor:
    """The block's attention on normalised tokens y [B, L, D] with key/value prefixes [B, Lp, D] concatenated
    before its own keys and values, per head (C3Box's `Attention.forward(prompt=...)`): softmax(q k^T / sqrt(d_h))
    v, then the output projection."""
    b, n, d = y.shape
    h = attn.num_heads
    q, k, v = F.linear(y, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    split = lambda t: t.reshape(b, -1, h, d // h).transpose(1, 2)  # noqa: E731  [B, H, L, d_h]
    q, k, v = split(q), split(k), split(v)
    if prefix is not None:
        k = torch.cat([split(prefix[0].to(y.dtype)), k], dim=2)
        v = torch.cat([split(prefix[1].to(y.dtype)), v], dim=2)
    out = torch.softmax((q @ k.transpose(-2, -1)) * (d // h) ** -0.5, dim=-1) @ v
    return attn.out_proj(out.transpose(1, 2).reshape(b, n, d))


def join_prefix(prefixes: Dict[int, Prefix], layer: int, keys: torch.Tensor, values: torch.Tensor) -> None:
    """Add a key/value prefix [B, Lp, D] to `layer`, after any prefix already there."""
    if layer in prefixes:
        old_k, old_v = prefixes[layer]
        keys, values = torch.cat([old_k, keys], dim=1), torch.cat([old_v, values], dim=1)
    prefixes[layer] = (keys, values)


def pooled_prefix(p: torch.Tensor, prefix: Optional[Prefix]) -> torch.Tensor:
    """The analogous placement on a pooled feature p [B, P]: p + softmax(p K^T / sqrt(P)) V, K = [keys; p],
    V = [values; p], one head, no projections."""
    if prefix is None:
        return p
    keys = torch.cat([prefix[0].to(p.dtype), p[:, None]], dim=1)
    values = torch.cat([prefix[1].to(p.dtype), p[:, None]], dim=1)
    weights = torch.softmax((keys @ p[:, :, None])[..., 0] / p.shape[1] ** 0.5, dim=1)
    return p + (weights[:, :, None] * values).sum(dim=1)


# ---------------------------------------------------------------------------------------------- the tower

class Tower:
    """Where prompts go in one image tower: `kind` "vit" (blocks, `width`, `heads`, `layers`) or "pooled" (the
    pooled feature of `width` before the projection; one site)."""

    def __init__(self, visual: nn.Module, method: str):
        from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

        self.visual = visual
        if isinstance(visual, VisionTransformer):
            blocks = list(visual.transformer.resblocks)
            if not all(type(b) is ResidualAttentionBlock and not hasattr(b, "ln_1_kv") for b in blocks):
                raise ClipbenchError(f"{method} needs open_clip's ResidualAttentionBlock in the image tower; choose "
                                     "another model.arch")
            if visual.attn_pool is not None or visual.proj is None:
                raise ClipbenchError(f"{method} needs a ViT image tower with a class token and a projection; choose "
                                     "another model.arch")
            self.kind, self.layers = "vit", len(blocks)
            self.width, self.heads = blocks[0].attn.embed_dim, blocks[0].attn.num_heads
            self.batch_first = blocks[0].attn.batch_first
        else:
            bridge.check(visual, method)
            self.kind, self.layers, self.heads = "pooled", 1, 1
            self.width = bridge.projection_weight(visual).shape[1]

    def encode(self, x: torch.Tensor, insert: Optional[torch.Tensor] = None,
               prefixes: Optional[Dict[int, Prefix]] = None) -> torch.Tensor:
        """The projected output with prompt tokens `insert` [B, Lp, D] after the class token and `prefixes` per
        block (a pooled tower: every prefix joined into one, and `insert` used as both keys and values)."""
        prefixes = prefixes or {}
        visual = self.visual
        if self.kind == "pooled":
            parts = [prefixes[k] for k in sorted(prefixes)] + ([(insert, insert)] if insert is not None else [])
            joined = (torch.cat([k for k, _ in parts], 1), torch.cat([v for _, v in parts], 1)) if parts else None
            return bridge.project(visual, pooled_prefix(bridge.pooled(visual, x), joined))
        t = visual.conv1(x)
        t = t.reshape(t.shape[0], t.shape[1], -1).permute(0, 2, 1)
        cls = visual.class_embedding.to(t.dtype) + torch.zeros(t.shape[0], 1, t.shape[-1], dtype=t.dtype, device=t.device)
        t = torch.cat([cls, t], dim=1) + visual.positional_embedding.to(t.dtype)
        if insert is not None:  # L2P: after the class token, after the positional embedding, before ln_pre
            t = torch.cat([t[:, :1], insert.to(t.dtype), t[:, 1:]], dim=1)
        t = visual.ln_pre(t)
        for i, block in enumerate(visual.transformer.resblocks):
            if i in prefixes:
                y = prefix_attention(block.ln_1(t), block.attn, prefixes[i])
                t = t + block.ls_1(y)
                t = t + block.ls_2(block.mlp(block.ln_2(t)))
            else:
                t = block(t) if self.batch_first else block(t.transpose(0, 1)).transpose(0, 1)
        pooled, _ = visual._pool(t)
        return pooled @ visual.proj


# ---------------------------------------------------------------------------------------------- the method

@dataclass
class PromptConfig(MethodConfig):
    replay: bool = True  # C3Box's exemplar replay (herding); False: the original rehearsal-free method
    memory_size: int = 2000  # exemplars in total (C3Box `memory_size`)
    memory_per_class: int = 20  # exemplars per class when fixed_memory (C3Box `memory_per_class`)
    fixed_memory: bool = True  # True: memory_per_class each; False: memory_size // classes seen
    batchwise: bool = True  # at test, a batch shares the prompts most of its images choose (C3Box: True)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.memory_size < 0 or self.memory_per_class < 0:
            raise ClipbenchError(f"memory_size and memory_per_class must be >= 0, got {self.memory_size}, "
                                 f"{self.memory_per_class}")


class PromptMethod(Method):
    """A frozen CLIP image tower with prompts, a linear head on its projected output, CE over the classes seen so
    far (C3Box's `logits[:, :total_classes]`), herding exemplars. Subclasses build the prompts
    (`build_prompts`), compute the prompted output (`prompted`), and name what trains (`prompt_parameters`)."""

    Config = PromptConfig
    scores_raw_features = True

    # ---- subclass hooks
    def build_prompts(self, tower: Tower, query_dim: int, n_tasks: int) -> nn.Module:
        raise NotImplementedError

    def prompted(self, x: torch.Tensor, query: torch.Tensor, train: bool) -> torch.Tensor:
        raise NotImplementedError

    def prompt_parameters(self) -> List[nn.Parameter]:
        return list(self.prompts.parameters())

    def start_task(self, task: int) -> None:
        """Before task `task` (> 0) trains (C3Box's `_init_prompt` / `process_task_count`)."""

    # ---- setup
    def setup(self, model, streams) -> None:
        self.streams, self.model = streams, model
        visual = model.clip.visual
        self.tower = Tower(visual, self.name)
        with torch.no_grad():
            out_dim = model.encode_tokens(model.prompt_tokens[:1]).shape[-1]  # the joint space's width
        self.prompts = self.build_prompts(self.tower, out_dim, streams.n_experiences)
        self.head = nn.Linear(out_dim, len(streams.class_names))  # C3Box: nn.Linear(512, nb_classes)
        self.init_head(self.head)
        visual.add_module("prompt_pool", self.prompts)
        visual.add_module("prompt_head", self.head)
        self.learned = 0
        self.n_seen = 0
        self.active = False  # prompts in the forward: while training and once a task is learned
        self.exemplars: Dict[int, torch.Tensor] = {}
        self.training_task = 0
        self.extra: Optional[torch.Tensor] = None
        self._frozen_forward = visual.forward
        method = self

        def forward(x: torch.Tensor) -> torch.Tensor:
            if not method.active:
                return method._frozen_forward(x)
            with torch.no_grad():
                query = method._frozen_forward(x)
            return method.prompted(x, query, train=torch.is_grad_enabled() and method.prompts.training)

        visual.forward = forward

        def model_forward(images: torch.Tensor) -> torch.Tensor:  # training: the head's logits, seen classes
            features = model.clip.encode_image(model.preprocess(images))
            return self.head(features)[:, :model.num_active]

        model.forward = model_forward

    def init_head(self, head: nn.Linear) -> None:
        """nn.Linear's default init (L2P, CODA); DualPrompt overrides."""

    # ---- training
    def trainable_parameters(self, model) -> List[nn.Parameter]:
        return self.prompt_parameters() + list(self.head.parameters())

    def training_data(self, streams, exp):
        if not self.exemplars:
            return streams.train[exp]
        memory = [LabelledImages(imgs, torch.full((len(imgs),), c, dtype=torch.long))
                  for c, imgs in sorted(self.exemplars.items())]
        return LabelledImages.concat([streams.train[exp]] + memory)

    def before_training_exp(self, strategy, **kwargs):
        self.training_task = self.learned
        if self.learned > 0:
            self.start_task(self.learned)
        self.active = True
        strategy._criterion = nn.CrossEntropyLoss()  # C3Box: F.cross_entropy(logits[:, :total_classes], y)

    def loss(self, strategy) -> Optional[torch.Tensor]:
        extra, self.extra = self.extra, None
        return extra

    def after_training_exp(self, strategy, **kwargs):
        exp = strategy.experience.current_experience
        classes = self.streams.experience_classes[exp]
        self.learned += 1
        self.n_seen = classes[-1] + 1
        self.extra = None
        if not self.config.replay:
            return
        cfg = self.config
        per_class = cfg.memory_per_class if cfg.fixed_memory else cfg.memory_size // self.n_seen
        if not cfg.fixed_memory:  # `_reduce_exemplar`
            self.exemplars = {c: imgs[:per_class] for c, imgs in self.exemplars.items()}
        data = self.streams.train[exp]
        features = self._frozen_features(data.images, strategy.device)  # C3Box `extract_vector`
        for c in classes:
            rows = data.labels == c
            if per_class:
                self.exemplars[c] = data.images[rows][herding(features[rows], per_class)]

    @torch.no_grad()
    def _frozen_features(self, images: torch.Tensor, device, batch: int = 128) -> torch.Tensor:
        model = self.model
        visual = model.clip.visual
        was = visual.training
        visual.eval()
        out = [self._frozen_forward(model.preprocess(images[s:s + batch].to(device))).float().cpu()
               for s in range(0, len(images), batch)]
        visual.train(was)
        return torch.cat(out) if out else torch.empty(0)

    # ---- evaluation
    def scores(self, image_features: torch.Tensor, class_features: torch.Tensor) -> Optional[torch.Tensor]:
        if not self.learned:
            return None
        n = self.n_seen
        device = self.head.weight.device
        with torch.no_grad():
            seen = self.head(image_features.to(device).to(self.head.weight.dtype))[:, :n].float().cpu()
        out = torch.empty(len(image_features), len(class_features))
        out[:, :n] = seen
        out[:, n:] = seen.min(dim=1, keepdim=True).values - 1  # never above a learned class
        return out

    def inference_extras(self) -> str:
        return "a frozen copy of the image tower's output (the prompt query): two image-tower passes per image"

    def exemplar_count(self) -> int:
        return sum(len(imgs) for imgs in self.exemplars.values())

    def state_dict(self) -> Dict[str, Any]:
        return {"learned": self.learned, "n_seen": self.n_seen, "exemplars": self.exemplars}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.learned, self.n_seen, self.exemplars = state["learned"], state["n_seen"], dict(state["exemplars"])
        self.active = self.learned > 0
