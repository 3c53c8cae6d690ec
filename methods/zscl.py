"""ZSCL: zero-shot continual learning (Zheng et al., ICCV 2023)."""

from dataclasses import dataclass
from typing import Any, Dict

import torch

from .base import Method, MethodConfig, register_method
from .toolkit import (l2_to, load_into, reference_not_declared, require_reference, session_steps, snapshot,
                      with_weights, zscl_distillation)

# ZSCL's MTIL script trains 1000 iterations per task and averages every 100 (mtil/scripts/ZSCL.sh:
# `--iterations 1000 --we --avg_freq 100`): ten snapshots per session.
SNAPSHOTS_PER_SESSION = 10


def ensemble_interval(steps: int, we_every: int) -> int:
    """Steps between weight-ensemble snapshots: `we_every` when set, else max(1, steps // 10), so a
    session of any length gets ZSCL's MTIL count of snapshots (1000 // 100)."""
    return we_every if we_every > 0 else max(1, steps // SNAPSHOTS_PER_SESSION)


@dataclass
class ZSCLConfig(MethodConfig):
    temperature: float = 2.0  # --T 2
    image_weight: float = 1.0  # image-to-reference-text distillation (--image_loss; 5 in the CIL code)
    text_weight: float = 1.0  # reference-text-to-image distillation (--text_loss; 5 in the CIL code)
    l2: float = 1.0  # L2 pull towards the weights at the start of the experience (--l2 1; CIL configs: 0)
    we_every: int = 0  # weight-ensemble snapshot every this many steps; 0: session steps // 10 (see ZSCL)
    reference_batch_size: int = 0  # reference images per step; 0: the training batch size


@register_method
class ZSCL(Method):
    """ZSCL (Zheng et al., ICCV 2023; code: Thunderbeee/ZSCL at b96e714, mtil/scripts/ZSCL.sh and
    mtil/src/models/finetune.py `finetune`; the class-incremental code cil/continual_clip/models.py
    `ClassIncremental.train` with cil/configs/class/*-ZSCL.yaml).

    - Feature-space distillation on a reference set (`toolkit.zscl_distillation`): the initial
      (zero-shot) model embeds the reference sentences; for a batch of reference images, its image
      features and the current model's are scored against them and distilled with T = 2 in both
      directions (image to text, text to image), soft cross-entropy times T^2, each weighted 1
      (`--image_loss --text_loss`; the CIL code weights each by 5).
    - Parameter space: an L2 pull, l2 * sum (theta - theta_start)^2, towards the weights at the start
      of the experience (`--l2 1`, `l2_loss`; the CIL configs set `l2: 0`), and weight ensembling
      (`merge_we`): after the optimizer step of every `interval`-th step (steps 0, interval, ...) the
      running mean theta_we <- (n theta_we + theta) / (n + 1) is updated, n counting the snapshots
      with the start-of-experience weights as the first; the experience ends with theta_we.

    The ensembling interval scales with the session: ZSCL's MTIL runs average every 100 of 1000
    iterations, ten snapshots per task, so with `we_every: 0` the interval is
    max(1, session steps // 10) (`ensemble_interval`). A fixed count of 100 would leave a 64-step
    session with one snapshot, taken after the first step: the experience would end half-way between
    its start and one step of training. ZSCL's class-incremental configs average every 10 steps
    (`avg_freq: 10`), which the `cil_cifar100` suite sets.

    The reference images and sentences are the reference set the protocol declares for it
    (`references.zscl`, else `reference`): as ZSCL ran it, on MTIL ImageNet's train images
    (`--ref-dataset ImageNet`, here a fixed subset) and the Conceptual Captions validation captions
    (`--ref-sentences conceptual_captions`, mtil/scripts/ZSCL.sh), on CIFAR-100 and TinyImageNet the
    Conceptual Captions validation pairs, images and captions (cil/configs/class/*-ZSCL.yaml:
    `ref_dataset`, `ref_sentences: "conceptual_captions"`); the offline suite uses its alignment corpus.
    A protocol that declares no reference images and sentences gives n/a.
    Departures: reference images are drawn uniformly with replacement (ZSCL iterates a shuffled
    loader); label smoothing, the cosine
    schedule and ZSCL's extra final iteration (range(iterations + 1)) are training settings, not
    this method's.
    """

    name = "zscl"
    version = 2
    Config = ZSCLConfig
    uses_reference = True

    @classmethod
    def not_applicable(cls, spec):
        return reference_not_declared(spec, cls.name, ("images", "sentences"))

    def setup(self, model, streams) -> None:
        self.reference = require_reference(streams, self.name)
        if not len(self.reference.images) or not self.reference.captions:
            from clipbench.errors import ClipbenchError

            raise ClipbenchError("zscl needs reference images and sentences; the reference set read for it has "
                                 f"{len(self.reference.images)} image(s) and {len(self.reference.captions)} sentence(s)")
        self.initial = snapshot(model, self.trainable_parameters(model))
        self.reference_tokens = model.tokenizer(list(streams.reference.captions))

    def before_training_exp(self, strategy, **kwargs):
        model = strategy.model
        self.start = snapshot(model, self.trainable_parameters(model))
        self.average, self.count, self.step = {k: v.clone() for k, v in self.start.items()}, 1, 0
        self.interval = ensemble_interval(session_steps(strategy), self.config.we_every)
        self.reference_text = with_weights(model, self.initial,
                                           lambda m: torch.cat([m.encode_tokens(self.reference_tokens[s:s + 256].to(strategy.device))
                                                                for s in range(0, len(self.reference_tokens), 256)]))

    def loss(self, strategy):
        model, cfg = strategy.model, self.config
        size = cfg.reference_batch_size or strategy.train_mb_size
        pick = torch.randint(len(self.reference.images), (min(size, len(self.reference.images)),))
        images = self.reference.images[pick].to(strategy.device)
        teacher = with_weights(model, self.initial, lambda m: m.encode_images(images))
        total = zscl_distillation(teacher, model.encode_images(images), self.reference_text,
                                  model.clip.logit_scale.exp().detach(), cfg.temperature, cfg.image_weight, cfg.text_weight)
        if cfg.l2:
            total = total + cfg.l2 * l2_to(model, self.start)
        return total

    def after_training_iteration(self, strategy, **kwargs):
        if self.step % self.interval == 0:
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
