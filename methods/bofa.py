"""BOFA: bridge-layer orthogonal low-rank fusion for CLIP-based class-incremental learning (Li et al., AAAI 2026)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from clipbench.errors import ClipbenchError

from . import bridge
from .base import Method, MethodConfig, register_method
from .engine import _no_cross_entropy
from .toolkit import eval_mode
from .gda import SharedCovarianceGDA

REPO = "LAMDA-CL/C3Box at 1378ab2118f04d4ca0d4782d22bd0098a3eeb666"

# The toolbox's recipe (exps/bofa.json: CIFAR-100 B50 Inc10), each value with where it is read.
REFERENCE_RECIPE: Dict[str, Any] = {
    "train.optimizer": ("sgd", "exps/bofa.json 'optimizer'; models/bofa.py Learner.train: SGD momentum 0.9"),
    "train.momentum": (0.9, "models/bofa.py Learner.train: optim.SGD(..., momentum=0.9)"),
    "train.lr": (0.05, "exps/bofa.json 'init_lr' (W_task's group)"),
    "train.weight_decay": (0.05, "exps/bofa.json 'weight_decay' (W_task's group)"),
    "train.batch_size": (128, "exps/bofa.json 'batch_size'"),
    "train.epochs": (17, "exps/bofa.json 'tuned_epoch' 15 + models/bofa.py 'epoch' default 2 (stage 2)"),
    "train.schedule": ("cosine", "models/bofa.py Learner.train: CosineAnnealingLR(T_max=tuned_epoch, eta_min=min_lr=0), per epoch"),
    "methods.bofa.stage2_epochs": (2, "models/bofa.py Learner.__init__: get_attribute(args, 'epoch', 2)"),
    "methods.bofa.rank": (64, "exps/bofa.json 'Kt'"),
    "methods.bofa.stat": (0.1, "exps/bofa.json 'stat'"),
    "methods.bofa.low_lr": (1e-3, "utils/inc_net.py BofaAdapter.get_param_group: B and head 'lr': 0.001"),
    "methods.bofa.low_weight_decay": (1e-3, "utils/inc_net.py BofaAdapter.get_param_group: 'weight_decay': 0.001"),
    "methods.bofa.head_epochs": (6, "models/bofa.py Learner.train: 'if epoch < 6' adds the head's loss"),
    "methods.bofa.grid": (21, "models/bofa.py search_lambda_for_prompt: num_grid=21"),
    "protocol": ("cifar224 B50 Inc10", "exps/bofa.json 'init_cls' 50, 'increment' 10"),
}


def task_covariance(features: torch.Tensor) -> torch.Tensor:
    """OLF.update_old_features: the uncentred (1/(k-1)) X^T X + 1e-4 I of one task's pooled features
    (the code computes a centred copy and does not use it)."""
    k = features.shape[0]
    eye = torch.eye(features.shape[1], dtype=features.dtype, device=features.device)
    return (1 / (k - 1)) * (features.T @ features) + 1e-4 * eye


def safe_subspace(earlier: Sequence[torch.Tensor], rank: int) -> torch.Tensor:
    """OLF.prepare_for_stage2's A [in, rank]: the eigenvectors of the mean of the earlier tasks'
    covariances with the smallest eigenvalues (`torch.linalg.eigh`, ascending)."""
    _, vectors = torch.linalg.eigh(torch.mean(torch.stack(list(earlier), dim=0), dim=0))
    return vectors[:, :rank].clone()


def merged_projection(weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """OLF.end_task's W_fusion: sum(W_list) / len(W_list)."""
    return sum(weights) / len(weights)


