"""RKR: Rectification-based Knowledge Retention (Singh et al., CVPR 2021), the adapter-style row."""

from dataclasses import dataclass
from typing import List

import torch
from torch import nn

from clipbench.errors import ClipbenchError

from .base import MethodConfig, Method, register_method


class RectifiedLinear(nn.Module):
    """y = (W x + B A x) * s: a frozen linear layer, a rank-r rectification B A and a per-output scale s.

    A starts at zero and s at one, so the wrapped layer starts as the original.
    """

    def __init__(self, base: nn.Linear, rank: int, dropout: float):
        super().__init__()
        self.base = base
        self.down = nn.Linear(base.in_features, rank, bias=False, device=base.weight.device, dtype=base.weight.dtype)
        self.up = nn.Linear(rank, base.out_features, bias=False, device=base.weight.device, dtype=base.weight.dtype)
        self.dropout = nn.Dropout(dropout)
        self.scale = nn.Parameter(torch.ones(base.out_features, device=base.weight.device, dtype=base.weight.dtype))
        nn.init.zeros_(self.down.weight)

    @property
    def weight(self) -> torch.Tensor:  # code that inspects the layer (dtype, device) sees the original
        return self.base.weight

    @property
    def bias(self):
        return self.base.bias

    def own_parameters(self) -> List[nn.Parameter]:
        return [self.down.weight, self.up.weight, self.scale]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.base(x) + self.dropout(self.up(self.down(x)))) * self.scale


@dataclass
class RKRConfig(MethodConfig):
    rank: int = 4  # rank of each rectification (the paper's code: r = 4)
    dropout: float = 0.0  # on the rectification's output (inject_trainable_rkr: dropout_p=0.0)


@register_method
class RKR(Method):
    """RKR for CLIP (Ding et al., 2022; code: yxding95/CL-CLIP at 877a69f, models/clip_rkr.py
    `CLIP_RKR.inject_trainable_rkr` and `LoraInjectedLinear`).

    Every linear layer of the encoders named by `part` is wrapped with a rank-r weight
    rectification and a per-output scaling factor, y = (W x + b + U D x) * s, with D zero-initialised,
    U as nn.Linear initialises it, s = 1, r = 4 and dropout 0 on U D x (the injection's defaults:
    `r=4`, `dropout_p=0.0`; `LoraInjectedLinear`'s own default of 0.1 is overridden there); only these
    added parameters train, so the pretrained weights never change.

    Departures: RKR proper keeps a rectification and scaling set per task and picks it by task
    identity; like the paper's CLIP adaptation, one set is shared across experiences. Linear layers
    inside `nn.MultiheadAttention` are left alone (it reads their weights directly), and the
    model's frozen parts (e.g. the mini model's towers) are never wrapped: there only the
    projection layers are rectified.
    """

    name = "rkr"
    version = 1  # dropout 0.1 -> 0.0 left the numbers unchanged: the engine keeps parameterless modules in eval mode
    Config = RKRConfig

    def setup(self, model, streams) -> None:
        allowed = {id(p) for p in super().trainable_parameters(model)}
        targets = []
        for parent in model.modules():
            if isinstance(parent, (nn.MultiheadAttention, RectifiedLinear)):
                continue
            for name, child in parent.named_children():
                if type(child) is nn.Linear and id(child.weight) in allowed:
                    targets.append((parent, name, child))
        if not targets:
            raise ClipbenchError(f"rkr found no trainable linear layer in part '{self.config.part}' of this model")
        for parent, name, child in targets:
            setattr(parent, name, RectifiedLinear(child, self.config.rank, self.config.dropout))

    def trainable_parameters(self, model):
        return [p for m in model.modules() if isinstance(m, RectifiedLinear) for p in m.own_parameters()]
