"""SimpleCIL on CLIP (Zhou et al., IJCV 2024): a prototype classifier on the frozen image encoder."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F

from clipbench.errors import ClipbenchError

from .base import Method, MethodConfig, register_method
from .toolkit import raw_image_features


def class_prototypes(features: torch.Tensor, labels: torch.Tensor) -> Dict[int, torch.Tensor]:
    """Per class in `labels`: the mean of its image features as the encoder returns them (not normalised),
    C3Box's `replace_fc` row."""
    return {int(c): features[labels == c].mean(0) for c in labels.unique()}


def cosine_logits(features: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """C3Box's `CosineLinear` without sigma: cos(f, w) for every row w of `weight`."""
    return F.normalize(features, dim=-1) @ F.normalize(weight, dim=-1).T


@dataclass
class SimpleCILConfig(MethodConfig):
    batch_size: int = 128  # images per feature-extraction batch (numbers do not depend on it)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size < 1:
            raise ClipbenchError(f"simplecil batch_size must be >= 1, got {self.batch_size}")


@register_method
class SimpleCIL(Method):
    """SimpleCIL, the CLIP version of C3Box (Zhou et al., "Revisiting Class-Incremental Learning with
    Pre-Trained Models: Generalizability and Adaptivity are All You Need", IJCV 2024).

    Code: LAMDA-CL/C3Box at 1378ab2118f04d4ca0d4782d22bd0098a3eeb666, `models/simplecil.py`
    (`Learner.incremental_train`, `Learner.replace_fc`), `utils/inc_net.py` (`SimpleVitNet`) and
    `backbone/linears.py` (`CosineLinear`: the second definition, the one imported, has no sigma).
    The official repository (zhoudw-zdw/RevisitingCIL at a2e6b71) runs a ViT-B/16-IN21K, not CLIP.

    Nothing trains. For each class of a new experience, its classifier row is the mean of the raw
    (unnormalised) `encode_image` features of its training images, prepared with the evaluation transform;
    logits are cos(f, w) over every class seen so far (`CosineLinear`). No exemplars, no text encoder.
    C3Box's backbone is open_clip ViT-B-16 `laion400m_e32`; here it is whatever model the suite gives.

    Departures:
    - classes not learned yet (scored only in the rows before their experience) keep CLIP's zero-shot
      text embedding as their row, so row 0 is zero-shot CLIP as for every method; C3Box never scores
      a class before it is learned.
    - the held-out zero-shot and retrieval sets see the frozen model (retention 1): SimpleCIL's classifier
      covers only the stream's classes.
    """

    name = "simplecil"
    version = 1
    Config = SimpleCILConfig
    trains = False

    def setup(self, model, streams) -> None:
        self.model = model
        self.prototypes: Dict[int, torch.Tensor] = {}  # class id -> mean raw image feature

    def fit_experience(self, data, exp, encode) -> None:
        device = next(self.model.parameters()).device
        features = raw_image_features(self.model, data.images, device, self.config.batch_size)
        self.prototypes.update(class_prototypes(features, data.labels))

    def scores(self, image_features: torch.Tensor, class_features: torch.Tensor) -> Optional[torch.Tensor]:
        if not self.prototypes:
            return None
        weight = class_features.clone()
        for c, proto in self.prototypes.items():
            weight[c] = proto.to(weight)
        return cosine_logits(image_features, weight)  # unlearned classes: their (normalised) text embedding

    def inference_extras(self) -> str:
        return "one prototype per class" if not self.prototypes else f"{len(self.prototypes)} class prototypes"

    def state_dict(self) -> Dict[str, Any]:
        return {"prototypes": self.prototypes}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.prototypes = dict(state["prototypes"])
