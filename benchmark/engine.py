"""The engine: a CLIP model as an Avalanche classifier, trained one experience at a time.

Logits are the image features against the text embeddings of the class prompts (training uses
the protocol's training template) over the classes active in the current experience. Methods are
Avalanche plugins; the engine's own plugin adds their extra loss terms (methods never write the
strategy's loss), keeps frozen modules in eval mode, sets the learning rate of each step
(`clipbench.schedules`), clips the gradient, and drives the progress bar. The training settings
(`train.*`, README "Training settings") are read here; `clipbench.spec.validate_train` checks them.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from clipbench.streams import LabelledImages

from .augment import make_augmenter
from .avalanche_api import EvaluationPlugin, SupervisedPlugin, Template, TrainingLog, make_experience
from .errors import Diverged
from .models import LoadedModel
from .recipes import experience_train
from .schedules import is_constant, learning_rate
from .spec import DEFAULTS

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
        # (lo, hi): encode only these class prompts (a method whose reference encodes only the current task's
        # names while training: MoE-Adapters); the other classes' logits are -1e4. None: every active class.
        self.text_rows: Optional[Tuple[int, int]] = None

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
        if self.text_rows is not None:
            return self.encode_tokens(tokens[self.text_rows[0]:self.text_rows[1]])
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
        logits = self.logits(self.last_image_features, self.class_text_features())
        if self.text_rows is None:
            return logits
        full = logits.new_full((len(logits), self.num_active), -1e4)  # as CL-CLIP masks other sessions' classes
        full[:, self.text_rows[0]:self.text_rows[1]] = logits
        return full


class EnginePlugin(SupervisedPlugin):
    """Adds the methods' loss terms, keeps frozen modules in eval mode, sets each step's learning
    rate (`lr_at(step)`, None: left as the optimizer was built), clips the gradient norm of
    `clipped` at `grad_clip` (0: off) after the methods' own gradient changes and before the
    optimizer step (as CL-CLIP clips between backward and step), shows training progress, and
    stops training with `Diverged` at the first non-finite loss (`experience`: counted from 1)."""

    # steps between two reads of the divergence flag on an accelerator (each read waits for the device)
    CHECK_EVERY = 64

    def __init__(self, methods: List["Method"], total_iterations: int, progress: bool, desc: str,
                 lr_at: Optional[Callable[[int], float]] = None, grad_clip: float = 0.0,
                 clipped: Sequence[nn.Parameter] = (), experience: int = 1):
        super().__init__()
        self.methods = methods
        self.lr_at, self.grad_clip, self.clipped = lr_at, grad_clip, list(clipped)
        self.step = 0
        self.experience = experience
        self.first_bad: Optional[torch.Tensor] = None  # on the loss's device: the first non-finite step, or -1
        self.bar = tqdm(total=total_iterations, desc=desc, disable=not progress, leave=False, unit="step")

    def before_training_epoch(self, strategy, **kwargs):
        # strategy.train() called model.train(); frozen towers (BatchNorm statistics) must stay put.
        keep_frozen_in_eval(strategy.model)

    def before_training_iteration(self, strategy, **kwargs):
        if self.lr_at is not None:
            lr = self.lr_at(self.step)
            for group in strategy.optimizer.param_groups:
                group["lr"] = lr

    def before_backward(self, strategy, **kwargs):
        for method in self.methods:
            extra = method.loss(strategy)
            if extra is not None:
                strategy.loss = strategy.loss + extra
        loss = strategy.loss.detach()
        if self.first_bad is None:
            self.first_bad = torch.full((), -1, dtype=torch.long, device=loss.device)
        self.first_bad = torch.where(~torch.isfinite(loss) & (self.first_bad < 0), self.step, self.first_bad)

    def before_update(self, strategy, **kwargs):
        # plugins run in list order: the methods' before_update (gradient projections) came first
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.clipped, self.grad_clip)

    def after_training_iteration(self, strategy, **kwargs):
        self.step += 1
        if self.first_bad is not None and (self.first_bad.device.type == "cpu" or self.step % self.CHECK_EVERY == 0):
            self._raise_if_diverged()
        if self.bar.disable:
            return  # reading the loss would wait for the device at every step
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{strategy.loss.item():.3f}", refresh=False)

    def after_training_epoch(self, strategy, **kwargs):
        self._raise_if_diverged()

    def _raise_if_diverged(self) -> None:
        if self.first_bad is not None and int(self.first_bad) >= 0:
            self.bar.close()
            raise Diverged("non-finite training loss", self.experience, int(self.first_bad) + 1)

    def after_training_exp(self, strategy, **kwargs):
        self._raise_if_diverged()
        self.bar.close()


def keep_frozen_in_eval(model: nn.Module) -> None:
    """Put every module that does not train in eval mode: a module with parameters when none of them
    trains, and a module without parameters (dropout, activations) when its nearest ancestor with
    parameters does not train. So a frozen tower's BatchNorm and dropout stay as they were, while the
    dropout inside a trained part (an adapter's) works. Each flag is set directly (module.eval() would
    recurse again)."""
    frozen: Dict[str, bool] = {}
    for name, module in model.named_modules():  # a parent comes before its children
        params = list(module.parameters(recurse=True))
        if params:
            frozen[name] = not any(p.requires_grad for p in params)
        else:
            frozen[name] = frozen.get(name.rpartition(".")[0], False)
        if frozen[name]:
            module.training = False


def make_optimizer(params: List[nn.Parameter], train: dict) -> torch.optim.Optimizer:
    """AdamW, Adam (CL-CLIP's optimizer; weight decay as an L2 gradient term) or SGD over `params`,
    with torch's fused kernels where they exist (float tensors on the CPU or a CUDA device): one
    kernel per step instead of a Python loop over the tensors, 9x faster on the CPU for the tiny
    model's 62 tensors."""
    name = train.get("optimizer", "adamw")
    fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=train["lr"], weight_decay=train.get("weight_decay", 0.0), fused=fused)
    if name == "adam":
        return torch.optim.Adam(params, lr=train["lr"], weight_decay=train.get("weight_decay", 0.0), fused=fused)
    if name == "sgd":
        momentum = train.get("momentum", 0.9)
        # torch's fused SGD fails when a parameter gets its first gradient after the others have momentum
        # buffers (a mixture's expert first chosen at a later step); its other kernels give the same update
        return torch.optim.SGD(params, lr=train["lr"], momentum=momentum, weight_decay=train.get("weight_decay", 0.0),
                               fused=fused and not momentum)
    raise ValueError(f"unknown optimizer {name!r}")


