"""EWC: elastic weight consolidation (Kirkpatrick et al., PNAS 2017), diagonal Fisher."""

from dataclasses import dataclass
from typing import Any, Dict, List

import torch
import torch.nn.functional as F

from .base import Method, MethodConfig, register_method
from .toolkit import State, snapshot


def ewc_penalty(params: Dict[str, torch.Tensor], anchors: List[State], fishers: List[State]) -> torch.Tensor:
    """sum_k sum_i F_k,i (theta_i - theta*_k,i)^2 over the experiences k seen so far."""
    total = torch.zeros(())
    for anchor, fisher in zip(anchors, fishers):
        for name, value in anchor.items():
            total = total + (fisher[name] * (params[name] - value) ** 2).sum()
    return total


@dataclass
class EWCConfig(MethodConfig):
    ewc_lambda: float = 1000.0  # strength of the penalty
    fisher_batch_size: int = 32


@register_method
class EWC(Method):
    """EWC (Kirkpatrick et al., 2017) with a diagonal empirical Fisher per experience:

        loss = CE + (lambda / 2) * sum_k sum_i F_k,i (theta_i - theta*_k,i)^2

    After experience k, F_k is the mean over its training samples of the squared gradient of the
    cross-entropy (classes active in k), and theta*_k the weights then. One penalty per past
    experience (Avalanche's "separate" mode). Only trained parameters are anchored.
    """

    name = "ewc"
    version = 1
    Config = EWCConfig

    def setup(self, model, streams) -> None:
        self.streams = streams
        self.anchors: List[State] = []
        self.fishers: List[State] = []

    def loss(self, strategy):
        if not self.anchors:
            return None
        params = dict(strategy.model.named_parameters())
        return self.config.ewc_lambda / 2 * ewc_penalty(params, self.anchors, self.fishers).to(strategy.mb_output.device)

    def after_training_exp(self, strategy, **kwargs):
        model = strategy.model
        names = snapshot(model, self.trainable_parameters(model))
        params = dict(model.named_parameters())
        fisher = {n: torch.zeros_like(v) for n, v in names.items()}
        data = self.streams.train[strategy.experience.current_experience]
        bs = self.config.fisher_batch_size
        for s in range(0, len(data), bs):
            x, y = data.images[s:s + bs].to(strategy.device), data.labels[s:s + bs].to(strategy.device)
            model.zero_grad()
            F.cross_entropy(model(x), y).backward()
            for n in fisher:
                if params[n].grad is not None:
                    fisher[n] += params[n].grad.detach() ** 2 * len(y)
        model.zero_grad()
        self.fishers.append({n: f / len(data) for n, f in fisher.items()})
        self.anchors.append(names)

    def state_dict(self) -> Dict[str, Any]:
        return {"anchors": self.anchors, "fishers": self.fishers}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.anchors, self.fishers = state["anchors"], state["fishers"]
