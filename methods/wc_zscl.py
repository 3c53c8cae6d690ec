"""Weight consolidation (WC) as ZSCL's code runs it: fine-tuning with an L2 pull to the task's start."""

from dataclasses import dataclass

from .base import MethodConfig, WithTeacher, register_method
from .toolkit import l2_to


@dataclass
class WCZSCLConfig(MethodConfig):
    l2: float = 1.0  # --l2 1


@register_method
class WCZSCL(WithTeacher):
    """WC, the parameter-space baseline of ZSCL's ablations (Zheng et al., ICCV 2023; Thunderbeee/ZSCL at
    b96e714, mtil/scripts/wc.sh: `--method finetune --l2 1`; mtil/src/models/finetune.py `finetune` with
    helpers.py `l2_loss`; mtil/results.ipynb shows a WC run, exp_wc_fair.npy, under "Include ImageNet
    when Training with WC and LwF"; clipbench ships no reported number for it):

        loss = CE + l2 * sum_i (theta_i - theta_start,i)^2,   l2 = 1,

    theta_start the weights at the start of the experience (ZSCL copies the model it loaded, the
    previous task's checkpoint); the sum is ZSCL's summed squared error over every parameter (the
    frozen ones contribute nothing). This is ZSCL's L2 term without its distillation and ensembling.
    Departures: none in the loss; ZSCL's label smoothing and cosine schedule are training settings.
    """

    name = "wc_zscl"
    version = 1
    Config = WCZSCLConfig

    def loss(self, strategy):
        return self.config.l2 * l2_to(strategy.model, self.teacher)
