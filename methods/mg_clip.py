"""MG-CLIP, "Mind the Gap" (Huang et al., ICCV 2025): LoRA on K/V, the modality-gap epoch rule, a visual agent."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from clipbench.errors import ClipbenchError

from .base import Method, MethodConfig, register_method
from .toolkit import check_template, same_optimizer

# The authors' recipe (linlany/MindtheGap at f40bfce), one citation per key; the harness's per-suite
# recipe modes read this.
REFERENCE_RECIPE: Dict[str, Any] = {
    "optimizer": "adam",  # main.py run_class_incremental: torch.optim.Adam(params, lr=cfg.lr)
    "lr": 1e-3,  # configs/class/cifar100_10-10.yaml: lr
    "weight_decay": 0.0,  # main.py: Adam without weight decay
    "batch_size": 128,  # configs/class/cifar100_10-10.yaml: train_batch_size (imagenet_r_20-20.yaml: 64)
    "epochs": 1,  # configs/class/cifar100_10-10.yaml: epochs, found by epoch.py's drift rule (ImageNet-R: 2)
    "schedule": "cosine",  # main.py: CosineAnnealingLR(T_max=epochs, eta_min=lr*0.01), stepped per epoch
    "ce_classes": "current",  # main.py intra_cls: tasks > 0 over the current task's classes
    "visual_agent": {"optimizer": "adam", "lr": 5e-4, "batch_size": 64, "epochs": 3,  # cifar100_10-10.yaml
                     "schedule": "cosine per step to lr*0.01"},  # main.py: CosineAnnealingLR(e_num*len(loader))
    "eval_batch_size": 128,  # configs/class/cifar100_10-10.yaml: batch_size
    "seed": 42,  # configs/class/cifar100_10-10.yaml
}


class KVLoRA(nn.Module):
    """An `nn.MultiheadAttention` with LoRA on its key and value projections (loraclip/loralib/layers.py,
    `MultiheadAttention(only_kv=True)` and `multi_head_attention_forward`):

        k = x W_k^T + b_k + s (x A_k^T) B_k^T,   v likewise,   q unchanged,   s = alpha / r

    computed as the wrapped module run on the packed weight [W_q; W_k + s B_k A_k; W_v + s B_v A_v]
    (the same product). A: xavier-uniform [r, d], B: zeros [d, r], as the code initialises them."""

    def __init__(self, base: nn.MultiheadAttention, rank: int, alpha: float):
        super().__init__()
        if base.in_proj_weight is None:
            raise ClipbenchError("mg_clip needs attention with a packed in_proj_weight (open_clip's nn.MultiheadAttention)")
        self.base, self.scaling = base, alpha / rank
        d, like = base.embed_dim, base.in_proj_weight
        self.k_A, self.v_A = (nn.Parameter(nn.init.xavier_uniform_(like.new_empty(rank, d))) for _ in range(2))
        self.k_B, self.v_B = (nn.Parameter(like.new_zeros(d, rank)) for _ in range(2))

    def weight(self) -> torch.Tensor:
        w = self.base.in_proj_weight
        d = self.base.embed_dim
        delta = torch.cat([w.new_zeros(d, w.shape[1]), self.scaling * self.k_B @ self.k_A, self.scaling * self.v_B @ self.v_A])
        return w + delta

    def forward(self, *args, **kwargs):
        return functional_call(self.base, {"in_proj_weight": self.weight()}, args, kwargs)


class LinearLoRA(nn.Module):
    """y = W x (+ b) + s (x A^T) B^T on a plain linear layer (the mini model's projections, which are all
    that may train there); A xavier-uniform [r, in], B zeros [out, r]."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base, self.scaling = base, alpha / rank
        like = base.weight
        self.A = nn.Parameter(nn.init.xavier_uniform_(like.new_empty(rank, base.in_features)))
        self.B = nn.Parameter(like.new_zeros(base.out_features, rank))

    @property
    def weight(self) -> torch.Tensor:  # code that inspects the layer (dtype, device) sees the original
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scaling * F.linear(F.linear(x, self.A), self.B)


