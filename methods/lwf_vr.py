"""LwF-VR as ZSCL's code runs it: the reimplementation behind every later "LwF-VR" number."""

from dataclasses import dataclass

import torch

from .base import register_method
from .lwf_zscl import LwFZSCL, LwFZSCLConfig
from .toolkit import pseudo_sentences


@dataclass
class LwFVRConfig(LwFZSCLConfig):
    n_pseudo: int = 1000  # pseudo-sentences, drawn afresh for every experience (virtual_vocab: n_class=1000)
    pseudo_length: int = 10  # random tokens between start and end (virtual_vocab: length=10)


@register_method
class LwFVR(LwFZSCL):
    """LwF-VR as implemented in ZSCL's code (Zheng et al., ICCV 2023; Thunderbeee/ZSCL at b96e714,
    mtil/scripts/lwf_vr.sh: `--method ZSCL --image_loss --text_loss --ref-dataset <current>
    --ref-sentences random`; mtil/src/models/finetune.py `finetune` with helpers.py `virtual_vocab`;
    class-incremental: cil/continual_clip/models.py `ClassIncremental.train`, method "lwfvr", as
    cil/configs/class/cifar100_10-10-LwF.yaml runs it).

    ZSCL's LwF (`lwf_zscl`) with random sentences in place of the class prompts: at the start of every
    experience (ZSCL calls `virtual_vocab()` once per task), 1,000 pseudo-sentences of 10 random tokens
    between start and end are drawn and embedded by the teacher (the model before this experience).
    A separate batch of the current experience's images is scored against them by teacher and student
    and distilled with T = 2 in both directions:

        loss = CE + w_i T^2 CE(softmax(L_t / T), L_s / T) + w_t T^2 CE(softmax(L_t^T / T), L_s^T / T)

    w_i = w_t = 1 in the MTIL scripts; the CIL code weights both by 5 (set in `cil_cifar100`).

    How it differs from `vr_lwf` (the founding paper's method): pseudo-texts drawn per experience, not
    at every step; 1,000 of length 10, not 100 of length 8; T = 2 with soft cross-entropy, not KL with
    T = 1; distillation in both directions; text embeddings from the teacher, so only the image encoder
    receives the signal; no separate old-class LwF term.

    Departure: token ids are drawn from the tokenizer's ordinary vocabulary (ZSCL draws from all 49,408
    ids, special tokens included, and from CLIP's BPE; the offline mini model's is MiniLM's WordPiece).
    """

    name = "lwf_vr"
    version = 2
    Config = LwFVRConfig

    def reference_text(self, strategy) -> torch.Tensor:
        pseudo = pseudo_sentences(strategy.model.tokenizer, self.config.n_pseudo, self.config.pseudo_length)
        return self.teacher_text_features(strategy.model, pseudo.to(strategy.device))
