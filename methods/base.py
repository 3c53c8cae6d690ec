"""The method plugin base: what every continual-learning method subclasses.

A method is an Avalanche `SupervisedPlugin` with a `name`, a `version` (bump it whenever its
numbers could change), a `Config` dataclass of hyperparameters, the protocol kinds it supports,
and optional hooks:

- `trainable_parameters(model)`: what trains (default: by `config.part`: whole, image or text);
- `loss(strategy)`: an extra loss term; the engine adds it to the cross-entropy. A method never
  writes `strategy.loss` itself, so two plugins cannot interfere;
- `state_dict()` / `load_state_dict()`: whatever it keeps between experiences, for exact resume;
- `inference_extras()`: what inference needs beyond the model (a cost column of the leaderboard);
- `exemplar_count()`: how many training images it keeps between experiences (a cost column);
- `route_batch(loaded, images)` with `infers_task_per_batch = True`: for methods that infer the task
  from a whole test batch (MoE-Adapters' DDAS, DIKI's vote); see `Route`;
- `fit_experience(data, exp, encode)`: learning without gradients (analytic methods, `trains = False`);
- `prompt_templates(templates)` and `scores(image_features, class_features)`: how the target stream is
  scored (defaults: the protocol's templates, CLIP's cosine similarity);
- `not_applicable(spec)`: why the method cannot run a protocol by design (the plan marks the pair
  "n/a: <why>", `run --all` skips it, the leaderboard shows the reason), or None;
- `uses_reference = True`: the run reads the protocol's reference set for this method into
  `streams.reference` (outside data: `toolkit.require_reference`); other runs never read it;
- `capped(n)`: a method-internal loop of `n` steps, cut to the run's `limit.steps` when set;
- any Avalanche callback (`before_training_exp`, `after_training_exp`, ...).

Register with `@register_method`; third-party packages do the same from a module named in the
entry point group `clipbench.methods`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Dict, Hashable, Iterable, List, Optional, Tuple, Type

import torch

from clipbench.avalanche_api import SupervisedPlugin
from clipbench.errors import ClipbenchError
from clipbench.names import check_name
from clipbench.registry import Registry

if TYPE_CHECKING:
    from clipbench.engine import CLIPClassifier
    from clipbench.spec import RunSpec
    from clipbench.streams import LabelledImages

PARTS = ("whole", "image", "text")


def require_choice(what: str, value: str, choices: Tuple[str, ...]) -> None:
    """One clear line when a string setting is not one of its choices."""
    if value not in choices:
        raise ClipbenchError(f"{what} must be one of {', '.join(choices)}, got '{value}'")


@dataclass
class MethodConfig:
    """Hyperparameters shared by every method."""

    part: str = "whole"  # which encoders train: whole, image or text (as in the founding paper)

    def __post_init__(self) -> None:
        require_choice("part", self.part, PARTS)


@dataclass
class Route:
    """What a batch-wise method inferred from one test batch: `with route:` the model computes that
    batch's images, and the texts scored against them, accordingly.

    `key` names what the texts depend on: texts encoded under routes with equal keys are equal, so the
    evaluator encodes them once per key (a task id; DIKI's key also holds its continuous text weight).
    `group` names what images may share a forward pass: at batch size 1, images whose routes have equal
    groups are encoded together under `Method.merge_routes` of their routes (None: the key).
    """

    key: Hashable
    enter: Callable[[], None]  # make the model compute this route
    exit: Callable[[], None]  # back to the model's state outside this batch
    group: Hashable = None
    # per image, what `merge_routes` needs beyond the group (DIKI: the image's own prefix weight)
    detail: Any = None

    @property
    def image_group(self) -> Hashable:
        return self.key if self.group is None else self.group

    def __enter__(self) -> "Route":
        self.enter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.exit()


class Method(SupervisedPlugin):
    """Base class of every method. Subclasses set `name` and may override the hooks below."""

    name: ClassVar[str] = ""
    version: ClassVar[int] = 1
    Config: ClassVar[Type[MethodConfig]] = MethodConfig
    supports: ClassVar[Tuple[str, ...]] = ("class_incremental", "task_incremental")
    # False: no gradient training (the zero-shot reference row; analytic methods learn in `fit_experience`)
    trains: ClassVar[bool] = True
    # True: the method infers the task from a whole test batch (`route_batch`); the evaluator then encodes
    # each image set in batches within that set, once at the evaluation batch size and once at batch size 1
    infers_task_per_batch: ClassVar[bool] = False
    # True: `scores` receives the target stream's image features as the image encoder returns them, not
    # L2-normalised (PROOF scores unnormalised features); the per-class accuracy then comes from `scores` too
    scores_raw_features: ClassVar[bool] = False
    # True: the method reads the protocol's reference set (outside data, `streams.reference`); a run of a method
    # without it never reads one, so a reference set missing on disk fails only the runs that use it
    uses_reference: ClassVar[bool] = False

    def __init__(self, config: Optional[MethodConfig] = None):
        super().__init__()
        self.config = config if config is not None else self.Config()
        self.limit_steps = 0  # the run's `limit.steps` (0: none), set by the runner; see `capped`

    @classmethod
    def not_applicable(cls, spec: "RunSpec") -> Optional[str]:
        """Why this method cannot run `spec` by design (e.g. "needs task identity at test time",
        "needs methods.engine.descriptions: the LLM-written description file"), or None when it can."""
        return None

    def capped(self, steps: int) -> int:
        """`steps` of a method-internal loop (an autoencoder's iterations, a calibration pass), cut to the
        run's `limit.steps` when one is set (a smoke check): every loop that takes long honours it."""
        return min(steps, self.limit_steps) if self.limit_steps else steps

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

    def fit_experience(self, data: "LabelledImages", exp: int, encode: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Learn experience `exp` without gradient training (called instead of training when `trains` is
        False). `encode(uint8 images)` gives the model's normalised image features, as evaluation computes
        them. The model must stay as it is: evaluation keeps its features. Default: nothing."""

    def prompt_templates(self, templates: List[str]) -> List[str]:
        """The prompt templates of the target stream's classifier (default: the protocol's, and then each
        class keeps its own where a protocol gives classes different templates). Before any learning, a
        method's scores are CLIP's with these templates (the row-0 cache keys on them)."""
        return templates

    def scores(self, image_features: torch.Tensor, class_features: torch.Tensor) -> Optional[torch.Tensor]:
        """The target stream's scores [N, C] over every class of the stream, or None for CLIP's cosine
        similarity (the default); each experience's accuracy is the top-1 over its scored class range."""
        return None

    def inference_extras(self) -> str:
        """What inference needs beyond the model being trained, in a few words (e.g. "zero-shot CLIP",
        "one autoencoder per task"); shown in the leaderboard's cost columns. Default "": nothing."""
        return ""

    def exemplar_count(self) -> int:
        """How many training images the method keeps between experiences (0: exemplar-free)."""
        return 0

    def loss(self, strategy) -> Optional[torch.Tensor]:
        """An extra loss term for the current mini-batch (`strategy.mb_x`, `mb_y`, `mb_output`)."""
        return None

    def route_batch(self, loaded: Any, images: torch.Tensor) -> Route:
        """The route for one test batch (uint8 images, all from one image set) of a method with
        `infers_task_per_batch`. On that path the texts are the class prompts' (or captions')
        embeddings under the route; `class_features` is not used."""
        raise NotImplementedError(f"{self.name} does not infer the task from a test batch")

    def route_each(self, loaded: Any, images: torch.Tensor) -> List[Route]:
        """Each image's route as `route_batch` infers it from that image alone (evaluation at batch size 1),
        for a chunk of images at once. Default: one `route_batch` call per image; a method overrides it to
        make every image's choice in one pass (the numbers must stay those of one image at a time)."""
        return [self.route_batch(loaded, images[i:i + 1]) for i in range(len(images))]

    def merge_routes(self, routes: List[Route]) -> Route:
        """One route under which images of one group (each route from `route_each`, in order) are encoded
        together exactly as each alone would be. Default: the first (a group's routes are one route)."""
        return routes[0]

    def texts_under_routes(self, routes: List[Route], encode: Callable[[], torch.Tensor],
                           tokens: Optional[torch.Tensor] = None,
                           encode_tokens: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                           finish: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> List[torch.Tensor]:
        """The texts scored against images, encoded under each route: `encode()` under it (default). A method
        whose routes differ only by a per-sample weight may instead encode `tokens` once per route in shared
        batches (`encode_tokens(tokens)`: raw features of a token chunk; `finish(raw)`: the texts' features,
        e.g. the prompt ensemble's mean), which gives the same features."""
        out = []
        for route in routes:
            with route:
                out.append(encode())
        return out

    def state_dict(self) -> Dict[str, Any]:
        """What the method keeps between experiences (teachers, buffers); saved in checkpoints."""
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""


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
    check_name("method", cls.name, f"{cls.__module__}.{cls.__qualname__}")  # it names a folder of every record
    return METHODS.register(cls.name, cls)
