"""IMM: incremental moment matching (Lee et al., NeurIPS 2017), mean-IMM as the founding paper runs it."""

from dataclasses import dataclass

from .base import MethodConfig, WithTeacher, register_method
from .toolkit import interpolate, load_into, snapshot


@dataclass
class IMMConfig(MethodConfig):
    alpha: float = 0.5  # weight of the newly trained model (the paper's code: --alpha 0.5)


@register_method
class IMM(WithTeacher):
    """Mean-IMM for CLIP (Ding et al., 2022; code: yxding95/CL-CLIP methods/imm.py).

    Train with plain cross-entropy, then replace the trained weights by
    alpha * new + (1 - alpha) * old, where old is the model before this experience (the original
    model in one-session training, the previous session's fused model in multi-session training).
    Only the trained parameters are fused; the others are equal in both models.
    """

    name = "imm"
    version = 1
    Config = IMMConfig

    def after_training_exp(self, strategy, **kwargs):
        model = strategy.model
        new = snapshot(model, self.trainable_parameters(model))
        load_into(model, interpolate(new, self.teacher, self.config.alpha))
        model.invalidate_text_cache()
