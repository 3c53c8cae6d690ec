"""RAPF (Huang et al., ECCV 2024): a linear adapter after the frozen image encoder, Gaussian pseudo-features
of old classes, a hinge loss on hard class pairs, and SVD-based parameter fusion after each task."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from clipbench.errors import ClipbenchError

from .base import Method, MethodConfig, register_method
from .toolkit import check_template, raw_image_features

REPO = "linlany/RAPF at 81d41dfb2e6f0c856c8ca520c1b35bd6ef0ba883"

# The authors' recipe for CIFAR-100 10-10, each value with where it is read (the per-suite recipe modes
# read this; `mini` and `tiny` pin one recipe for every method).
REFERENCE_RECIPE: Dict[str, Tuple[Any, str]] = {
    "train.optimizer": ("adam", "main.py run_class_incremental: torch.optim.Adam(model.adapter.parameters(), lr=cfg.lr, weight_decay=0)"),
    "train.lr": (1e-3, "configs/class/cifar100_10-10.yaml 'lr'"),
    "train.weight_decay": (0.0, "main.py run_class_incremental: weight_decay=0.0000"),
    "train.batch_size": (100, "configs/class/cifar100_10-10.yaml 'train_batch_size' (imagenet_r_20-20.yaml: 64)"),
    "train.epochs": (15, "configs/class/cifar100_10-10.yaml 'epochs'"),
    "train.schedule": ("multistep [4, 10], gamma 0.1, per epoch",
                       "main.py: MultiStepLR(optimizer, cfg.milestones, gamma=0.1), milestones [4,10] in the yaml; "
                       "clipbench's `step` schedule has one step size, not milestones"),
    "eval.batch_size": (128, "configs/class/cifar100_10-10.yaml 'batch_size'"),
    "methods.rapf.beta": (2.0, "configs/class/cifar100_10-10.yaml 'beta' (imagenet_r_20-20.yaml: 1)"),
    "methods.rapf.mix_bias": (0.6, "configs/class/cifar100_10-10.yaml 'mix_bias' (imagenet_r_20-20.yaml: 0.7)"),
    "methods.rapf.threshold": (0.55, "configs/class/cifar100_10-10.yaml 'threshold' (imagenet_r_20-20.yaml: 0.65)"),
    "methods.rapf.shrinkage": (False, "configs/class/cifar100_10-10.yaml 'shrinkage' (imagenet_r_20-20.yaml: true)"),
    "methods.rapf.pseudo_classes_per_batch": (2, "main.py list_for_one_batch: 2 (CIFAR increment 5: 4, ImageNet-R: 5, CUB: 10)"),
    "methods.rapf.template": ("a good photo of a {c}.", "configs/class/cifar100_10-10.yaml 'prompt_template'"),
    "seed": (2, "configs/class/cifar100_10-10.yaml 'seed'"),
    "model": ("OpenAI ViT-B/16", "configs/class/cifar100_10-10.yaml 'model_name' (clip.load)"),
}


def shrink_cov(cov: torch.Tensor) -> torch.Tensor:
    """RAPF's `shrink_cov`: cov + mean(diag) I + mean(nonzero off-diagonal) (1 - I)."""
    diag_mean = torch.diagonal(cov).mean()
    off = cov.clone()
    off.fill_diagonal_(0.0)
    nonzero = off != 0
    off_mean = (off * nonzero).sum() / nonzero.sum()
    eye = torch.eye(len(cov), dtype=cov.dtype, device=cov.device)
    return cov + diag_mean * eye + off_mean * (1 - eye)


def class_statistics(features: torch.Tensor, labels: torch.Tensor) -> Dict[int, Tuple[torch.Tensor, torch.Tensor]]:
    """RAPF's `analyze_mean_cov`: per class, the mean of its frozen image features and their covariance
    (`torch.cov`, unbiased) plus 1e-4 I. A class of one image (no unbiased covariance: the code's is NaN and
    its sampling fails) gets 1e-4 I alone."""
    out = {}
    for c in labels.unique().tolist():
        x = features[labels == c]
        eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
        cov = torch.cov(x.T) if len(x) > 1 else torch.zeros_like(eye)
        out[int(c)] = (x.mean(0), cov + 1e-4 * eye)
    return out


