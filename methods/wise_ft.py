"""WiSE-FT: weight-space ensembling with the zero-shot weights (Wortsman et al., CVPR 2022)."""

from dataclasses import dataclass

from .base import Method, MethodConfig, register_method
from .toolkit import interpolate, load_into, snapshot


@dataclass
class WiSEFTConfig(MethodConfig):
    alpha: float = 0.5  # weight of the fine-tuned model; 0 gives the zero-shot model back


@register_method
class WiSEFT(Method):
    """WiSE-FT (Wortsman et al., CVPR 2022; code: mlfoundations/wise-ft at 4639a39, src/wise_ft.py
    `wise_ft`: theta = (1 - alpha) theta_0 + alpha theta_1 with theta_0 the zero-shot weights), applied
    after every experience:

        theta <- alpha * theta_finetuned + (1 - alpha) * theta_zeroshot

    where theta_zeroshot are the weights before any training; the next experience continues from the
    ensembled weights. alpha = 0.5, the paper's fixed mixing coefficient. ZSCL's code can do this
    (`--wise_merge --wise_ft_model zeroshot`), but its reported WiSE-FT row interpolates with the
    previous task's model at alpha 0.8: that is `wise_ft_zscl`.

    Departure: WiSE-FT fine-tunes once and ensembles once; applying it after every experience is the
    continual adaptation.
    """

    name = "wise_ft"
    version = 1
    Config = WiSEFTConfig

    def setup(self, model, streams) -> None:
        self.zeroshot = snapshot(model, self.trainable_parameters(model))

    def after_training_exp(self, strategy, **kwargs):
        model = strategy.model
        finetuned = snapshot(model, self.trainable_parameters(model))
        load_into(model, interpolate(finetuned, self.zeroshot, self.config.alpha))
        model.invalidate_text_cache()
