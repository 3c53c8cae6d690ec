"""The engine: a CLIP model as an Avalanche classifier, trained one experience at a time.

Logits are the image features against the text embeddings of the class prompts (training uses
the protocol's training template) over the classes active in the current experience. Methods are
Avalanche plugins; the engine's own plugin adds their extra loss terms (methods never write the
strategy's loss), keeps frozen modules in eval mode, and drives the progress bar.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from clipbench.protocols.data import LabelledImages

from .avalanche_api import EvaluationPlugin, SupervisedPlugin, Template, make_experience
from .models import LoadedModel

if TYPE_CHECKING:
    from clipbench.methods.base import Method


class CLIPClassifier(nn.Module):
    """Wraps an open_clip model so that `forward(uint8 images)` returns class logits.

    `num_active` is the number of leading classes (in class order) the logits cover. When no
    text-tower parameter trains, the class embeddings are computed once and cached until
    `invalidate_text_cache()` (the engine calls it around each experience).
    """

    def __init__(self, loaded: LoadedModel, class_names: List[str], train_template: Union[str, Sequence[str]]):
        """`train_template`: one template for every class, or one per class (`Streams.train_templates()`)."""
        super().__init__()
        self.clip = loaded.clip
        self.tokenizer = loaded.tokenizer
        self.model_input = loaded.model_input
        templates = [train_template] * len(class_names) if isinstance(train_template, str) else list(train_template)
        tokens = loaded.tokenizer([t.format(c=c) for t, c in zip(templates, class_names)])
        self.register_buffer("prompt_tokens", tokens, persistent=False)
        self.num_active = len(class_names)
        self.frozen_prefixes = loaded.frozen_prefixes
        self._text_cache: Optional[torch.Tensor] = None
        # the image features of the last forward pass (with their graph), for methods' loss terms
        self.last_image_features: Optional[torch.Tensor] = None

    def _trainable_named(self):
        return [(n, p) for n, p in self.clip.named_parameters() if not n.startswith(self.frozen_prefixes)]

    def image_parameters(self) -> List[nn.Parameter]:
        """Image-tower parameters that may train (the model's frozen parts excluded)."""
        return [p for n, p in self._trainable_named() if n.startswith("visual.")]

    def text_parameters(self) -> List[nn.Parameter]:
        """Every trainable parameter outside the image tower, except the logit scale (kept fixed)."""
        return [p for n, p in self._trainable_named() if not n.startswith("visual.") and n != "logit_scale"]

    def _frozen_keys(self) -> Tuple[str, ...]:
        return tuple(f"clip.{prefix}" for prefix in self.frozen_prefixes)

    def checkpoint_state(self) -> Dict[str, torch.Tensor]:
        """The state a checkpoint needs: everything but the model's frozen parts, which never change."""
        frozen = self._frozen_keys()
        return {k: v for k, v in self.state_dict().items() if not frozen or not k.startswith(frozen)}

    def load_checkpoint_state(self, state: Dict[str, torch.Tensor]) -> None:
        """Restore what `checkpoint_state` returned; any other missing or unknown key is an error."""
        missing, unexpected = self.load_state_dict(state, strict=False)
        frozen = self._frozen_keys()
        missing = [k for k in missing if not frozen or not k.startswith(frozen)]
        if missing or unexpected:
            raise RuntimeError(f"checkpoint does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")

    def invalidate_text_cache(self) -> None:
        self._text_cache = None

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images moved to the model's device (4x fewer bytes than floats), then prepared there."""
        return self.model_input(images.to(self.prompt_tokens.device, non_blocking=True))

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.clip.encode_image(self.preprocess(images)), dim=-1)

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.clip.encode_text(tokens), dim=-1)

    def class_text_features(self) -> torch.Tensor:
        """Normalised prompt embeddings of the active classes; differentiable if the text tower trains."""
        tokens = self.prompt_tokens[: self.num_active]
        if any(p.requires_grad for p in self.text_parameters()):
            return self.encode_tokens(tokens)
        if self._text_cache is None or len(self._text_cache) != self.num_active:
            with torch.no_grad():
                self._text_cache = self.encode_tokens(tokens)
        return self._text_cache

    def logits(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        return self.clip.logit_scale.exp().detach() * image_features @ text_features.T

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.last_image_features = self.encode_images(images)
        return self.logits(self.last_image_features, self.class_text_features())


class EnginePlugin(SupervisedPlugin):
    """Adds the methods' loss terms, keeps frozen modules in eval mode, shows training progress."""

    def __init__(self, methods: List["Method"], total_iterations: int, progress: bool, desc: str):
        super().__init__()
        self.methods = methods
        self.bar = tqdm(total=total_iterations, desc=desc, disable=not progress, leave=False)

    def before_training_epoch(self, strategy, **kwargs):
        # strategy.train() called model.train(); frozen towers (BatchNorm statistics) must stay put.
        # Every module is visited, so each flag is set directly (module.eval() would recurse again).
        for module in strategy.model.modules():
            if not any(p.requires_grad for p in module.parameters()):
                module.training = False

    def before_backward(self, strategy, **kwargs):
        for method in self.methods:
            extra = method.loss(strategy)
            if extra is not None:
                strategy.loss = strategy.loss + extra

    def after_training_iteration(self, strategy, **kwargs):
        if self.bar.disable:
            return  # reading the loss would wait for the device at every step
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{strategy.loss.item():.3f}", refresh=False)

    def after_training_exp(self, strategy, **kwargs):
        self.bar.close()


def make_optimizer(params: List[nn.Parameter], train: dict) -> torch.optim.Optimizer:
    """AdamW or SGD over `params`, with torch's fused kernels where they exist (float tensors on the
    CPU or a CUDA device): one kernel per step instead of a Python loop over the tensors, 9x
    faster on the CPU for the tiny model's 62 tensors."""
    name = train.get("optimizer", "adamw")
    fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=train["lr"], weight_decay=train.get("weight_decay", 0.0), fused=fused)
    if name == "sgd":
        return torch.optim.SGD(params, lr=train["lr"], momentum=train.get("momentum", 0.9),
                               weight_decay=train.get("weight_decay", 0.0), fused=fused)
    raise ValueError(f"unknown optimizer {name!r}")