def cholesky_factor(cov: torch.Tensor, shrink: bool) -> torch.Tensor:
    """The lower Cholesky factor `sample` draws with (of the shrunk covariance when `shrink`), factorised in
    float64 and returned in the covariance's dtype."""
    if shrink:
        cov = shrink_cov(cov)
    return torch.linalg.cholesky(cov.double()).to(cov.dtype)


def sample(mean: torch.Tensor, chol: torch.Tensor, size: int) -> torch.Tensor:
    """RAPF's `sample`: `size` draws of N(mean, L L^T) as randn(size, D) @ L^T + mean (torch's generator)."""
    vec = torch.randn(size, mean.shape[-1], device=mean.device, dtype=mean.dtype)
    return vec @ chol.T + mean


def hard_pairs(text: torch.Tensor, old: int, new: List[int], threshold: float) -> torch.Tensor:
    """RAPF's `adaptation`: (old class, new class) pairs whose normalised text embeddings are closer than
    `threshold` in L2 distance, in the code's order (old class major). `text`: [C, D] normalised."""
    if old == 0:
        return torch.empty(0, 2, dtype=torch.long)
    dist = torch.cdist(text[:old].float(), text[new].float())  # [old, new]
    pairs = torch.nonzero(dist < threshold)
    pairs[:, 1] = torch.tensor(new, dtype=torch.long, device=pairs.device)[pairs[:, 1]]
    return pairs.cpu()


def hinge(features: torch.Tensor, own: torch.Tensor, near: torch.Tensor, margin: float = 0.1) -> torch.Tensor:
    """RAPF's hinge on hard pairs (`main.py`): mean relu(-cos(x, t_own) + cos(x, t_near) + margin); `features`
    are the adapted pseudo-features, `own`/`near` the text embeddings of their class and of the close new
    class (all normalised)."""
    return torch.relu(-(features * own).sum(-1) + (features * near).sum(-1) + margin).mean()


def mix_matrix(w_old: torch.Tensor, w_new: torch.Tensor, mix_bias: float) -> torch.Tensor:
    """RAPF's parameter fusion (`ClassIncrementalCLIP.mix_matrix`): with W_old = U S V^T,

        P = U^T W_new,  D = |P - S V^T|,  M = min(D / max(D) + mix_bias, 1),
        W = U (M * P + (1 - M) * S V^T).
    """
    U, S, Vh = torch.linalg.svd(w_old)
    P = U.T @ w_new
    old = torch.diag(S) @ Vh
    dist = (P - old).abs()
    mask = torch.clamp(dist / dist.max() + mix_bias, max=1)
    return U @ (P * mask + old * (1 - mask))


@dataclass
class RAPFConfig(MethodConfig):
    template: str = "a good photo of a {c}."  # the one prompt, for training and evaluation
    beta: float = 2.0  # int(10 beta) pseudo-features per chosen old class, int(20 beta) per hard pair
    pseudo_classes_per_batch: int = 2  # old classes drawn per batch (the code's list_for_one_batch)
    threshold: float = 0.55  # hard pair: text embeddings closer than this (L2, normalised)
    mix_bias: float = 0.6  # parameter fusion's mask offset
    shrinkage: bool = False  # sample from shrink_cov(cov)
    margin: float = 0.1  # the hinge's margin (hard-coded in the code)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_template(self.template)
        if self.beta < 0 or self.pseudo_classes_per_batch < 0 or self.margin < 0:
            raise ClipbenchError(f"rapf needs beta, pseudo_classes_per_batch and margin >= 0; got {self.beta}, "
                                 f"{self.pseudo_classes_per_batch}, {self.margin}")


