"""VR-LwF: Learning without Forgetting via Replayed Vocabulary, the founding paper's method."""

from dataclasses import dataclass

import torch

from .base import MethodConfig, WithTeacher, register_method
from .toolkit import lwf_kl, pseudo_sentences


@dataclass
class VRLwFConfig(MethodConfig):
    alpha: float = 0.5  # weight of the replayed-vocabulary (and old-class LwF) terms; paper's code: 0.5
    n_pseudo: int = 100  # pseudo-classes drawn at every step
    pseudo_length: int = 8  # random token ids between the start and end tokens
    temperature: float = 1.0


@register_method
class VRLwF(WithTeacher):
    """VR-LwF (Ding et al., 2022, "Don't Stop Learning", Sec. 4.2; code: yxding95/CL-CLIP methods/vrd.py).

    At every training step, draw `n_pseudo` pseudo-classes, each `pseudo_length` token ids drawn
    uniformly from the tokenizer's ordinary vocabulary between a start and an end token. The
    teacher's distribution of each image over these pseudo-texts (its image and text encoders) is
    distilled into the student's (its image and text encoders, so both receive the signal):

        loss = CE + alpha * (KL_pseudo + KL_old)

    KL as in LwF (T = 1, batch mean). KL_old is the LwF term over the classes seen so far and is
    added from the second experience on (multi-session training), as in the paper's code. The
    teacher is the model before this experience: the original model in one-session training, the
    previous session's in multi-session training.

    Departures: the tokenizer is the model's (for the offline mini model, MiniLM's WordPiece
    vocabulary without its special tokens, instead of CLIP's BPE); no gradient clipping.
    """

    name = "vr_lwf"
    version = 1
    Config = VRLwFConfig

    def before_training_exp(self, strategy, **kwargs):
        super().before_training_exp(strategy, **kwargs)
        self.first_experience = strategy.experience.current_experience == 0

    def loss(self, strategy):
        model, cfg = strategy.model, self.config
        pseudo = pseudo_sentences(model.tokenizer, cfg.n_pseudo, cfg.pseudo_length).to(strategy.mb_x.device)
        teacher_images = self.teacher_image_features(model, strategy.mb_x)
        teacher_pseudo = self.teacher_text_features(model, pseudo)
        student_pseudo = model.encode_tokens(pseudo)
        replayed = lwf_kl(model.logits(model.last_image_features, student_pseudo),
                          model.logits(teacher_images, teacher_pseudo), cfg.temperature)
        old = torch.zeros((), device=replayed.device)
        if not self.first_experience:
            old = lwf_kl(strategy.mb_output, model.logits(teacher_images, self.teacher_classes), cfg.temperature)
        return cfg.alpha * (replayed + old)
