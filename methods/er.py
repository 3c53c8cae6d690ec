"""ER: experience replay with a class-balanced buffer of fixed size."""

from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch

from clipbench.streams import LabelledImages

from .base import Method, MethodConfig, register_method


def balance(buffer: Optional[LabelledImages], new: LabelledImages, size: int) -> LabelledImages:
    """A buffer of at most `size` samples with an equal share per class (the first `size // K` kept
    of each old class, a random `size // K` of each new class; K = classes seen so far)."""
    pool = new if buffer is None else LabelledImages.concat([buffer, new])
    classes = pool.labels.unique().tolist()
    quota = max(1, size // len(classes))
    keep = []
    for c in classes:
        idx = torch.nonzero(pool.labels == c).flatten()
        in_buffer = buffer is not None and c in set(buffer.labels.tolist())
        keep.append(idx[:quota] if in_buffer else idx[torch.randperm(len(idx))[:quota]])
    return pool.subset(torch.cat(keep))


@dataclass
class ERConfig(MethodConfig):
    buffer_size: int = 200  # images kept in total, shared equally by the classes seen so far


@register_method
class ER(Method):
    """Experience replay (Chaudhry et al., 2019, "On Tiny Episodic Memories"): each experience
    trains on its own data joined with a class-balanced buffer of past samples, updated after
    each experience so that every class seen keeps `buffer_size // K` samples.

    Departure: the buffer is joined to the experience's dataset (so replayed samples are drawn at
    their share of the union) rather than sampled as a separate half of every mini-batch.
    """

    name = "er"
    version = 1
    Config = ERConfig

    def setup(self, model, streams) -> None:
        self.streams = streams
        self.buffer: Optional[LabelledImages] = None

    def training_data(self, streams, exp):
        return streams.train[exp] if self.buffer is None else LabelledImages.concat([streams.train[exp], self.buffer])

    def after_training_exp(self, strategy, **kwargs):
        own = self.streams.train[strategy.experience.current_experience]
        self.buffer = balance(self.buffer, own, self.config.buffer_size)

    def exemplar_count(self) -> int:
        return 0 if self.buffer is None else len(self.buffer)

    def state_dict(self) -> Dict[str, Any]:
        return {"buffer": None if self.buffer is None else (self.buffer.images, self.buffer.labels)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.buffer = None if state["buffer"] is None else LabelledImages(*state["buffer"])