@register_method
class RAPF(Method):
    """RAPF (Huang et al., "Class-Incremental Learning with CLIP: Adaptive Representation Adjustment and
    Parameter Fusion", ECCV 2024).

    Code: linlany/RAPF at 81d41dfb2e6f0c856c8ca520c1b35bd6ef0ba883, `main.py` (`run_class_incremental`:
    pseudo-feature sampling, hinge loss, optimiser) and `continual_clip/models.py` (`ClassIncrementalCLIP`:
    `forward`, `adaptation`, `analyze_mean_cov`, `mix_matrix`; `sample`, `shrink_cov`); the defaults of
    `configs/class/cifar100_10-10.yaml`. The authors run OpenAI CLIP ViT-B/16 (`clip.load`); here it is
    whatever model the suite gives.

    Both encoders are frozen. One bias-free linear adapter D -> D, default-initialised (nn.Linear's, not
    the identity), follows the image encoder: logits = exp(logit_scale) cos(A f, t) over every class seen
    so far, t the frozen text embedding of "a good photo of a {c}." (training and evaluation alike).
    Task 0: cross-entropy. From task 1 on, each batch adds
    - pseudo-features of `pseudo_classes_per_batch` old classes (int(10 beta) each), drawn from N(mu_c,
      Sigma_c) of the frozen image features; the classes are taken in turn from a list of the old classes
      shuffled at each epoch (the code's `list_for_one_batch`); they join the batch's cross-entropy (one
      mean over the real images and the pseudo-features);
    - for every hard pair (old c, new n) (text embeddings closer than `threshold`), int(20 beta)
      pseudo-features of c, with the hinge mean relu(-cos(A x, t_c) + cos(A x, t_n) + 0.1).
    After each task: per new class, the mean and covariance (+1e-4 I) of its frozen image features
    (`analyze_mean_cov`), then, from task 1 on, parameter fusion of the adapter with its weights before the
    task (`mix_matrix`, SVD). No exemplars: it keeps a D-vector and a D x D matrix per class.

    Quirks kept: the adapter's default initialisation; the fixed number of pseudo-classes per batch,
    whatever the batch count (the config's own comment calls it "too rough"); the adapter acts on the
    unnormalised encoder output; the pseudo-features enter the cross-entropy at the image features' side
    only (their text side is the frozen class embedding, as for real images).
    Departures:
    - the Cholesky factor of each covariance is computed once per task in float64 (the code factorises it
      in float32 at every draw; same distribution, no failure on nearly singular covariances).
    - the extra cross-entropy is added through the engine's criterion: total = (B CE_real + P CE_pseudo)
      / (B + P), the code's mean over the joined batch, whatever criterion the suite sets.
    - before the first task is learned the adapter is off (row 0 is zero-shot CLIP with the template;
      the code evaluates only after training). The held-out zero-shot and retrieval sets are scored through
      the adapter, as the code's model would score any class name.
    - the pseudo-class list is shuffled with torch's generator (the code uses Python's `random`); the
      code's unused `old_memory_feature` (the old adapter on the pseudo-features) is not computed.
    - a suite's recipe replaces the authors' (`REFERENCE_RECIPE`: Adam 1e-3, batch 100, 15 epochs,
      MultiStepLR [4, 10]); clipbench's schedules have no milestones.
    """

    name = "rapf"
    version = 1
    Config = RAPFConfig

    def setup(self, model, streams) -> None:
        self.streams, self.model = streams, model
        tokens = model.tokenizer([self.config.template.format(c=c) for c in streams.class_names])
        model.prompt_tokens = tokens.to(model.prompt_tokens.device)  # training prompts: the one template
        with torch.no_grad():
            dim = model.encode_tokens(model.prompt_tokens[:1]).shape[-1]
        self.adapter = nn.Linear(dim, dim, bias=False)  # nn.Linear's default initialisation, as the code's
        model.add_module("rapf_adapter", self.adapter)
        self.active = False  # off until the first task trains
        visual = model.clip.visual
        inner = visual.forward

        def forward(*args, **kwargs):
            out = inner(*args, **kwargs)
            return self.adapter(out) if self.active else out

        visual.forward = forward  # this instance only: parameter names (checkpoints, frozen parts) unchanged
        self.stats: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}  # class -> (mean, cov) of frozen features
        self.learned = 0

    @contextlib.contextmanager
    def frozen_encoder(self) -> Iterator[None]:
        """The image encoder without the adapter (RAPF's `original_image_features`)."""
        active, self.active = self.active, False
        try:
            yield
        finally:
            self.active = active

    def prompt_templates(self, templates: List[str]) -> List[str]:
        return [self.config.template]

    def trainable_parameters(self, model) -> List[nn.Parameter]:
        return [self.adapter.weight]

    def before_training_exp(self, strategy, **kwargs):
        model, exp = strategy.model, strategy.experience.current_experience
        self.active = True
        classes = self.streams.experience_classes[exp]
        self.n_old = classes[0]
        self.old_weight = self.adapter.weight.detach().clone() if exp > 0 else None
        with torch.no_grad():
            self.text = model.encode_tokens(model.prompt_tokens[:model.num_active])
        self.pairs = hard_pairs(self.text, self.n_old, list(classes), self.config.threshold)
        self.chol = {c: cholesky_factor(cov, self.config.shrinkage) for c, (_, cov) in self.stats.items() if c < self.n_old}

    def before_training_epoch(self, strategy, **kwargs):
        self.order = torch.randperm(self.n_old).tolist() if self.n_old else []  # random_class_order_list
        self.batch_id = -1

    def _draw(self, c: int, size: int, device) -> torch.Tensor:
        return sample(self.stats[c][0].to(device), self.chol[c].to(device), size)

    def loss(self, strategy) -> Optional[torch.Tensor]:
        if not self.n_old:
            return None
        self.batch_id += 1
        device, cfg = strategy.mb_output.device, self.config
        k, n = cfg.pseudo_classes_per_batch, len(self.order)
        picks = [self.order[(self.batch_id * k + i) % n] for i in range(k)]
        per_class, per_pair = int(10 * cfg.beta), int(20 * cfg.beta)
        pseudo = [self._draw(c, per_class, device) for c in picks]
        edge = [self._draw(int(c), per_pair, device) for c, _ in self.pairs.tolist()]  # drawn after, as the code
        model, extra = strategy.model, None
        if pseudo and per_class:
            x = F.normalize(self.adapter(torch.cat(pseudo)), dim=-1)
            y = torch.tensor(picks, device=device).repeat_interleave(per_class)
            real = strategy._criterion(strategy.mb_output, strategy.mb_y)
            b, p = len(strategy.mb_y), len(y)
            # the code's one cross-entropy over [real; pseudo]: the engine added `real`, weighted 1
            extra = p / (b + p) * (strategy._criterion(model.logits(x, self.text), y) - real)
        if edge and per_pair:
            x = F.normalize(self.adapter(torch.cat(edge)), dim=-1)
            own = self.text[self.pairs[:, 0].to(device).repeat_interleave(per_pair)]
            near = self.text[self.pairs[:, 1].to(device).repeat_interleave(per_pair)]
            h = hinge(x, own, near, cfg.margin)
            extra = h if extra is None else extra + h
        return extra

    def after_training_exp(self, strategy, **kwargs):
        exp = strategy.experience.current_experience
        data = self.streams.train[exp]
        with self.frozen_encoder():
            features = raw_image_features(strategy.model, data.images, strategy.device)
        self.stats.update({c: (m, cov) for c, (m, cov) in class_statistics(features, data.labels).items()})
        if self.old_weight is not None:
            with torch.no_grad():
                self.adapter.weight.copy_(mix_matrix(self.old_weight, self.adapter.weight.detach(), self.config.mix_bias))
        self.old_weight, self.chol = None, {}  # only needed while a task trains
        self.learned += 1

    def state_dict(self) -> Dict[str, Any]:
        return {"stats": self.stats, "learned": self.learned}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.stats, self.learned = dict(state["stats"]), state["learned"]
        self.active = self.learned > 0
