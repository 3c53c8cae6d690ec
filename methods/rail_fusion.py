"""What RAIL's two forms share: their settings, the fitting loop and the test-time fusion with zero-shot CLIP.

RAIL (Xu et al., NeurIPS 2024, "Advancing Cross-domain Discriminability in Continual Learning of
Vision-Language Models"; linghan1997/Regression-based-Analytic-Incremental-Learning at eaac644) keeps
CLIP frozen and learns a regressor from frozen, L2-normalised image features onto one-hot labels of
every class seen so far (`rail_primal`, `rail_dual`). At test (`primal_RAIL.py` and `dual_RAIL.py`,
their evaluation loops, and `configs/analytic_clip.yaml`):

    p = softmax(100 * f @ T.T)            T: "a photo of a {}." over the union of all domains' class names
    if argmax(p) is a seen class:  s = 0.2 * p + 0.8 * [regressor(f), 0 for the unseen classes]
    else:                          s = p

`fusion_weight` 0.8 is the config's `fusion_weight`; 100 is the code's fixed scale (OpenAI CLIP's
learned logit scale); the template is the one in both scripts' evaluation (an ensemble of two is
commented out there).

In clipbench the union of all domains' class names is the stream's `class_names` (every class of the
protocol, seen or not), and the fused scores are computed once per image over all of them, the seen
test using the top-1 over all of them, as in the code, which has no domain id. The runner then takes
the top-1 within each experience's scored range (`Streams.scored_classes`): over every class for a
protocol scored over the union (X-TAIL), over the classes seen so far in class-incremental rows (so a
test image whose zero-shot top-1 is a later, unseen class keeps plain zero-shot scores, and is scored
among the seen classes by them), and over the task's own classes in task-incremental rows (the task id
restricts the final top-1 only; it never decides whether to fuse). Before any experience is learned
the scores are zero-shot CLIP's with this template (row 0).

The softmax and the fusion run in float64: at scale 100 a float32 softmax underflows to 0 for classes
more than about 1.0 in cosine below the top-1, and a class range holding only such classes would then
be scored by ties.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from clipbench.errors import ClipbenchError

from .base import Method, MethodConfig
from .toolkit import check_template


@dataclass
class RAILConfig(MethodConfig):
    template: str = "a photo of a {c}."  # zero-shot classifier over every class name (both scripts' test loop)
    zeroshot_scale: float = 100.0  # logits = scale * cosine before the softmax (the code's fixed 100)
    fusion_weight: float = 0.8  # weight of the regressor where the zero-shot top-1 is a seen class

    def __post_init__(self) -> None:
        super().__post_init__()
        check_template(self.template)
        if not 0.0 <= self.fusion_weight <= 1.0:
            raise ClipbenchError(f"fusion_weight must be in [0, 1], got {self.fusion_weight}")
        if self.zeroshot_scale <= 0:
            raise ClipbenchError(f"zeroshot_scale must be positive, got {self.zeroshot_scale}")


def fuse(zeroshot_logits: torch.Tensor, regressor_out: Optional[torch.Tensor], weight: float) -> torch.Tensor:
    """RAIL's fused scores [N, C] (float64) from zero-shot logits over all C classes and the regressor's
    outputs [N, S] over the S seen classes (the first S in class order; None before any learning)."""
    probs = F.softmax(zeroshot_logits.double(), dim=1)
    if regressor_out is None or regressor_out.shape[1] == 0:
        return probs
    seen = regressor_out.shape[1]
    padded = F.pad(regressor_out.double(), (0, probs.shape[1] - seen))
    in_seen = (probs.argmax(dim=1) < seen)[:, None]
    return torch.where(in_seen, (1 - weight) * probs + weight * padded, probs)


class RAILBase(Method):
    """RAIL's shared half: no gradient training; each experience is fitted in one pass over its frozen
    image features (`learn`), and the target stream is scored by `fuse` (see the module docstring)."""

    trains = False
    Config = RAILConfig
    kept: ClassVar[Tuple[str, ...]] = ()  # the tensors the regressor keeps between experiences (None before)

    def setup(self, model, streams) -> None:
        self.device = model.prompt_tokens.device
        self.experience_classes = streams.experience_classes
        self.n_seen = 0
        for key in self.kept:
            setattr(self, key, None)

    def fit_experience(self, data, exp, encode) -> None:
        self.n_seen = self.experience_classes[exp][-1] + 1  # the one-hot targets span every class seen so far
        self.learn(encode(data.images).to(self.device), data.labels.to(self.device), self.n_seen)

    def learn(self, features: torch.Tensor, labels: torch.Tensor, n_seen: int) -> None:
        """Update the regressor with one experience's features and labels (global class ids < n_seen)."""
        raise NotImplementedError

    def predict(self, features: torch.Tensor) -> Optional[torch.Tensor]:
        """The regressor's outputs [N, n_seen] for normalised image features, None before any learning."""
        raise NotImplementedError

    def prompt_templates(self, templates: List[str]) -> List[str]:
        return [self.config.template]

    @torch.no_grad()
    def scores(self, image_features: torch.Tensor, class_features: torch.Tensor) -> torch.Tensor:
        logits = self.config.zeroshot_scale * image_features @ class_features.T
        out = self.predict(image_features.to(self.device)) if self.n_seen else None
        return fuse(logits, None if out is None else out.cpu(), self.config.fusion_weight)

    def state_dict(self) -> Dict[str, Any]:
        tensors = {k: getattr(self, k) for k in self.kept}
        return {"n_seen": self.n_seen, **{k: None if v is None else v.cpu() for k, v in tensors.items()}}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.n_seen = state["n_seen"]
        for key in self.kept:
            setattr(self, key, None if state[key] is None else state[key].to(self.device))
