"""The method plugin base: what every continual-learning method subclasses.

A method is an Avalanche `SupervisedPlugin` with a `name`, a `version` (bump it whenever its
numbers could change), a `Config` dataclass of hyperparameters, the protocol kinds it supports,
and optional hooks:

- `trainable_parameters(model)`: what trains (default: by `config.part`: whole, image or text);
- `loss(strategy)`: an extra loss term; the engine adds it to the cross-entropy. A method never
  writes `strategy.loss` itself, so two plugins cannot interfere;
- `state_dict()` / `load_state_dict()`: whatever it keeps between experiences, for exact resume;
- any Avalanche callback (`before_training_exp`, `after_training_exp`, ...).

Register with `@register_method`; third-party packages do the same from a module named in the
entry point group `clipbench.methods`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar, Dict, Iterable, Optional, Tuple, Type

import torch

from clipbench.avalanche_api import SupervisedPlugin
from clipbench.errors import ClipbenchError
from clipbench.registry import Registry

if TYPE_CHECKING:
    from clipbench.engine import CLIPClassifier
    from clipbench.protocols.data import LabelledImages

PARTS = ("whole", "image", "text")


@dataclass
class MethodConfig:
    """Hyperparameters shared by every method."""

    part: str = "whole"  # which encoders train: whole, image or text (as in the founding paper)

    def __post_init__(self) -> None:
        if self.part not in PARTS:
            raise ClipbenchError(f"part must be one of {', '.join(PARTS)}, got '{self.part}'")


class Method(SupervisedPlugin):
    """Base class of every method. Subclasses set `name` and may override the hooks below."""

    name: ClassVar[str] = ""
    version: ClassVar[int] = 1
    Config: ClassVar[Type[MethodConfig]] = MethodConfig
    supports: ClassVar[Tuple[str, ...]] = ("class_incremental", "task_incremental")
    trains: ClassVar[bool] = True  # False: the runner never trains (the zero-shot reference row)

    def __init__(self, config: Optional[MethodConfig] = None):
        super().__init__()
        self.config = config if config is not None else self.Config()

    @classmethod
    def config_fields(cls) -> Dict[str, Any]:
        """Each hyperparameter with its default."""
        default = cls.Config()
        return {f.name: getattr(default, f.name) for f in fields(cls.Config)}

    def setup(self, model: "CLIPClassifier", streams: Any) -> None:
        """Called once per run, before any training, with the model and the protocol's streams."""

    def trainable_parameters(self, model: "CLIPClassifier") -> Iterable[torch.nn.Parameter]:
        """The parameters this method trains; the engine freezes the rest."""
        if self.config.part == "image":
            return model.image_parameters()
        if self.config.part == "text":
            return model.text_parameters()
        return model.image_parameters() + model.text_parameters()

    def training_data(self, streams: Any, exp: int) -> Optional["LabelledImages"]:
        """What to train on at experience `exp` (None: no training). Default: that experience's data."""
        return streams.train[exp]

    def class_features(self, loaded: Any, class_features: torch.Tensor) -> torch.Tensor:
        """The target stream's classifier at evaluation (default: the class prompts' text embeddings)."""
        return class_features

    def loss(self, strategy) -> Optional[torch.Tensor]:
        """An extra loss term for the current mini-batch (`strategy.mb_x`, `mb_y`, `mb_output`)."""
        return None

    def state_dict(self) -> Dict[str, Any]:
        """What the method keeps between experiences (teachers, buffers); saved in checkpoints."""
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""

    def inference_extras(self) -> str:
        """Models this method needs at inference beside the CLIP model, in words ("": none)."""
        return ""


class WithTeacher(Method):
    """A method whose teacher is the model as it was before the current experience.

    That is the original model in one-session training and the previous session's model in
    multi-session training, as in the founding paper's code. The teacher holds the trainable
    parameters only (see `clipbench.methods.toolkit.with_weights`); it is taken again at the start
    of each experience, so a resumed run rebuilds it exactly from the checkpointed model.
    """

    def before_training_exp(self, strategy, **kwargs):
        from .toolkit import snapshot

        model = strategy.model
        self.teacher = snapshot(model, self.trainable_parameters(model))
        # the teacher's embeddings of the active classes' prompts: fixed for the whole experience
        self.teacher_classes = self.teacher_text_features(model, model.prompt_tokens[: model.num_active])

    def teacher_image_features(self, model: "CLIPClassifier", images: torch.Tensor) -> torch.Tensor:
        from .toolkit import with_weights

        return with_weights(model, self.teacher, lambda m: m.encode_images(images))

    def teacher_text_features(self, model: "CLIPClassifier", tokens: torch.Tensor) -> torch.Tensor:
        from .toolkit import with_weights

        return with_weights(model, self.teacher, lambda m: m.encode_tokens(tokens))


METHODS: Registry[Type[Method]] = Registry("method", "clipbench.methods", entry_point_group="clipbench.methods")


def register_method(cls: Type[Method]) -> Type[Method]:
    """Class decorator: make the method available to `clipbench run --method NAME`."""
    if not cls.name:
        raise TypeError(f"{cls.__qualname__} needs a `name`")
    return METHODS.register(cls.name, cls)
