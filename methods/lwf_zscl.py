"""LwF as ZSCL's code runs it: ZSCL's feature distillation on current-task images and prompts."""

from dataclasses import dataclass

import torch

from .base import MethodConfig, WithTeacher, register_method
from .toolkit import Cycle, zscl_distillation


@dataclass
class LwFZSCLConfig(MethodConfig):
    temperature: float = 2.0  # --T 2
    image_weight: float = 1.0  # image-to-text distillation (--image_loss; 5 in ZSCL's CIL code)
    text_weight: float = 1.0  # text-to-image distillation (--text_loss; 5 in ZSCL's CIL code)


@register_method
class LwFZSCL(WithTeacher):
    """LwF as ZSCL's tables run it (Zheng et al., ICCV 2023; Thunderbeee/ZSCL at b96e714):
    mtil/scripts/lwf.sh runs `--method ZSCL --image_loss --text_loss --ref-dataset <current task>
    --ref-model <previous task's checkpoint>` without `--ref-sentences`, so mtil/src/models/finetune.py
    `finetune` distils on the current task's images against the current task's class prompts; the
    class-incremental code (cil/continual_clip/models.py `ClassIncremental.train`, method "lwf") does
    the same with both terms weighted 5.

    Each step draws a separate batch of the current experience's images (ZSCL's reference loader over
    the same dataset: shuffled, a new pass when exhausted, the training batch size). The teacher is the
    model before this experience (ZSCL: `--ref-model` the previous task's checkpoint; the zero-shot
    model for the first task, which is the same thing). With t and s the teacher's and the student's
    normalised image features of that batch and P the teacher's embeddings of the current experience's
    class prompts:

        loss = CE + T^2 CE(softmax(L_t / T), L_s / T) + T^2 CE(softmax(L_t^T / T), L_s^T / T),
        L_t = scale t P^T, L_s = scale s P^T, T = 2   (`toolkit.zscl_distillation`)

    Unlike `lwf` (the founding paper's: KL at T = 1 over the image-to-class logits of every class seen,
    on the training batch itself, weight 0.5), this is feature distillation in both directions on the
    current classes only. Departures: none in the loss; ZSCL's label smoothing 0.2 and cosine schedule
    are training settings.
    """

    name = "lwf_zscl"
    version = 1
    Config = LwFZSCLConfig

    def setup(self, model, streams) -> None:
        self.streams = streams

    def reference_text(self, strategy) -> torch.Tensor:
        """The teacher's text embeddings the images are scored against: the current classes' prompts."""
        classes = self.streams.experience_classes[strategy.experience.current_experience]
        return self.teacher_classes[classes[0]:classes[-1] + 1]

    def before_training_exp(self, strategy, **kwargs):
        super().before_training_exp(strategy, **kwargs)
        self.text = self.reference_text(strategy)
        self.images = strategy.experience.tensors[0]
        self.batches = Cycle(len(self.images), strategy.train_mb_size, shuffle=True)

    def loss(self, strategy):
        model, cfg = strategy.model, self.config
        images = self.images[self.batches.next()].to(strategy.device)
        return zscl_distillation(self.teacher_image_features(model, images), model.encode_images(images), self.text,
                                 model.clip.logit_scale.exp().detach(), cfg.temperature, cfg.image_weight, cfg.text_weight)