def search_lambda(features: torch.Tensor, labels: torch.Tensor, image_proto: torch.Tensor,
                  text_proto: torch.Tensor, grid: int = 21) -> float:
    """`search_lambda_for_prompt`: the lambda in linspace(0, 1, grid) whose prototypes
    (1 - lambda) * image + lambda * text (each normalised) give the best top-1 on `features`
    (normalised), the first one on ties. Lambda weighs the TEXT prototype here."""
    image_proto = F.normalize(image_proto, dim=-1)
    text_proto = F.normalize(text_proto, dim=-1)
    best_acc, best = -1.0, 0.0
    for lam in torch.linspace(0, 1, steps=grid):
        proto = (1 - lam) * image_proto + lam * text_proto
        acc = ((features @ proto.T).argmax(dim=1) == labels).float().mean().item()
        if acc > best_acc:
            best_acc, best = acc, lam.item()
    return best


def hybrid_prototypes(lam: float, image_proto: torch.Tensor, text_proto: torch.Tensor) -> torch.Tensor:
    """Training's and inference's prototypes: lam * normalised image + (1 - lam) * normalised text.
    Lambda weighs the IMAGE prototype here: the code's quirk against `search_lambda`, kept."""
    return lam * F.normalize(image_proto, dim=-1) + (1 - lam) * F.normalize(text_proto, dim=-1)


class OLF(nn.Module):
    """`backbone/linears.py::OLF` as the image tower's bridge layer (W: out x in, output p W^T).

    Training: W_task (stage 1) or W0 + B A^T (stage 2). Evaluation: the mean of the tasks' stored
    projections (W_fusion); before any task, the tower's own projection. Also holds one linear head
    per task on the normalised pooled features (`BofaAdapter.update_task`)."""

    def __init__(self, visual: nn.Module, rank: int, head_sizes: List[int]):
        super().__init__()
        W0 = bridge.projection_weight(visual)
        out_dim, in_dim = W0.shape
        self._tower = (visual,)  # a tuple: not registered (the tower holds this layer)
        self.register_buffer("W0", W0.clone())
        self.register_buffer("A", W0.new_zeros(in_dim, rank))
        self.register_buffer("W_fusion", W0.clone())
        self.register_buffer("W_list", W0.new_zeros(len(head_sizes), out_dim, in_dim))
        self.W_task = nn.Parameter(W0.clone())
        self.B = nn.Parameter(W0.new_zeros(out_dim, rank))
        self.heads = nn.ModuleList(nn.Linear(in_dim, n) for n in head_sizes)
        self.stage2 = False
        self.learned = 0  # tasks whose projection is in W_list
        self.last_pooled: Optional[torch.Tensor] = None

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.last_pooled = pooled.detach()
            return F.linear(pooled, self.W0 + self.B @ self.A.T if self.stage2 else self.W_task)
        if self.learned == 0:
            return bridge.project(self._tower[0], pooled)
        return F.linear(pooled, self.W_fusion)


@dataclass
class BofaConfig(MethodConfig):
    stage2_epochs: int = 2  # the last passes of each task >= 1 train B in the safe subspace
    rank: int = 64  # Kt: columns of A (at most the pooled feature's width)
    stat: float = 0.1  # weight of GDA at inference
    low_lr: float = 1e-3  # B's and the heads' learning rate at the schedule's peak (W_task: train.lr)
    low_weight_decay: float = 1e-3  # B's and the heads' weight decay (W_task: train.weight_decay)
    head_epochs: int = 6  # passes during which the task's head adds its cross-entropy
    grid: int = 21  # lambda values searched
    raw_logit_scale: bool = True  # the code's quirk: scale by logit_scale itself (~4.6), not exp(logit_scale)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.stat <= 1.0:
            raise ClipbenchError(f"methods.bofa.stat must be within [0, 1], got {self.stat}")
        if self.rank < 1 or self.grid < 2 or self.stage2_epochs < 0 or self.head_epochs < 0:
            raise ClipbenchError("methods.bofa needs rank >= 1, grid >= 2, stage2_epochs >= 0 and head_epochs >= 0; got "
                                 f"{self.rank}, {self.grid}, {self.stage2_epochs}, {self.head_epochs}")
        if self.low_lr <= 0 or self.low_weight_decay < 0:
            raise ClipbenchError(f"methods.bofa needs low_lr > 0 and low_weight_decay >= 0, got {self.low_lr}, "
                                 f"{self.low_weight_decay}")


