"""Learning-rate schedules: the learning rate of every optimizer step of one experience.

Each experience starts from `train.lr` with a fresh optimizer, so a schedule restarts with it (as
the references restart theirs per session or task). Steps count from 0 within the experience.

- `constant`: `lr` throughout.
- `step`: torch's StepLR as the founding paper's code drives it (yxding95/CL-CLIP at 877a69f,
  `methods/ft.py` and every method file: `StepLR(optimizer, step_size=10 * steps_per_epoch,
  gamma=0.1)` stepped after every iteration): lr x gamma ** (step // (step_size x steps_per_epoch)).
  CL-CLIP steps it only in one-session (OST) training: in multi-session training the call sits in
  the OST branch, so the rate stays constant (the `paper` protocols set this per protocol).
- `cosine`: ZSCL's `cosine_lr` (Thunderbeee/ZSCL at b96e714, `mtil/src/utils.py`, the same in
  `cil/continual_clip/utils.py`): lr x 0.5 x (1 + cos(pi x (step - W) / (S - W))) after W warm-up
  steps, S the experience's steps.

`warmup_steps` W > 0 puts ZSCL's linear warm-up (`_warmup_lr`: lr x (step + 1) / W) before any of
them. Departure from ZSCL: its loop runs S + 1 iterations (`range(total_iterations + 1)`), the last at
learning rate 0; clipbench runs S steps, which leaves the same weights (an update at rate 0 is none).
"""

from __future__ import annotations

import math
from typing import Any, Dict

SCHEDULES = ("constant", "step", "cosine")


def learning_rate(step: int, total_steps: int, steps_per_epoch: int, train: Dict[str, Any]) -> float:
    """The learning rate of optimizer step `step` (0-based) of an experience of `total_steps` steps."""
    base, warmup = train["lr"], train["warmup_steps"]
    if step < warmup:
        return base * (step + 1) / warmup
    schedule = train["schedule"]
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total_steps - warmup))) * base
    if schedule == "step":
        return base * train["step_gamma"] ** (step // (train["step_size"] * steps_per_epoch))
    if schedule == "constant":
        return base
    raise ValueError(f"unknown schedule {schedule!r}")


def is_constant(train: Dict[str, Any]) -> bool:
    """True when every step trains at `lr` (the engine then never touches the optimizer's rate)."""
    return train["schedule"] == "constant" and train["warmup_steps"] == 0