def install_lora(model, allowed: set, rank: int, alpha: float) -> List[nn.Module]:
    """Wrap every self-attention of the encoders in `model.clip` whose packed weight may train with `KVLoRA`;
    where an encoder has none (the mini model: frozen towers), its trainable linear layers with `LinearLoRA`."""
    attention, linear = {"image": [], "text": []}, {"image": [], "text": []}
    for name, module in model.clip.named_modules():
        tower = "image" if name.startswith("visual.") else "text"
        if isinstance(module, nn.MultiheadAttention) and module.in_proj_weight is not None \
                and id(module.in_proj_weight) in allowed:
            attention[tower].append(name)
        elif type(module) is nn.Linear and id(module.weight) in allowed:
            linear[tower].append(name)
    wrapped = []
    for tower in ("image", "text"):
        for name in attention[tower] or linear[tower]:
            parent, _, attr = name.rpartition(".")
            owner = model.clip.get_submodule(parent) if parent else model.clip
            module = getattr(owner, attr)
            lora = KVLoRA(module, rank, alpha) if isinstance(module, nn.MultiheadAttention) else LinearLoRA(module, rank, alpha)
            setattr(owner, attr, lora)
            wrapped.append(lora)
    if not wrapped:
        raise ClipbenchError("mg_clip found no attention or linear layer that may train in this model")
    return wrapped


