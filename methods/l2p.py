"""L2P on CLIP's image encoder, as C3Box fits it (Wang et al., "Learning to Prompt for Continual Learning", CVPR 2022)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch
from torch import nn

from clipbench.errors import ClipbenchError

from .base import register_method
from .prompting import PromptConfig, PromptMethod, Tower, select_prompts, task_mask


class PromptPool(nn.Module):
    """`backbone/prompt.py::Prompt` with prompt_pool and prompt_key: prompts [pool, length, width] and keys
    [pool, query_dim], both U(-1, 1)."""

    def __init__(self, pool: int, length: int, width: int, query_dim: int):
        super().__init__()
        self.prompt = nn.Parameter(torch.empty(pool, length, width).uniform_(-1, 1))
        self.prompt_key = nn.Parameter(torch.empty(pool, query_dim).uniform_(-1, 1))


@dataclass
class L2PConfig(PromptConfig):
    pool_size: int = 10  # C3Box hard-codes 10 (`l2p_model.py`; the JSON's `size` is ignored)
    length: int = 5  # tokens per prompt (hard-coded 5)
    top_k: int = 5  # prompts per image (hard-coded 5)
    pull: float = 0.1  # pull_constraint_coeff: loss = CE - pull * reduce_sim
    prompt_mask: bool = True  # C3Box forces use_prompt_mask in training (task t: prompts t*top_k...); original: False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pool_size < 1 or self.length < 1 or not 1 <= self.top_k <= self.pool_size:
            raise ClipbenchError(f"l2p needs pool_size >= 1, length >= 1 and 1 <= top_k <= pool_size; got "
                                 f"{self.pool_size}, {self.length}, {self.top_k}")


@register_method
class L2P(PromptMethod):
    """L2P as C3Box fits it to CLIP. Code: LAMDA-CL/C3Box at 1378ab2118f04d4ca0d4782d22bd0098a3eeb666:
    `models/l2p.py::Learner` (`__init__`, `_train`, `_init_prompt`, `_init_train`, `_eval_cnn`),
    `utils/inc_net.py::PromptVitNet`, `backbone/l2p_model.py::VisionTransformer.forward_features/forward_head`,
    `backbone/prompt.py::Prompt.forward`, `models/base.py` (herding exemplars), `exps/l2p.json`.

    The image tower is frozen. A pool of 10 prompts (5 tokens each, U(-1, 1)) with 10 keys (U(-1, 1), of the
    joint-space width); the query is the frozen tower's output. Each image takes its top-5 keys by cosine, and
    the batch takes the 5 ids chosen most often (batchwise); in training, C3Box forces the prompt mask: task 0
    uses prompts 0-4, task 1 prompts 5-9, later tasks the query's choice. The 25 prompt tokens are inserted after
    the class token, after the positional embedding (before ln_pre). A linear head on the projected class token
    gives the logits; loss = CE over every class seen so far - 0.1 * reduce_sim (the summed cosine of the chosen
    keys with the query, / batch). Trained: prompts, keys, head. Exemplars: herding on the frozen tower's output,
    20 per class (memory 2000, fixed), joined to each later task's data (`methods/prompting.py`).

    C3Box's departures from L2P, kept as defaults, each a setting: exemplar replay (`replay`; the original is
    rehearsal-free: `replay: false`); the prompt mask in training (`prompt_mask`; original L2P: false); prompt
    settings hard-coded in the backbone, the JSON's ignored (here `pool_size`, `length`, `top_k`); the frozen
    `original_backbone` query. L2P's C3Box net does not load `./c.pth` (commented out): none is needed here.
    Recipe (`exps/l2p.json`): Adam lr 0.001875, weight decay 0, constant, 10 epochs, batch 16.

    Departures here: the tower is the suite's open_clip model (C3Box: ViT-B-16 laion400m_e32 rebuilt); on a tower
    without blocks (the mini model) the prompts act on the pooled feature (`prompting.pooled_prefix`); C3Box's
    unused `new_positional_embedding` is not built; batchwise selection at test acts within the evaluator's batches
    (C3Box: its test loader's batches of 16), `batchwise: false` makes each image choose alone; the head covers the
    stream's classes (C3Box: `nb_classes`); classes not learned yet score below every learned class; the held-out
    sets see the prompted tower once a task is learned. C3Box's Adam is rebuilt per task (`reinit_optimizer`), as
    clipbench does.
    """

    name = "l2p"
    version = 1
    Config = L2PConfig
    train_defaults = {"optimizer": "adam", "lr": 0.001875, "weight_decay": 0.0, "schedule": "constant",
                      "epochs": 10, "batch_size": 16}

    def build_prompts(self, tower: Tower, query_dim: int, n_tasks: int) -> nn.Module:
        cfg = self.config
        return PromptPool(cfg.pool_size, cfg.length, tower.width, query_dim)

    def prompted(self, x: torch.Tensor, query: torch.Tensor, train: bool) -> torch.Tensor:
        cfg, pool = self.config, self.prompts
        mask = task_mask(self.training_task, cfg.top_k, cfg.pool_size, len(x), x.device) \
            if train and cfg.prompt_mask else None
        idx, reduce_sim = select_prompts(query, pool.prompt_key, cfg.top_k, cfg.batchwise or train, mask)
        chosen = pool.prompt[idx].reshape(len(x), cfg.top_k * cfg.length, -1)
        if train:
            self.extra = -cfg.pull * reduce_sim
        return self.tower.encode(x, insert=chosen)

    def prompt_parameters(self) -> List[nn.Parameter]:
        return [self.prompts.prompt, self.prompts.prompt_key]
