"""LwF-VR as ZSCL's code runs it: the reimplementation behind every later "LwF-VR" number."""

from dataclasses import dataclass
from typing import Any, Dict

from .base import MethodConfig, WithTeacher, register_method
from .toolkit import pseudo_sentences, soft_cross_entropy


@dataclass
class LwFVRConfig(MethodConfig):
    n_pseudo: int = 1000  # pseudo-sentences, drawn once per run
    pseudo_length: int = 10  # random tokens between start and end
    temperature: float = 2.0
    image_weight: float = 1.0  # image-to-text distillation (ZSCL's --image_loss)
    text_weight: float = 1.0  # text-to-image distillation (ZSCL's --text_loss)


@register_method
class LwFVR(WithTeacher):
    """LwF-VR as implemented in ZSCL's code (Zheng et al., ICCV 2023; Thunderbeee/ZSCL,
    mtil/scripts/lwf_vr.sh: `--method ZSCL --ref-sentences random --ref-dataset <current>`).

    1,000 pseudo-sentences (10 random tokens between start and end) are drawn once per run and
    embedded by the teacher (the model before this experience). For the current images, teacher
    and student image features are scored against those teacher text embeddings, and the student
    is distilled with T = 2 in both directions:

        loss = CE + T^2 CE(softmax(L_t / T), L_s / T) + T^2 CE(softmax(L_t^T / T), L_s^T / T)

    How it differs from `vr_lwf` (the founding paper's method): pseudo-texts drawn once per run,
    not at every step; 1,000 of length 10, not 100 of length 8; T = 2 with soft cross-entropy, not
    KL with T = 1; distillation in both directions; text embeddings from the teacher, so only the
    image encoder receives the signal; no separate old-class LwF term.

    Departures: the reference images are the current mini-batch (ZSCL draws a separate batch of
    the same dataset); ZSCL's cross-entropy uses label smoothing 0.2, the engine's has none; token
    ids are drawn from the ordinary vocabulary (ZSCL's may hit special tokens).
    """

    name = "lwf_vr"
    version = 1
    Config = LwFVRConfig

    def setup(self, model, streams) -> None:
        self.pseudo = pseudo_sentences(model.tokenizer, self.config.n_pseudo, self.config.pseudo_length)

    def before_training_exp(self, strategy, **kwargs):
        super().before_training_exp(strategy, **kwargs)
        self.reference_text = self.teacher_text_features(strategy.model, self.pseudo.to(strategy.device))

    def loss(self, strategy):
        model, cfg = strategy.model, self.config
        text = self.reference_text
        teacher = model.logits(self.teacher_image_features(model, strategy.mb_x), text)
        student = model.logits(model.last_image_features, text)
        return (cfg.image_weight * soft_cross_entropy(teacher, student, cfg.temperature)
                + cfg.text_weight * soft_cross_entropy(teacher.T, student.T, cfg.temperature))

    def state_dict(self) -> Dict[str, Any]:
        return {"pseudo": self.pseudo}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.pseudo = state["pseudo"]
