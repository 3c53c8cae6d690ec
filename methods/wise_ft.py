"""WiSE-FT: weight-space ensembling with the zero-shot weights (Wortsman et al., CVPR 2022)."""

from dataclasses import dataclass

from .base import Method, MethodConfig, register_method
from .toolkit import interpolate, load_into, snapshot


@dataclass
class WiSEFTConfig(MethodConfig):
    alpha: float = 0.5  # weight of the fine-tuned model; 0 gives the zero-shot model back


@register_method
class WiSEFT(Method):
    """WiSE-FT applied after every experience, as ZSCL's tables run it (Thunderbeee/ZSCL,
    `--wise_merge --wise_ft_model zeroshot`):

        theta <- alpha * theta_finetuned + (1 - alpha) * theta_zeroshot

    where theta_zeroshot are the weights before any training. The next experience continues
    from the ensembled weights.
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
