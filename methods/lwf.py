"""Learning without Forgetting (Li & Hoiem, 2016), adapted to CLIP as the founding paper does."""

from dataclasses import dataclass

from .base import MethodConfig, WithTeacher, register_method
from .toolkit import lwf_kl


@dataclass
class LwFConfig(MethodConfig):
    alpha: float = 0.5  # weight of the distillation term (the paper's code: --alpha 0.5)
    temperature: float = 1.0


@register_method
class LwF(WithTeacher):
    """LwF for CLIP (Ding et al., 2022, Sec. 4; code: yxding95/CL-CLIP methods/lwf.py).

    loss = CE + alpha * KL(softmax(teacher logits / T) || softmax(student logits / T)), T = 1,
    where logits are scaled cosine similarities of the image to the class prompts of every class
    seen so far (the current session's included), the teacher's with its own text embeddings.
    Teacher: the model before this experience.

    Departure: the KL is averaged over the batch without the T^2 factor, exactly as the paper's
    code does; the paper's code also clips gradients at norm 1, which the engine does not.
    """

    name = "lwf"
    version = 1
    Config = LwFConfig

    def loss(self, strategy):
        model = strategy.model
        teacher_logits = model.logits(self.teacher_image_features(model, strategy.mb_x), self.teacher_classes)
        return self.config.alpha * lwf_kl(strategy.mb_output, teacher_logits, self.config.temperature)
