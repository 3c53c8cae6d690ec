"""Naive sequential fine-tuning: the lower bound every continual method is measured against."""

from .base import Method, register_method


@register_method
class Finetune(Method):
    """Cross-entropy on each experience in turn, with nothing to prevent forgetting.

    Trains the encoders named by `part` (default: both); the class prompts' text embeddings are
    recomputed with gradients when the text encoder trains.
    """

    name = "finetune"
    version = 1
