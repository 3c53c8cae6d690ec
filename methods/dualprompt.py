"""DualPrompt on CLIP's image encoder, as C3Box fits it (Wang et al., "DualPrompt: Complementary Prompting for
Rehearsal-free Continual Learning", ECCV 2022)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import torch
from torch import nn

from clipbench.errors import ClipbenchError

from .base import register_method
from .prompting import Prefix, PromptConfig, PromptMethod, Tower, join_prefix, select_prompts, task_mask


def e_prefixes(prompt: torch.Tensor, idx: torch.Tensor, fix_layout: bool) -> torch.Tensor:
    """The E-prompts of ids `idx` [B, top_k] from the pool `prompt` [layers, 2, pool, length, H, d_h], as
    `EPrompt.forward` (prefix-tune branch) returns them: [layers, B, 2, top_k * length, H, d_h].

    The code reshapes `prompt[:, :, idx]` ([layers, 2, B, top_k, length, H, d_h]) to [layers, B, 2, ...]
    without a permute: rows of the key/value and batch axes are interleaved (with a batch of equal ids, the
    first half of the batch gets the key prompt as both keys and values, the second half the value prompt).
    `fix_layout` permutes first (the evident intent)."""
    raw = prompt[:, :, idx]
    layers, dual, b, k, length, h, d = raw.shape
    if fix_layout:
        raw = raw.permute(0, 2, 1, 3, 4, 5, 6)
    return raw.reshape(layers, b, dual, k * length, h, d)


class DualPrompts(nn.Module):
    """`dualprompt_model.py::VisionTransformer`'s `g_prompt` [g_layers, 2, length, H, d_h] and `EPrompt`'s pool
    `prompt` [e_layers, 2, pool, length, H, d_h] and keys `prompt_key` [pool, query_dim], all U(-1, 1)."""

    def __init__(self, g_layers: int, e_layers: int, g_length: int, e_length: int, pool: int, heads: int,
                 width: int, query_dim: int):
        super().__init__()
        d = width // heads
        self.g_prompt = nn.Parameter(torch.empty(g_layers, 2, g_length, heads, d).uniform_(-1, 1))
        self.prompt = nn.Parameter(torch.empty(e_layers, 2, pool, e_length, heads, d).uniform_(-1, 1))
        self.prompt_key = nn.Parameter(torch.empty(pool, query_dim).uniform_(-1, 1))


@dataclass
class DualPromptConfig(PromptConfig):
    g_layers: List[int] = field(default_factory=lambda: [0, 1])  # hard-coded in C3Box's backbone
    e_layers: List[int] = field(default_factory=lambda: [2, 3, 4])
    g_length: int = 5
    e_length: int = 5
    pool_size: int = 10
    top_k: int = 1
    pull: float = 0.1  # loss = CE - pull * reduce_sim
    prompt_mask: bool = True  # training: task t uses E-prompt t (use_prompt_mask, forced on in the backbone)
    shared_prompt_pool: bool = True  # exps/dual.json: before task t, E-prompt t starts as E-prompt t-1
    train_g_prompt: bool = False  # C3Box's quirk: only e_prompt and head train (G stays at its random init)
    fix_prefix_layout: bool = False  # C3Box's quirk kept: EPrompt's reshape interleaves key/value and batch rows

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.g_length, self.e_length, self.pool_size) < 1 or not 1 <= self.top_k <= self.pool_size:
            raise ClipbenchError("dualprompt needs g_length, e_length, pool_size >= 1 and 1 <= top_k <= pool_size")
        if not self.e_layers or any(i < 0 for i in self.g_layers + self.e_layers):
            raise ClipbenchError("dualprompt needs e_layers (block indices >= 0)")


@register_method
class DualPrompt(PromptMethod):
    """DualPrompt as C3Box fits it to CLIP. Code: LAMDA-CL/C3Box at 1378ab2118f04d4ca0d4782d22bd0098a3eeb666:
    `models/dual_prompt.py::Learner` (`__init__`, `_train`, `_init_prompt`, `_init_train`, `_eval_cnn`),
    `utils/inc_net.py::DualpromptVitNet`, `backbone/dualprompt_model.py` (`Attention.forward`,
    `VisionTransformer.forward_features`), `backbone/prompt.py::EPrompt.forward`, `models/base.py`, `exps/dual.json`.

    The image tower is frozen. G-prompts (length 5) are key/value prefixes in blocks 0-1; a pool of 10 E-prompts
    (length 5, prefixes in blocks 2-4) with 10 keys of the joint-space width; the query is the frozen tower's
    output; top-1 by cosine, batchwise. Training forces the prompt mask (task t uses E-prompt t while t < 10) and,
    before task t, copies E-prompt t-1 into E-prompt t (`shared_prompt_pool`). Prefix-tuning: the block's keys and
    values are [prefix; own] per head. A linear head (Kaiming-uniform, bias 0) on the projected class token;
    loss = CE over the classes seen so far - 0.1 * reduce_sim. Exemplars: herding, 20 per class (fixed memory).

    Quirks of C3Box kept as defaults, each a setting: only the E-prompts, their keys and the head train; the
    G-prompts stay at their U(-1, 1) initialisation (`train_g_prompt`; original DualPrompt: true); `EPrompt`'s
    reshape without permute mixes the key/value and batch axes (`e_prefixes`; `fix_prefix_layout: true` corrects
    it); exemplar replay (`replay`; the original is rehearsal-free); prompt settings hard-coded in the backbone
    (the JSON's ignored; here `g_layers`, `e_layers`, lengths, `pool_size`, `top_k`). C3Box loads `./c.pth` into
    its open_clip ViT-B-16 (an unshipped state dict, presumably laion400m_e32); here the suite's model is used.
    Recipe (`exps/dual.json`): Adam lr 1e-3, weight decay 0, constant, 10 epochs, batch 64.

    Departures: a tower shallower than the prompted depth (max layer + 1; the tiny suite's 2 blocks) gets the
    G-prefix (first G layer) in its first block and the E-prefix (first E layer) in its last; on a tower without
    blocks (the mini model) both are joined into one prefix on the pooled feature (`prompting.pooled_prefix`);
    batchwise selection at test acts within the evaluator's batches (`batchwise: false`: each image alone); the
    head covers the stream's classes; classes not learned yet score below every learned class.
    """

    name = "dualprompt"
    version = 1
    Config = DualPromptConfig
    train_defaults = {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "schedule": "constant",
                      "epochs": 10, "batch_size": 64}

    def placement(self, tower: Tower) -> Tuple[List[int], List[int]]:
        """Blocks of the G- and E-prompts on this tower."""
        cfg = self.config
        depth = max(cfg.g_layers + cfg.e_layers) + 1
        if tower.layers >= depth:
            return list(cfg.g_layers), list(cfg.e_layers)
        return ([0] if cfg.g_layers else []), [tower.layers - 1]

    def build_prompts(self, tower: Tower, query_dim: int, n_tasks: int) -> nn.Module:
        cfg = self.config
        self.g_at, self.e_at = self.placement(tower)
        return DualPrompts(len(self.g_at), len(self.e_at), cfg.g_length, cfg.e_length, cfg.pool_size, tower.heads,
                           tower.width, query_dim)

    def init_head(self, head: nn.Linear) -> None:
        nn.init.kaiming_uniform_(head.weight, nonlinearity="linear")
        nn.init.constant_(head.bias, 0)

    def start_task(self, task: int) -> None:
        cfg = self.config
        prev, cur = slice((task - 1) * cfg.top_k, task * cfg.top_k), slice(task * cfg.top_k, (task + 1) * cfg.top_k)
        if cfg.shared_prompt_pool and (task + 1) * cfg.top_k <= cfg.pool_size:
            with torch.no_grad():
                self.prompts.prompt[:, :, cur] = self.prompts.prompt[:, :, prev]

    def prompted(self, x: torch.Tensor, query: torch.Tensor, train: bool) -> torch.Tensor:
        cfg, p = self.config, self.prompts
        b = len(x)
        mask = task_mask(self.training_task, cfg.top_k, cfg.pool_size, b, x.device) if train and cfg.prompt_mask else None
        idx, reduce_sim = select_prompts(query, p.prompt_key, cfg.top_k, cfg.batchwise or train, mask)
        e = e_prefixes(p.prompt, idx, cfg.fix_prefix_layout)  # [layers, B, 2, Lp, H, d]
        prefixes: Dict[int, Prefix] = {}
        for n, layer in enumerate(self.g_at):
            g = p.g_prompt[n].flatten(-2)  # [2, Lg, D]
            join_prefix(prefixes, layer, g[0].expand(b, -1, -1), g[1].expand(b, -1, -1))
        for n, layer in enumerate(self.e_at):
            join_prefix(prefixes, layer, e[n, :, 0].flatten(-2), e[n, :, 1].flatten(-2))
        if train:
            self.extra = -cfg.pull * reduce_sim
        return self.tower.encode(x, prefixes=prefixes)

    def prompt_parameters(self) -> List[nn.Parameter]:
        p = self.prompts
        return [p.prompt, p.prompt_key] + ([p.g_prompt] if self.config.train_g_prompt else [])
