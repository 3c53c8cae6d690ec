"""WiSE-FT as ZSCL's code runs it: after each task, interpolate with the previous task's model."""

from dataclasses import dataclass

from .base import register_method
from .imm import IMM, IMMConfig


@dataclass
class WiSEFTZSCLConfig(IMMConfig):
    alpha: float = 0.8  # weight of the fine-tuned model (--wise_ft_alpha 0.8)


@register_method
class WiSEFTZSCL(IMM):
    """WiSE-FT as ZSCL's tables run it (Zheng et al., ICCV 2023; Thunderbeee/ZSCL at b96e714,
    mtil/scripts/WiSE_finetune.sh: `--method finetune --wise_merge --wise_ft_model n --wise_ft_alpha 0.8`).

    In mtil/src/models/finetune.py `finetune`, `--wise_ft_model n` keeps `model_fix`, the checkpoint the
    task started from (`--load`: the previous task's saved, already merged model; the zero-shot model
    for the first task), and after training sets every parameter to

        theta <- alpha * theta_finetuned + (1 - alpha) * theta_previous,   alpha = 0.8,

    then saves it as the start of the next task. This is `imm`'s update with another weight, so the
    class reuses it (its teacher is the model before this experience). The other `wise_ft` interpolates
    with the zero-shot weights at 0.5, as WiSE-FT itself does (`--wise_ft_model zeroshot` in ZSCL's code,
    not what its reported row ran).
    """

    name = "wise_ft_zscl"
    version = 1
    Config = WiSEFTZSCLConfig