@register_method
class Bofa(Method):
    """BOFA (Li, Hu, Zhou, Ye, Zhan, "BOFA: Bridge-Layer Orthogonal Low-Rank Fusion for CLIP-Based
    Class-Incremental Learning", AAAI 2026). The only code is in the LAMDA-CL/C3Box toolbox at 1378ab2:
    `models/bofa.py` (`Learner.incremental_train`, `search_lambda_for_prompt`, `init_accuracy`, `train`,
    `gda_pred`, `_eval_cnn`), `utils/inc_net.py` class `BofaAdapter` (`update_stat`, `start_train`,
    `update_task`, `prepare_stage2`, `end_train`, `get_cls_center`, `get_param_group`),
    `backbone/linears.py` class `OLF`; recipe `exps/bofa.json`.

    CLIP is frozen except its bridge layer, the image projection (768 -> 512 in ViT-B-16; on clipbench's
    mini model the timm head's linear projection 1280 -> 256; `methods/bridge.py`). Per task t:
    1. from its training images' pooled features: GDA statistics (`methods/gda.py`), the class means
       mu (unnormalised), and the uncentred covariance (1/(k-1)) X^T X + 1e-4 I (`task_covariance`);
    2. while lambda is 0 (so on task 0, and again while the search returns 0): lambda = `search_lambda`
       on the task's training images, projected by the current merged projection, with image prototypes
       mu W0^T and text prototypes (the training template, frozen); lambda weighs the text prototype there;
    3. stage 1: W_task (starting where the last task left it; W0 before task 0) trains on
       CE(s * normalise(p W_task^T) P^T, y) over every seen class, P = `hybrid_prototypes`(lambda, mu W0^T,
       text) where lambda weighs the image prototype (the code's quirk, kept); s is the raw `logit_scale`
       (about 4.6 pretrained; `raw_logit_scale=false`: exp). During the first `head_epochs` passes the
       task's linear head on normalised pooled features (initialised to the task's own GDA W, b) adds
       CE over the task's classes; its logits reach no prediction (`_eval_cnn` drops them) and its gradient
       only itself, so it changes no number; it is kept for the loss and the trainable-parameter count;
    4. stage 2 (tasks >= 1, the last `stage2_epochs` passes, at least one pass left to stage 1):
       A = `safe_subspace`(covariances of tasks < t, rank), B = (W_task - W0) A, and W0 + B A^T trains;
    5. the task's projection (W_task on task 0, W0 + B A^T later) is stored; the model's projection at
       evaluation is their mean (`merged_projection`).
    B and the heads train at `low_lr` (1e-3) and `low_weight_decay` (1e-3), W_task at train.lr and
    train.weight_decay (`get_param_group`); the schedule scales all three alike. Inference over the seen
    classes: stat * (normalise(p) W + b) + (1 - stat) * f P'^T, with f the normalised merged-projection
    feature and P' = `hybrid_prototypes`(lambda, mu W0^T, mean-template text); classes not yet seen score
    below every seen one. Exemplar-free: it keeps class means, GDA statistics, one covariance per task.

    Departures: the epoch split is counted in passes over the experience's data (steps), so it also
    holds under train.iterations; a schedule with fewer passes than stage2_epochs + 1 keeps one pass
    for stage 1. The code's CosineAnnealingLR(T_max=15) is stepped per epoch and restarts after
    epoch 15, so its stage 2 runs at 0 and then 1.1 % of the base rate; clipbench's `cosine` runs over
    the whole experience per step (stage 2 at under 3.4 % of the base rate with 17 epochs): in both,
    B hardly leaves its initialisation. rank is capped at the pooled feature's width (64 in the tiny
    test model: there A spans everything and W0 + B A^T = W_task). `use_up_cov`, `update_cov`,
    `cov_list` and `sample_augmented_cls` are computed or set by the code but reach no number, so are
    left out. Before the first task (row 0) the model is CLIP.
    """

    name = "bofa"
    version = 1
    Config = BofaConfig
    train_defaults = {"optimizer": "sgd", "momentum": 0.9, "lr": 0.05, "weight_decay": 0.05, "batch_size": 128,
                      "epochs": 17, "schedule": "cosine"}

    def setup(self, model, streams) -> None:
        self.visual = model.clip.visual
        bridge.check(self.visual, self.name)
        self.device = model.prompt_tokens.device
        self.experience_classes = streams.experience_classes
        width = bridge.projection_weight(self.visual).shape[1]
        self.olf = OLF(self.visual, min(self.config.rank, width), [len(c) for c in streams.experience_classes])
        self.record = bridge.PooledRecord()
        bridge.install(self.visual, self.olf, self.record, self.name)
        self.trained = 0
        self.lam = 0.0  # the code's t_lam
        self.gda = SharedCovarianceGDA()
        self.mu: Optional[torch.Tensor] = None  # [classes so far, in] unnormalised class means of pooled features
        self.covariances: List[torch.Tensor] = []

    def inference_extras(self) -> str:
        return "GDA over pre-projection features and class means (hybrid image/text prototypes)"

    def trainable_parameters(self, model) -> List[nn.Parameter]:
        t = min(self.trained, len(self.olf.heads) - 1)
        return [self.olf.W_task, self.olf.B, *self.olf.heads[t].parameters()]

    @torch.no_grad()
    def _pooled(self, model, images: torch.Tensor, batch: int = 128) -> torch.Tensor:
        with eval_mode(model):
            return torch.cat([bridge.pooled(self.visual, model.preprocess(images[s:s + batch]))
                              for s in range(0, len(images), batch)])

    @torch.no_grad()
    def _template_text(self, model, total: int) -> torch.Tensor:
        """Raw frozen text features of the training prompts of classes 0..total-1 (`init_accuracy`)."""
        with eval_mode(model):
            return model.clip.encode_text(model.prompt_tokens[:total])

    def before_training_exp(self, strategy, **kwargs):
        model, cfg, olf = strategy.model, self.config, self.olf
        t = self.trained
        self.record.clear()
        classes = self.experience_classes[t]
        known, total = classes[0], classes[-1] + 1
        images, labels = strategy.experience.tensors
        pooled = self._pooled(model, images)
        labels = labels.to(pooled.device)
        # update_stat
        self.covariances.append(task_covariance(pooled))
        own_W, own_b = self.gda.update(F.normalize(pooled, dim=-1), labels, known, total)
        means = torch.stack([pooled[labels == c].mean(dim=0) for c in range(known, total)])
        self.mu = means if self.mu is None else torch.cat([self.mu[:known], means])
        # init_accuracy: text prototypes of the seen classes, lambda searched while it is 0
        text = self._template_text(model, total)
        image_proto = self.mu @ olf.W0.T  # get_cls_center: mu @ visual_proj
        if self.lam == 0:
            current = F.linear(pooled, olf.W_fusion) if olf.learned else bridge.project(self.visual, pooled)
            self.lam = search_lambda(F.normalize(current, dim=-1), labels, image_proto, text, cfg.grid)
        self.prototypes = hybrid_prototypes(self.lam, image_proto, text)
        # start_train: the task's head from its own GDA weights; W_task trains (stage 1)
        with torch.no_grad():
            olf.heads[t].weight.copy_(own_W.T)
            olf.heads[t].bias.copy_(own_b)
        olf.stage2 = False
        self.known = known
        steps = strategy.train_epochs * len(strategy.dataloader)
        per_pass = -(-len(labels) // strategy.train_mb_size)  # steps of one pass over the experience's data
        self.head_steps = cfg.head_epochs * per_pass
        self.stage2_from = steps - min(cfg.stage2_epochs * per_pass, steps - 1) if t > 0 else steps + 1
        self.step = 0
        self._param_groups(strategy.optimizer)
        strategy._criterion = _no_cross_entropy  # BOFA's cross-entropy is over its prototypes (`loss`)

    def _param_groups(self, optimizer) -> None:
        """get_param_group: B and the head in their own groups at low_lr / low_weight_decay."""
        base = optimizer.param_groups[0]
        ratio = self.config.low_lr / base["lr"]
        low = [[self.olf.B], list(self.olf.heads[self.trained].parameters())]
        moved = {id(p) for group in low for p in group}
        base["params"] = [p for p in base["params"] if id(p) not in moved]
        for params in low:
            optimizer.add_param_group({"params": params, "lr": base["lr"] * ratio,
                                       "weight_decay": self.config.low_weight_decay, "lr_ratio": ratio})

    def before_training_iteration(self, strategy, **kwargs):
        if self.step == self.stage2_from:  # prepare_stage2
            olf = self.olf
            with torch.no_grad():
                olf.A.copy_(safe_subspace(self.covariances[:-1], olf.A.shape[1]))
                olf.B.copy_((olf.W_task - olf.W0) @ olf.A)
            olf.stage2 = True

    def before_forward(self, strategy, **kwargs):
        # after the engine set this step's rate on every group: B's and the head's are scaled
        groups = strategy.optimizer.param_groups
        for group in groups[1:]:
            if "lr_ratio" in group:
                group["lr"] = groups[0]["lr"] * group["lr_ratio"]

    def after_training_iteration(self, strategy, **kwargs):
        self.step += 1

    def loss(self, strategy) -> torch.Tensor:
        model, olf = strategy.model, self.olf
        scale = model.clip.logit_scale.detach()
        scale = scale if self.config.raw_logit_scale else scale.exp()
        logits = scale * model.last_image_features @ self.prototypes.T
        total = F.cross_entropy(logits, strategy.mb_y)
        if self.step < self.head_steps:
            low = olf.heads[self.trained](F.normalize(olf.last_pooled, dim=-1))
            total = total + F.cross_entropy(low, strategy.mb_y - self.known)
        return total

    def after_training_exp(self, strategy, **kwargs):
        olf, t = self.olf, self.trained
        with torch.no_grad():  # end_task
            olf.W_list[t].copy_(olf.W_task if t == 0 else olf.W0 + olf.B @ olf.A.T)
            olf.W_fusion.copy_(merged_projection(list(olf.W_list[:t + 1])))
        olf.stage2 = False
        olf.learned = t + 1
        olf.last_pooled = None
        self.trained += 1
        self.record.clear()

    @torch.no_grad()
    def scores(self, image_features: torch.Tensor, class_features: torch.Tensor) -> Optional[torch.Tensor]:
        if self.trained == 0 or len(image_features) == 0:
            return None
        seen = self.experience_classes[self.trained - 1][-1] + 1
        pooled = self.record.lookup(image_features, self.name).to(self.device)
        gda = self.gda.logits(F.normalize(pooled, dim=-1)).cpu()
        prototypes = hybrid_prototypes(self.lam, (self.mu @ self.olf.W0.T).cpu(), class_features[:seen])
        fused = self.config.stat * gda + (1 - self.config.stat) * image_features @ prototypes.T
        unseen = (fused.min(dim=1, keepdim=True).values - 1).expand(-1, class_features.shape[0] - seen)
        return torch.cat([fused, unseen], dim=1)

    def state_dict(self) -> Dict[str, Any]:
        return {"trained": self.trained, "lam": self.lam, "gda": self.gda.state_dict(),
                "mu": None if self.mu is None else self.mu.cpu(), "covariances": [c.cpu() for c in self.covariances]}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.trained, self.lam = state["trained"], state["lam"]
        self.gda.load_state_dict(state["gda"], self.device)
        self.mu = None if state["mu"] is None else state["mu"].to(self.device)
        self.covariances = [c.to(self.device) for c in state["covariances"]]
        self.olf.learned = self.trained