def set_trainable(model: CLIPClassifier, method: "Method") -> int:
    """Freeze everything, then unfreeze what the method trains. Returns the trainable count."""
    for p in model.parameters():
        p.requires_grad_(False)
    params = list(method.trainable_parameters(model))
    for p in params:
        p.requires_grad_(True)
    return sum(p.numel() for p in {id(p): p for p in params}.values())


def make_criterion(ce_classes: str, label_smoothing: float = 0.0,
                   class_ranges: Optional[Sequence[Tuple[int, int]]] = None):
    """The cross-entropy of a training step, with `label_smoothing` (ZSCL: 0.2).

    "seen": over every active class. "current": each sample over its own experience's classes
    (`class_ranges`: the [lo, hi) class-id range of every experience, in class order; None: one
    range, every active class). Without replay every sample is the current experience's, as the founding paper's
    code scores it (CL-CLIP masks the other sessions' logits with -1e4, which leaves exactly this
    softmax) and as ZSCL trains each MTIL task and CIL step over its own classes; a replayed sample
    is scored over its own experience's classes instead of falling outside the current range (a loss
    of about 5,000 per sample under the mask). The mean is over the batch.
    """
    if ce_classes == "seen":
        return nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    if ce_classes != "current":
        raise ValueError(f"train.ce_classes must be 'seen' or 'current', got {ce_classes!r}")

    def own_experience(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        ranges = list(class_ranges) if class_ranges else [(0, logits.shape[1])]
        starts = torch.tensor([lo for lo, _ in ranges], device=labels.device)
        owner = torch.bucketize(labels, starts, right=True) - 1  # the experience each label belongs to
        total = logits.new_zeros(())
        for k in owner.unique().tolist():
            lo, hi = ranges[k]
            rows = owner == k
            total = total + F.cross_entropy(logits[rows, lo:hi], labels[rows] - lo,
                                            label_smoothing=label_smoothing, reduction="sum")
        return total / len(labels)

    return own_experience


def train_experience(model: CLIPClassifier, method: "Method", data: LabelledImages, index: int, num_active: int,
                     train: dict, device: str, progress: bool,
                     experience_classes: Optional[Sequence[Sequence[int]]] = None,
                     log: Optional[TrainingLog] = None, name: Optional[str] = None, limit_steps: int = 0) -> float:
    """Train on one experience with a fresh optimizer (as the paper's and ZSCL's code do per session).

    `train`: the run's train settings (missing keys take clipbench's defaults; its `per_experience` entry
    for this experience, by `name` or `index`, over them: `clipbench.recipes.experience_train`);
    `experience_classes`: the class ids of every experience (for `ce_classes: current`); `log`: the run's
    Avalanche loggers (`--log`), if any; `limit_steps` (the run's `limit.steps`, 0: none): at most that many
    steps, whatever the recipe (epochs or iterations), the schedule laid over the steps taken. The strategy's
    `plain_criterion` is the same cross-entropy without label smoothing, for methods whose reference computes
    a gradient with plain cross-entropy (KeepLoRA). A fresh optimizer per experience also means a checkpoint
    needs no optimizer or schedule state. Returns seconds.
    """
    start = time.perf_counter()
    train = experience_train({**DEFAULTS["train"], **train}, index, name)
    model.num_active = num_active
    model.invalidate_text_cache()
    set_trainable(model, method)
    trainable = [p for p in model.parameters() if p.requires_grad]
    steps_per_epoch = math.ceil(len(data) / train["batch_size"])
    iterations = train["iterations"] or train["epochs"] * steps_per_epoch
    if limit_steps and iterations > limit_steps:  # cut short: exactly `limit_steps` batches, pass after pass
        iterations = train["iterations"] = limit_steps
    lr_at = None if is_constant(train) else (lambda step: learning_rate(step, iterations, steps_per_epoch, train))
    engine = EnginePlugin([method], iterations, progress, desc=f"train exp {index}", lr_at=lr_at,
                          grad_clip=train["grad_clip"], clipped=trainable, experience=index + 1)
    ranges = [(c[0], c[-1] + 1) for c in experience_classes if c] if experience_classes else None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No loggers specified")  # metrics come from records, not loggers
        strategy = Template(
            model=model, optimizer=make_optimizer(trainable, train),
            criterion=make_criterion(train["ce_classes"], train["label_smoothing"], ranges),
            train_mb_size=train["batch_size"], eval_mb_size=train["batch_size"],
            train_epochs=1 if train["iterations"] else train["epochs"],
            batches=train["iterations"] or None, transform=make_augmenter(train["augment"], device),
            device=device, plugins=[method, engine], evaluator=log.plugin() if log else EvaluationPlugin(),
        )
    strategy.plain_criterion = make_criterion(train["ce_classes"], 0.0, ranges)
    if log:
        log.start(strategy, index)
    strategy.train(make_experience(data.images, data.labels, index), num_workers=0)
    if log:
        log.finish(strategy)
    model.last_image_features = None
    model.invalidate_text_cache()
    model.eval()
    return time.perf_counter() - start
