"""ZSCL: zero-shot continual learning (Zheng et al., ICCV 2023)."""

from dataclasses import dataclass
from typing import Any, Dict

import torch

from .base import Method, MethodConfig, register_method
from .toolkit import load_into, require_reference, snapshot, soft_cross_entropy, with_weights


@dataclass
class ZSCLConfig(MethodConfig):
    temperature: float = 2.0
    image_weight: float = 1.0  # image-to-reference-text distillation (--image_loss)
    text_weight: float = 1.0  # reference-text-to-image distillation (--text_loss)
    l2: float = 1.0  # L2 pull towards the weights at the start of the experience (--l2 1)
    we_every: int = 100  # weight-ensemble snapshot every this many steps (--we --avg_freq 100)
    reference_batch_size: int = 0  # reference images per step; 0: the training batch size


@register_method
class ZSCL(Method):
    """ZSCL (Zheng et al., ICCV 2023; code: Thunderbeee/ZSCL mtil/scripts/ZSCL.sh and
    src/models/finetune.py).

    - Feature-space distillation on a reference set: the initial (zero-shot) model embeds the
      reference sentences once; for a batch of reference images, initial-model and current-model
      image features are scored against them and distilled with T = 2 both ways (image to text and
      text to image), soft cross-entropy times T^2.
    - Parameter space: an L2 pull towards the weights at the start of the experience, and weight
      ensembling: every `we_every` steps the running average theta_we <- (n theta_we + theta)/(n+1)
      is updated (n counts snapshots, the start-of-experience weights being the first), and the
      experience ends with the averaged weights.

    The reference images and sentences are the suite's declared reference set (ZSCL uses ImageNet
    images and Conceptual Captions sentences; the offline suite uses its alignment corpus).
    Departures: the engine's cross-entropy has no label smoothing (ZSCL uses 0.2); image and
    sentence both come from the same reference pairs.
    """

    name = "zscl"
    version = 1
    Config = ZSCLConfig

    def setup(self, model, streams) -> None:
        self.reference = require_reference(streams, self.name)
        self.initial = snapshot(model, self.trainable_parameters(model))
        self.reference_tokens = model.tokenizer(list(streams.reference.captions))

    def before_training_exp(self, strategy, **kwargs):
        model = strategy.model
        self.start = snapshot(model, self.trainable_parameters(model))
        self.average, self.count, self.step = {k: v.clone() for k, v in self.start.items()}, 1, 0
        self.reference_text = with_weights(model, self.initial,
                                           lambda m: torch.cat([m.encode_tokens(self.reference_tokens[s:s + 256].to(strategy.device))
                                                                for s in range(0, len(self.reference_tokens), 256)]))

    def loss(self, strategy):
        model, cfg = strategy.model, self.config
        size = cfg.reference_batch_size or strategy.train_mb_size
        pick = torch.randint(len(self.reference.images), (min(size, len(self.reference.images)),))
        images = self.reference.images[pick].to(strategy.device)
        text = self.reference_text
        teacher = model.logits(with_weights(model, self.initial, lambda m: m.encode_images(images)), text)
        student = model.logits(model.encode_images(images), text)
        total = (cfg.image_weight * soft_cross_entropy(teacher, student, cfg.temperature)
                 + cfg.text_weight * soft_cross_entropy(teacher.T, student.T, cfg.temperature))
        if cfg.l2:
            params = dict(model.named_parameters())
            total = total + cfg.l2 * sum(((params[n] - v) ** 2).sum() for n, v in self.start.items())
        return total

    def after_training_iteration(self, strategy, **kwargs):
        if self.step % self.config.we_every == 0:
            current = snapshot(strategy.model, self.trainable_parameters(strategy.model))
            self.average = {k: (v * self.count + current[k]) / (self.count + 1) for k, v in self.average.items()}
            self.count += 1
        self.step += 1

    def after_training_exp(self, strategy, **kwargs):
        load_into(strategy.model, self.average)
        strategy.model.invalidate_text_cache()

    def state_dict(self) -> Dict[str, Any]:
        return {"initial": self.initial}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.initial = state["initial"]