def negative_logit_mean(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """One batch's mean over samples of the mean logit of the classes that are not the label (epoch.py)."""
    one_hot = F.one_hot(labels, logits.shape[1]).to(logits.dtype)
    mask = 1 - one_hot
    return ((logits * mask).sum(dim=1) / mask.sum(dim=1)).mean()


def drifted(before: float, now: float, threshold: float = 0.1) -> bool:
    """epoch.py's gap rule: |before - now| / before > 0.1 (signed denominator, as the code divides)."""
    return abs(before - now) / before > threshold


def epochs_from_drift(epoch_index: int) -> int:
    """The epoch count epoch.py reports when the drift first exceeds the threshold after epoch
    `epoch_index` (0-based): that index, or 1 when it is 0."""
    return epoch_index if epoch_index > 0 else 1


def fuse(text_logits: torch.Tensor, agent_cos: torch.Tensor, text_weight: float = 1.0,
         agent_weight: float = 4.0) -> torch.Tensor:
    """main.py's inference: the model's test output is already softmax(text logits); the fusion applies
    softmax to it again (the double softmax) and to the agent's raw cosines, then
    (a * softmax(probs) + b * softmax(cos)) / (a + b), a = 1, b = 4."""
    probs = text_logits.softmax(dim=-1)
    return (text_weight * F.softmax(probs, dim=1) + agent_weight * F.softmax(agent_cos, dim=1)) / (text_weight + agent_weight)


def agent_cosine(features: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """VisionClassifier.forward: cos(x, w) per class, no scale, identity activation."""
    return F.normalize(features, dim=-1) @ F.normalize(weight, dim=-1).T


@dataclass
class MGCLIPConfig(MethodConfig):
    rank: int = 8  # lora_rank
    alpha: float = 1.0  # loralib MultiheadAttention lora_alpha: s = alpha / r
    probe_epochs: int = 10  # epoch.py's bound on the task-0 probe (0: no probe, train.epochs for every task)
    drift: float = 0.1  # the probe's relative drift of the mean negative logit
    agent_epochs: int = 3  # visual_agent_epochs
    agent_lr: float = 5e-4  # visual_agent_lr
    agent_batch_size: int = 64  # visual_agent_batch_size
    text_weight: float = 1.0  # a in (a softmax(probs) + b softmax(cos)) / (a + b)
    agent_weight: float = 4.0  # b
    template: str = "a good photo of a {c}."  # prompt_template ("": the protocol's templates)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rank < 1 or self.probe_epochs < 0 or self.agent_epochs < 0 or self.agent_batch_size < 1:
            raise ClipbenchError("methods.mg_clip: rank and agent_batch_size must be >= 1, probe_epochs and "
                                 "agent_epochs >= 0")
        if self.template:
            check_template(self.template)


class VisualAgent(nn.Module):
    """The visual agent's cosine classifier, one row per class of the stream (rows of unseen classes unused)."""

    def __init__(self, n_classes: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n_classes, dim))


@register_method
class MGCLIP(Method):
    """MG-CLIP (Huang et al., "Mind the Gap: Preserving and Compensating for the Modality Gap in CLIP-Based
    Continual Learning", ICCV 2025; linlany/MindtheGap at f40bfce: `main.py` `run_class_incremental`,
    `epoch.py`, `continual_clip/models.py` `ClassIncrementalCLIP.forward` and `VisionClassifier`,
    `loraclip/lora_clip.py` `load`, `loraclip/model.py` `build_LoRA_model`, `loraclip/loralib/layers.py`
    `MultiheadAttention` and `multi_head_attention_forward`, `configs/class/cifar100_10-10.yaml`).

    - LoRA r = 8 (alpha 1, s = 1/8) on the key and value projections of every self-attention of both
      encoders (`lora_mode "vision+only_kv+text"`); A and B both train, everything else is frozen
      (`KVLoRA`). Prompts "a good photo of a {c}.", logits = exp(logit_scale) cos; cross-entropy over
      every class on task 0 and over the current task's classes after (`intra_cls`): `ce_classes: current`.
    - Gap preservation (`epoch.py`): before task 0 trains, a probe trains task 0 from the initial LoRA
      for up to 10 epochs (the run's optimizer at its rate, cosine over the 10 epochs per epoch down to
      lr/100) and measures after each epoch, in eval mode over the task's training data in batches,
      the mean logit of the negative classes; at the first epoch i (0-based) where
      |m_0 - m_i| / m_0 > 0.1 the epoch count is i (1 when i = 0). The LoRA is then restored and every
      task trains that many epochs (at most `train.epochs`; stopped early through Avalanche's
      `stop_training`); no drift within the probe: `train.epochs`. Under a step limit
      (`train.iterations`) each probe epoch is that many steps.
    - Gap compensation (the visual agent): after each task, a cosine classifier over the adapted model's
      normalised image features; the new classes' rows start as their mean training features and train
      3 epochs (Adam lr 5e-4, batch 64, cosine per step down to lr/100) with cross-entropy over the
      current task's classes on the raw cosines (no temperature).
    - Inference (kept quirk): the model's test output is already softmax(text logits over the seen
      classes); it is softmaxed again and fused with softmax(agent cosines):
      (1 softmax(p) + 4 softmax(cos)) / 5. Classes not yet learned score -1.

    Reference recipe (`REFERENCE_RECIPE`): Adam lr 1e-3, batch 128, 1 epoch (CIFAR-100, chosen by the
    probe), cosine per epoch to lr/100, agent Adam 5e-4 x 3 epochs batch 64. `train_defaults` holds what
    the harness can express.

    Departures: the probe runs inside the run instead of as a separate script whose reported count is
    written into the config by hand; the main cosine schedule is the harness's (per step, to 0) rather than
    per epoch to lr/100 (with the reference's 1 epoch, the code's rate is constant); the evaluation
    image features are those of the harness's batches. On a model without open_clip attention that may
    train (the mini model: frozen towers), LoRA sits on each encoder's trainable projection instead.
    A protocol with task-incremental scoring is not supported (the fusion spans the seen classes).
    """

    name = "mg_clip"
    version = 1
    Config = MGCLIPConfig
    supports = ("class_incremental",)
    train_defaults = {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "batch_size": 128, "epochs": 1,
                      "ce_classes": "current", "schedule": "cosine"}

    def setup(self, model, streams) -> None:
        self.streams = streams
        self.model = model
        allowed = {id(p) for p in super().trainable_parameters(model)}
        self.loras = install_lora(model, allowed, self.config.rank, self.config.alpha)
        with torch.no_grad():
            dim = model.encode_tokens(model.prompt_tokens[:1]).shape[1]
        model.add_module("mg_clip_agent", VisualAgent(len(streams.class_names), dim))
        if self.config.template:
            tokens = model.tokenizer([self.config.template.format(c=c) for c in streams.class_names])
            model.prompt_tokens = tokens.to(model.prompt_tokens.device)
        self.epochs: Optional[int] = None  # found by the probe (None: train.epochs)
        self.probed = False
        self.n_seen = 0
        self.epoch = 0

    def prompt_templates(self, templates: List[str]) -> List[str]:
        return [self.config.template] if self.config.template else templates

    def trainable_parameters(self, model) -> List[nn.Parameter]:
        return [p for lora in self.loras for p in lora_parameters(lora)]

    def inference_extras(self) -> str:
        return "a cosine classifier on image features (one row per seen class), fused with the text softmax"

    # ---- training -------------------------------------------------------------------------------------
    def before_training_exp(self, strategy, **kwargs):
        self.epoch = 0
        if strategy.experience.current_experience == 0 and not self.probed and self.config.probe_epochs > 0:
            self.epochs = self.probe(strategy)
            self.probed = True

    def after_training_epoch(self, strategy, **kwargs):
        self.epoch += 1
        if self.epochs is not None and self.epoch >= self.epochs:
            strategy.stop_training()

    def _batches(self, n: int, batch_size: int, shuffle: bool, limit: Optional[int] = None) -> List[torch.Tensor]:
        order = torch.randperm(n) if shuffle else torch.arange(n)
        out = [order[i:i + batch_size] for i in range(0, n, batch_size)]
        if limit:
            while len(out) < limit:  # a step budget larger than one pass: further passes
                more = torch.randperm(n) if shuffle else torch.arange(n)
                out += [more[i:i + batch_size] for i in range(0, n, batch_size)]
            out = out[:limit]
        return out

    @torch.no_grad()
    def _negative_mean(self, model, images, labels, batch_size: int, device) -> float:
        was = {m: m.training for m in model.modules()}
        model.eval()
        try:
            means = [negative_logit_mean(model(images[i].to(device)), labels[i].to(device))
                     for i in self._batches(len(labels), batch_size, shuffle=False)]
        finally:
            for m, flag in was.items():
                m.training = flag
        return float(torch.stack(means).mean())

    def probe(self, strategy) -> Optional[int]:
        """epoch.py: the task-0 epoch count from the drift of the mean negative logit (see the class doc)."""
        model = strategy.model
        images, labels = strategy.experience.tensors
        device, batch = strategy.device, strategy.train_mb_size
        params = self.trainable_parameters(model)
        saved = [p.detach().clone() for p in params]
        before = self._negative_mean(model, images, labels, batch, device)
        opt = strategy.optimizer
        optimizer = same_optimizer(opt, params)
        lr, total = opt.defaults["lr"], self.config.probe_epochs
        found = None
        try:
            for i in range(total):
                rate = lr * 0.01 + (lr - lr * 0.01) * (1 + math.cos(math.pi * i / total)) / 2
                for group in optimizer.param_groups:
                    group["lr"] = rate
                for index in self._batches(len(labels), batch, shuffle=True, limit=getattr(strategy, "batches", None)):
                    x, y = images[index].to(device), labels[index].to(device)
                    loss = strategy._criterion(model(x), y)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                if drifted(before, self._negative_mean(model, images, labels, batch, device), self.config.drift):
                    found = epochs_from_drift(i)
                    break
        finally:
            with torch.no_grad():
                for p, v in zip(params, saved):
                    p.copy_(v)
            model.last_image_features = None
            model.invalidate_text_cache()
        return found

    def after_training_exp(self, strategy, **kwargs):
        exp = strategy.experience.current_experience
        classes = self.streams.experience_classes[exp]
        data = self.streams.train[exp]
        self.train_agent(strategy.model, data.images, data.labels, classes[0], classes[-1] + 1, strategy.device)
        self.n_seen = classes[-1] + 1

    def train_agent(self, model, images: torch.Tensor, labels: torch.Tensor, lo: int, hi: int, device) -> None:
        """main.py's visual-agent step for the classes [lo, hi): rows from class means, then training."""
        was = {m: m.training for m in model.modules()}
        model.eval()
        with torch.no_grad():
            feats = torch.cat([model.encode_images(images[i].to(device))
                               for i in self._batches(len(labels), 256, shuffle=False)])
        for m, flag in was.items():
            m.training = flag
        labels = labels.to(device)
        agent = model.mg_clip_agent.weight
        rows = torch.stack([feats[labels == c].mean(dim=0) for c in range(lo, hi)])
        rows = nn.Parameter(rows.clone())
        cfg = self.config
        optimizer = torch.optim.Adam([rows], lr=cfg.agent_lr)
        steps = cfg.agent_epochs * math.ceil(len(labels) / cfg.agent_batch_size)
        step = 0
        for _ in range(cfg.agent_epochs):
            for index in self._batches(len(labels), cfg.agent_batch_size, shuffle=True):
                # the old rows get no gradient from the current task's columns: training the new rows is the same
                loss = F.cross_entropy(agent_cosine(feats[index], rows), labels[index] - lo)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                step += 1
                eta = cfg.agent_lr * 0.01
                rate = eta + (cfg.agent_lr - eta) * (1 + math.cos(math.pi * step / steps)) / 2
                for group in optimizer.param_groups:
                    group["lr"] = rate
        with torch.no_grad():
            agent[lo:hi] = rows.detach()

    # ---- evaluation -----------------------------------------------------------------------------------
    @torch.no_grad()
    def scores(self, image_features: torch.Tensor, class_features: torch.Tensor) -> Optional[torch.Tensor]:
        if self.n_seen == 0:
            return None
        s = self.n_seen
        scale = float(self.model.clip.logit_scale.exp())
        f = image_features.float()
        agent = self.model.mg_clip_agent.weight[:s].detach().float().to(f.device)
        fused = fuse(scale * f @ class_features[:s].float().to(f.device).T, agent_cosine(f, agent),
                     self.config.text_weight, self.config.agent_weight)
        out = torch.full((len(f), len(class_features)), -1.0, dtype=fused.dtype, device=f.device)
        out[:, :s] = fused
        return out.cpu()

    def state_dict(self) -> Dict[str, Any]:
        return {"epochs": self.epochs, "probed": self.probed, "n_seen": self.n_seen}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.epochs, self.probed, self.n_seen = state["epochs"], state["probed"], state["n_seen"]


def lora_parameters(lora: nn.Module) -> Tuple[nn.Parameter, ...]:
    """The LoRA factors of one wrapped layer (what trains)."""
    return (lora.k_A, lora.k_B, lora.v_A, lora.v_B) if isinstance(lora, KVLoRA) else (lora.A, lora.B)
