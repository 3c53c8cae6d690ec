"""CODA-Prompt on CLIP's image encoder, as C3Box fits it (Smith et al., "CODA-Prompt: COntinual Decomposed
Attention-based Prompting for Rehearsal-Free Continual Learning", CVPR 2023)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from clipbench.errors import ClipbenchError

from .base import register_method
from .prompting import Prefix, PromptConfig, PromptMethod, Tower

LAYERS = 5  # `CodaPrompt._init_smart`: e_layers = [0, 1, 2, 3, 4]


def gram_schmidt(vv: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """`CodaPrompt.gram_schmidt`: rows [0, start) of `vv` [pool, ...] kept, rows [start, stop) replaced by fresh
    N(0, 1) vectors orthogonalised (classical Gram-Schmidt against every earlier row) and normalised, rows from
    `stop` on set to 0 (the code builds a zero matrix and fills only those)."""
    shape = vv.shape
    v = vv.reshape(shape[0], -1).T  # [M, pool]
    u = torch.zeros_like(v)
    if start > 0:
        u[:, :start] = v[:, :start]
    for k in range(start, stop):
        while True:
            vk = torch.randn_like(v[:, k])
            uk = torch.zeros_like(vk)
            redo = False
            for j in range(k):
                uj = u[:, j]
                denominator = (uj * uj).sum()
                if denominator < 1e-8:
                    redo = True
                    break
                uk = uk + (vk * uj).sum() / denominator * uj
            if not redo:
                u[:, k] = vk - uk
                break
    for k in range(start, stop):
        u[:, k] = u[:, k] / u[:, k].norm()
    return u.T.reshape(shape)


def coda_prefix(query: torch.Tensor, keys: torch.Tensor, attention: torch.Tensor,
                prompts: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """`CodaPrompt.forward` for one layer: alpha_bk = cos(q_b * A_k, K_k); P_b = sum_k alpha_bk P_k [length, D];
    the first length // 2 rows are the key prefix, the rest the value prefix."""
    a_query = torch.einsum("bd,kd->bkd", query, attention)
    alpha = torch.einsum("bkd,kd->bk", F.normalize(a_query, dim=2), F.normalize(keys, dim=1))
    p = torch.einsum("bk,kld->bld", alpha, prompts)
    half = prompts.shape[1] // 2
    return p[:, :half], p[:, half:]


def ortho_penalty(t: torch.Tensor) -> torch.Tensor:
    """`CodaPrompt.ortho_penalty`: mean((t t^T - I)^2)."""
    return ((t @ t.T - torch.eye(t.shape[0], device=t.device, dtype=t.dtype)) ** 2).mean()


class CodaComponents(nn.Module):
    """Per prompted layer l: components `p_l` [pool, length, width], keys `k_l` and attention vectors `a_l`
    [pool, query_dim]; U(0, 1), then the first task's rows Gram-Schmidt'ed (the code's `__init__`)."""

    def __init__(self, layers: List[int], pool: int, length: int, width: int, query_dim: int, per_task: int):
        super().__init__()
        self.layers = layers
        for layer in layers:
            for name, shape in (("p", (pool, length, width)), ("k", (pool, query_dim)), ("a", (pool, query_dim))):
                value = gram_schmidt(torch.empty(shape).uniform_(), 0, per_task)
                self.register_parameter(f"{name}_{layer}", nn.Parameter(value))

    def get(self, name: str, layer: int) -> nn.Parameter:
        return getattr(self, f"{name}_{layer}")


@dataclass
class CodaPromptConfig(PromptConfig):
    pool_size: int = 100  # prompt_param[0]
    length: int = 8  # prompt_param[1]
    ortho_mu: float = 0.0  # prompt_param[2]
    n_tasks: int = 10  # exps/coda.json nb_tasks (not derived from the protocol); 0: the protocol's experiences
    fixed_memory: bool = False  # exps/coda.json: memory_size // classes seen per class

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pool_size < 1 or self.length < 2 or self.ortho_mu < 0 or self.n_tasks < 0:
            raise ClipbenchError(f"coda_prompt needs pool_size >= 1, length >= 2, ortho_mu >= 0, n_tasks >= 0; got "
                                 f"{self.pool_size}, {self.length}, {self.ortho_mu}, {self.n_tasks}")


