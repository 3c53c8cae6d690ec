"""iCaRL as ZSCL's code runs it: herded exemplars used only as distillation images."""

from dataclasses import dataclass
from typing import Any, Dict, List

import torch

from clipbench.streams import LabelledImages

from .base import MethodConfig, WithTeacher, register_method, require_choice
from .icarl import herding
from .toolkit import Cycle, encode_in_batches, snapshot, zscl_distillation

VARIANTS = ("cil", "mtil")
# how many of a task's first training images are candidates for its exemplars (`getNewDataset`)
CANDIDATES = {"cil": 10000, "mtil": 30000}


@dataclass
class ICaRLZSCLConfig(MethodConfig):
    variant: str = "cil"  # cil: cil/continual_clip (the default); mtil: mtil/src/models/icarl.py
    memory_size: int = 5000  # K of DynamicDataset (CIL: 5000; MTIL: --memory_size, default 10000)
    distill_weight: float = 5.0  # weight of each direction (CIL: 5; MTIL: 1 with --image_loss --text_loss)
    temperature: float = 2.0

    def __post_init__(self) -> None:
        super().__post_init__()
        require_choice("icarl_zscl variant", self.variant, VARIANTS)


@register_method
class ICaRLZSCL(WithTeacher):
    """iCaRL as ZSCL's tables run it (Zheng et al., ICCV 2023; Thunderbeee/ZSCL at b96e714):
    cross-entropy on the current experience's data only, and ZSCL's two-way feature distillation
    (`toolkit.zscl_distillation`, T = 2) on herded exemplar images scored against the teacher's
    embeddings of the current experience's class prompts. Exemplars are never trained on with labels.

    Variant `cil` (default; cil/continual_clip/models.py `ClassIncremental.train`, method "iCaRL", and
    cil/continual_clip/dynamic_dataset.py `DynamicDataset`, as cil/configs/class/cifar100_*-iCaRL.yaml
    run it):
    - before training experience t (t = 1, 2, ... counting it), with the model as it is then: every
      stored set is cut to its first K // t exemplars (`reduceExampleSet`), and K - K // t (K when that
      is 0, i.e. at t = 1) of this experience's first 10,000 images are chosen by herding on their
      normalised image features over the whole experience, classes pooled (`constructExampleSet`).
      K = 5,000; the sets together exceed K from t = 3 on (t - 1 sets of K // t, one of K - K // t), as
      in the code;
    - the teacher is the model before this experience ("last-task Model"); each step distils one batch
      of the memory (this experience's exemplars included), taken in stored order, pass after pass
      (`batch(ref_dataset)`), with weight 5 on each direction.

    Variant `mtil` (mtil/src/models/icarl.py `iCaRL` and `finetune`, mtil/src/dynamic_dataset.py): the
    first task trains with cross-entropy alone and keeps its first K images unherded; each later task
    distils on the exemplars of the earlier tasks only, with the zero-shot model as teacher
    (`--ref-model` is never set) and weight 1 per direction (`--image_loss --text_loss`); after it, with
    the trained model, old sets are cut to K // t and K - K // t of its first 30,000 images are herded.
    Set `variant: mtil`, `memory_size: 10000` (the default of `--memory_size`) and `distill_weight: 1`.
    The shipped mtil/scripts/icarl.sh is a 5-iteration debugging command without the loss flags, so the
    command behind the reported MTIL row is not public; the flags assumed are those of lwf.sh.

    Departures: candidates are the experience's first images in the protocol's order (ZSCL: its
    dataset's order); memory batches have the training batch size (CIL: 64, fixed; equal in its configs).
    The other `icarl` is Rebuffi et al.'s recipe: exemplars joined to the training data, old-class
    distillation on the training batch.
    """

    name = "icarl_zscl"
    version = 1
    Config = ICaRLZSCLConfig

    def setup(self, model, streams) -> None:
        self.streams = streams
        self.sets: List[torch.Tensor] = []  # uint8 exemplars per finished (mtil) or started (cil) experience
        self.initial = snapshot(model, self.trainable_parameters(model))

    def _update_memory(self, model, exp: int, device) -> None:
        """Cut the stored sets to K // t and herd K - K // t of experience `exp` (t counts it)."""
        cfg = self.config
        t = len(self.sets) + 1
        self.sets = [images[:cfg.memory_size // t] for images in self.sets]
        m = cfg.memory_size - cfg.memory_size // t or cfg.memory_size
        candidates = self.streams.train[exp].images[:CANDIDATES[cfg.variant]]
        was_training = model.training
        model.eval()
        features = encode_in_batches(model, candidates, device)
        model.train(was_training)
        self.sets.append(candidates[herding(features, m)])

    def before_training_exp(self, strategy, **kwargs):
        super().before_training_exp(strategy, **kwargs)
        model, exp, cfg = strategy.model, strategy.experience.current_experience, self.config
        if cfg.variant == "cil":
            self._update_memory(model, exp, strategy.device)
        else:
            self.teacher = self.initial
            self.teacher_classes = self.teacher_text_features(model, model.prompt_tokens[: model.num_active])
        classes = self.streams.experience_classes[exp]
        self.text = self.teacher_classes[classes[0]:classes[-1] + 1]
        self.memory = (LabelledImages.concat([LabelledImages(s, torch.zeros(len(s), dtype=torch.long)) for s in self.sets]).images
                       if self.sets else None)
        self.batches = Cycle(len(self.memory), strategy.train_mb_size, shuffle=False) if self.sets else None

    def loss(self, strategy):
        if self.memory is None:
            return None
        model, cfg = strategy.model, self.config
        images = self.memory[self.batches.next()].to(strategy.device)
        return zscl_distillation(self.teacher_image_features(model, images), model.encode_images(images), self.text,
                                 model.clip.logit_scale.exp().detach(), cfg.temperature, cfg.distill_weight, cfg.distill_weight)

    def after_training_exp(self, strategy, **kwargs):
        if self.config.variant != "mtil":
            return
        exp = strategy.experience.current_experience
        if exp == 0:  # the first task's set is its first K images, unherded (`update` without `load`)
            self.sets.append(self.streams.train[0].images[:CANDIDATES["mtil"]][:self.config.memory_size])
        else:
            self._update_memory(strategy.model, exp, strategy.device)

    def exemplar_count(self) -> int:
        return sum(len(s) for s in self.sets)

    def state_dict(self) -> Dict[str, Any]:
        return {"sets": self.sets, "initial": self.initial}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.sets, self.initial = list(state["sets"]), state["initial"]