def set_trainable(model: CLIPClassifier, method: "Method") -> int:
    """Freeze everything, then unfreeze what the method trains. Returns the trainable count."""
    for p in model.parameters():
        p.requires_grad_(False)
    params = list(method.trainable_parameters(model))
    for p in params:
        p.requires_grad_(True)
    return sum(p.numel() for p in {id(p): p for p in params}.values())


def make_criterion(first_class: int, ce_classes: str):
    """Cross-entropy over every active class ("seen"), or only the current experience's ("current",
    as the founding paper's code masks the other sessions' classes with -1e4)."""
    if ce_classes == "seen":
        return nn.CrossEntropyLoss()
    if ce_classes != "current":
        raise ValueError(f"train.ce_classes must be 'seen' or 'current', got {ce_classes!r}")

    def current_only(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        masked = logits.clone()
        masked[:, :first_class] = -1e4
        return F.cross_entropy(masked, labels)

    return current_only


def train_experience(model: CLIPClassifier, method: "Method", data: LabelledImages, index: int, num_active: int,
                     train: dict, device: str, progress: bool, first_class: int = 0) -> float:
    """Train on one experience with a fresh optimizer (as the paper's and ZSCL's code do per session).

    A fresh optimizer per experience also means a checkpoint needs no optimizer state. Returns seconds.
    """
    start = time.perf_counter()
    model.num_active = num_active
    model.invalidate_text_cache()
    set_trainable(model, method)
    trainable = [p for p in model.parameters() if p.requires_grad]
    iterations = train["epochs"] * math.ceil(len(data) / train["batch_size"])
    engine = EnginePlugin([method], iterations, progress, desc=f"train exp {index}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No loggers specified")  # metrics come from records, not loggers
        strategy = Template(
            model=model, optimizer=make_optimizer(trainable, train),
            criterion=make_criterion(first_class, train.get("ce_classes", "seen")),
            train_mb_size=train["batch_size"], train_epochs=train["epochs"], eval_mb_size=train["batch_size"],
            device=device, plugins=[method, engine], evaluator=EvaluationPlugin(),
        )
    strategy.train(make_experience(data.images, data.labels, index), num_workers=0)
    model.last_image_features = None
    model.invalidate_text_cache()
    model.eval()
    return time.perf_counter() - start