@register_method
class CodaPrompt(PromptMethod):
    """CODA-Prompt as C3Box fits it to CLIP. Code: LAMDA-CL/C3Box at 1378ab2118f04d4ca0d4782d22bd0098a3eeb666:
    `models/coda_prompt.py::Learner` (`incremental_train`, `get_optimizer`, `_init_train`, `_eval_cnn`),
    `utils/inc_net.py::CodaPromptVitNet.forward`, `backbone/prompt.py::CodaPrompt` (`__init__`,
    `process_task_count`, `gram_schmidt`, `forward`, `ortho_penalty`), `backbone/codaprompt_model.py`
    (`Attention.forward`, `VisionTransformer.forward`), `exps/coda.json`.

    The image tower is frozen. In each of blocks 0-4, 100 prompt components (length 8, the tower's width) with
    keys and attention vectors of the joint-space width; each task owns pool // n_tasks of them, Gram-Schmidt
    initialised (fresh N(0, 1) rows orthogonalised against the earlier ones) when the task starts. The query q
    is the frozen tower's output (the code's first, prompt-free pass); per layer alpha_k = cos(q * A_k, K_k) and
    P = sum_k alpha_k P_k; the first 4 rows are prefix keys, the last 4 prefix values (`coda_prefix`). In
    training the components of earlier tasks are detached and later ones unused; at test every learned task's
    are used. A linear head on the projected class token; loss = CE over the classes seen so far (+ ortho_mu *
    orthogonality penalties, 0 in the recipe). Trained: components, keys, attention vectors, head.

    C3Box's departures, kept as defaults, each a setting: exemplar replay, memory_size // classes seen per class
    (`replay`, `fixed_memory`; the original is rehearsal-free); `n_tasks` 10 from the JSON, not from the
    protocol (`n_tasks: 0` takes the protocol's; a protocol with more experiences than `n_tasks` uses its own
    count, else the pool would run out); C3Box loads `./c.pth` (unshipped; presumably laion400m_e32) into its
    rebuilt ViT-B-16: here the suite's model. Recipe (`exps/coda.json`): Adam lr 1e-3, weight decay 0, cosine
    (`CosineSchedule`, per epoch), 10 epochs, batch 48.

    Departures here: new components are written into the existing parameters (the code makes new Parameter
    objects before building its optimizer: the same values); the Gram-Schmidt restart on a degenerate row is
    kept but never hit in practice; a tower shallower than 5 blocks is prompted in all its blocks; a tower without
    blocks (the mini model) gets one layer of components on its pooled feature (`prompting.pooled_prefix`); the
    cosine schedule is clipbench's (per step); classes not learned yet score below every learned class.
    """

    name = "coda_prompt"
    version = 1
    Config = CodaPromptConfig
    train_defaults = {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "schedule": "cosine",
                      "epochs": 10, "batch_size": 48}

    def build_prompts(self, tower: Tower, query_dim: int, n_tasks: int) -> nn.Module:
        cfg = self.config
        tasks = max(cfg.n_tasks, n_tasks) if cfg.n_tasks else n_tasks
        self.per_task = cfg.pool_size // tasks
        if self.per_task < 1:
            raise ClipbenchError(f"coda_prompt: pool_size {cfg.pool_size} gives no component per task for {tasks} "
                                 "tasks; raise methods.coda_prompt.pool_size")
        layers = list(range(min(LAYERS, tower.layers)))
        return CodaComponents(layers, cfg.pool_size, cfg.length, tower.width, query_dim, self.per_task)

    def start_task(self, task: int) -> None:  # `process_task_count`
        start, stop = task * self.per_task, (task + 1) * self.per_task
        with torch.no_grad():
            for layer in self.prompts.layers:
                for name in ("k", "a", "p"):
                    param = self.prompts.get(name, layer)
                    param.copy_(gram_schmidt(param.detach(), start, stop))

    def prompted(self, x: torch.Tensor, query: torch.Tensor, train: bool) -> torch.Tensor:
        task = self.training_task if train else self.learned - 1
        start, stop = task * self.per_task, (task + 1) * self.per_task
        prefixes: Dict[int, Prefix] = {}
        penalty: Optional[torch.Tensor] = None
        for layer in self.prompts.layers:
            k, a, p = (self.prompts.get(n, layer) for n in ("k", "a", "p"))
            if train:
                k, a, p = (torch.cat([t[:start].detach(), t[start:stop]]) for t in (k, a, p))
            else:
                k, a, p = k[:stop], a[:stop], p[:stop]
            prefixes[layer] = coda_prefix(query.to(k.dtype), k, a, p)
            if train and self.config.ortho_mu > 0:
                term = (ortho_penalty(k) + ortho_penalty(a) + ortho_penalty(p.reshape(len(p), -1))) * self.config.ortho_mu
                penalty = term if penalty is None else penalty + term
        if train:
            self.extra = penalty
        return self.tower.encode(x, prefixes=prefixes)
