"""iCaRL (Rebuffi et al., CVPR 2017): herding exemplars joined to the training data, plus distillation."""

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F

from clipbench.streams import LabelledImages

from .base import MethodConfig, WithTeacher, register_method
from .toolkit import encode_in_batches, soft_cross_entropy


def herding(features: torch.Tensor, m: int) -> torch.Tensor:
    """Indices of `m` samples chosen greedily so that the running mean of the chosen (normalised)
    features stays closest to the class mean (Welling, 2009; iCaRL Alg. 4)."""
    feats = F.normalize(features, dim=-1)
    mu = feats.mean(0)
    chosen: List[int] = []
    total = torch.zeros_like(mu)
    for k in range(1, min(m, len(feats)) + 1):
        dist = ((mu[None] - (total[None] + feats) / k) ** 2).sum(-1)
        if chosen:
            dist[chosen] = float("inf")
        i = int(dist.argmin())
        chosen.append(i)
        total += feats[i]
    return torch.tensor(chosen, dtype=torch.long)


@dataclass
class ICaRLConfig(MethodConfig):
    memory_size: int = 200  # exemplars in total, shared equally by the classes seen so far
    distill_weight: float = 1.0
    temperature: float = 2.0
    nme: bool = False  # classify the target stream by nearest mean of exemplars instead of text prompts


@register_method
class ICaRL(WithTeacher):
    """iCaRL for CLIP, after Rebuffi et al. (CVPR 2017):

    - each experience trains on its data joined with the exemplar memory;
    - loss = CE + distill_weight * KD(teacher, student) over the classes learned before this
      experience, on the training batch, KD the soft cross-entropy with T = 2 (ZSCL's
      `distillation` form), teacher the model before this experience;
    - after each experience, exemplars of the new classes are chosen by herding on the image
      features, and every class keeps memory_size // K of them (its herding order kept);
    - with `nme`, the target stream is classified by the nearest mean of each class's exemplar
      features (iCaRL's classifier) instead of the class prompts.

    Departures: iCaRL's sigmoid/binary cross-entropy losses are replaced by the CLIP classifier's
    softmax cross-entropy and a softmax distillation, as CLIP adaptations of iCaRL do. This is not how ZSCL's tables run iCaRL (there
    the exemplars are distillation images only, never trained on with labels): that is `icarl_zscl`.
    """

    name = "icarl"
    version = 1
    Config = ICaRLConfig

    def setup(self, model, streams) -> None:
        self.streams, self.model = streams, model
        self.exemplars: Dict[int, torch.Tensor] = {}  # class id -> uint8 images in herding order

    def memory(self) -> Optional[LabelledImages]:
        if not self.exemplars:
            return None
        parts = [LabelledImages(imgs, torch.full((len(imgs),), c, dtype=torch.long)) for c, imgs in sorted(self.exemplars.items())]
        return LabelledImages.concat(parts)

    def training_data(self, streams, exp):
        memory = self.memory()
        return streams.train[exp] if memory is None else LabelledImages.concat([streams.train[exp], memory])

    def before_training_exp(self, strategy, **kwargs):
        super().before_training_exp(strategy, **kwargs)
        self.n_old = self.streams.experience_classes[strategy.experience.current_experience][0]  # classes learned before

    def loss(self, strategy):
        if not self.n_old:
            return None
        model = strategy.model
        teacher = model.logits(self.teacher_image_features(model, strategy.mb_x), self.teacher_classes)
        n = self.n_old
        return self.config.distill_weight * soft_cross_entropy(teacher[:, :n], strategy.mb_output[:, :n], self.config.temperature)

    def after_training_exp(self, strategy, **kwargs):
        model = strategy.model
        exp = strategy.experience.current_experience
        data = self.streams.train[exp]
        seen = self.streams.experience_classes[exp][-1] + 1
        per_class = max(1, self.config.memory_size // seen)
        was_training = model.training
        model.eval()
        for c in self.streams.experience_classes[exp]:
            images = data.images[data.labels == c]
            if not len(images):  # a class of the experience without training images keeps no exemplars
                continue
            self.exemplars[c] = images[herding(encode_in_batches(model, images, strategy.device), per_class)]
        model.train(was_training)
        self.exemplars = {c: imgs[:per_class] for c, imgs in self.exemplars.items()}

    def class_features(self, loaded, class_features: torch.Tensor) -> torch.Tensor:
        if not self.config.nme or not self.exemplars:
            return class_features
        out = class_features.clone()
        model = self.model
        device = next(model.parameters()).device
        for c, imgs in self.exemplars.items():
            out[c] = F.normalize(encode_in_batches(model, imgs, device).mean(0), dim=-1)
        return out

    def exemplar_count(self) -> int:
        return sum(len(imgs) for imgs in self.exemplars.values())

    def state_dict(self) -> Dict[str, Any]:
        return {"exemplars": self.exemplars}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.exemplars = dict(state["exemplars"])
