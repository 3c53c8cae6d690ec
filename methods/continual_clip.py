"""Continual-CLIP (Thengane et al., 2022): zero-shot CLIP over every class seen so far, one prompt, no training."""

from dataclasses import dataclass
from typing import List

from .base import Method, MethodConfig, register_method
from .toolkit import check_template


@dataclass
class ContinualCLIPConfig(MethodConfig):
    # the class-incremental CIFAR-100 and TinyImageNet configs' prompt; the ImageNet-100/1000 and CORe50
    # configs use "a good photo of a {c}."
    template: str = "a bad photo of a {c}."

    def __post_init__(self) -> None:
        super().__post_init__()
        check_template(self.template)


@register_method
class ContinualCLIP(Method):
    """Continual-CLIP (Thengane et al., 2022): zero-shot CLIP over the classes seen so far, one prompt.

    "CLIP model is an efficient continual learner"; code: vgthengane/Continual-CLIP at 6500b8e,
    `continual_clip/models.py` (`ClassIncrementalCLIP`) and `configs/class/*.yaml`. The frozen model,
    never trained; at step t it classifies by CLIP's softmax over one prompt per class,
    `prompt_template.format(name)`, for the classes of steps 1..t (`adaptation` appends each step's
    class names).

    Here: the classifier is the model's embedding of `template` for each class name, a single prompt
    with no ensemble. Class-incremental rows score every class seen so far, exactly the code's
    classes; task-incremental rows score each task over its own classes, the protocol's rule (the
    code has no task-incremental scenario). The frozen towers' features are the model's, on any
    open_clip model and on the mini model.

    How it differs from the `zeroshot` row: only in the prompt. `zeroshot` averages the protocol's
    template ensemble (`Streams.templates`; e.g. the 80 OpenAI templates where a protocol declares
    them), this row uses the one template; the scored class ranges, the held-out zero-shot sets (with
    their own templates) and retrieval are the same, so its retention is 1, like `zeroshot`'s. Class names
    are the protocol's: the CIFAR-100 protocols give torchvision's raw names (`aquarium_fish`), which the code
    prompts (`continual_clip/datasets.py`: `dataset.dataset.classes`).
    Its row 0 is measured with its own prompt, not taken from the other methods' shared row 0. Where a
    protocol's only template is this prompt (the CIFAR-100 protocols, after ZSCL's CIL config), the two
    rows are the same.
    Metrics: the code's accuracy at step t pools the test images of steps 1..t, which is the per-step
    accuracy inside clipbench's `avg` (weighted by test-set size) and, at the last step, its `ut_acc`;
    clipbench's `last` is the unweighted mean of the final row (the same when the test sets are of equal
    size, as in CIFAR-100 and TinyImageNet).
    """

    name = "continual_clip"
    version = 1
    Config = ContinualCLIPConfig
    trains = False

    def prompt_templates(self, templates: List[str]) -> List[str]:
        return [self.config.template]
