"""The reference row: the pretrained model, never trained (CLIP's zero-shot classifier)."""

from .base import Method, register_method


@register_method
class ZeroShot(Method):
    """Zero-shot CLIP (Radford et al., 2021): class prompts as the classifier, no training at all.

    Every accuracy-matrix row is the untouched model, so retention is 1 by construction.
    """

    name = "zeroshot"
    version = 1
    trains = False
