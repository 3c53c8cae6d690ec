"""MoE-Adapters (Yu et al., CVPR 2024): a mixture of bottleneck adapters beside every block's MLP.

Two registered variants, as the authors' code has two (JiazuoYu/MoE-Adapters4CL at 4572d97):

- `moe_adapters`: the MTIL code (`mtil/clip/model.py`, `mtil/src/models/finetune.py`, the scripts in
  `mtil/scripts/`): 22 experts, one router per task, the 2 most used experts of every layer frozen after
  each task, and the DDAS task selector at test (`methods/ddas.py`);
- `moe_adapters_cil`: the class-incremental code (`cil/clip/model.py`, `cil/continual_clip/models.py`,
  `cil/configs/class/*.yaml`): 2 experts, one router for every task, nothing frozen, no DDAS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Set

import torch
import torch.nn.functional as F
from torch import nn

from clipbench.errors import ClipbenchError

from .base import Method, MethodConfig, Route, register_method
from .blocks import Site, beside_mlp, find_sites
from .ddas import DDAS, EXTRACTORS


def noisy_top_k_gating(x: torch.Tensor, w_gate: torch.Tensor, w_noise: torch.Tensor, k: int, noisy: bool,
                       noise_epsilon: float = 1e-2) -> torch.Tensor:
    """Gates [N, E] of the code's `noisy_top_k_gating` (Shazeer et al., 2017):

        logits = x W_g (+ eps * (softplus(x W_n) + noise_epsilon), eps ~ N(0, 1), when noisy)
        gates  = softmax over the k largest logits of each row, 0 elsewhere.
    """
    clean = x @ w_gate
    logits = clean
    if noisy:
        logits = clean + torch.randn_like(clean) * (F.softplus(x @ w_noise) + noise_epsilon)
    top_logits, top_index = logits.topk(min(k + 1, logits.shape[1]), dim=1)  # k + 1 as the code (for its load)
    return torch.zeros_like(logits).scatter(1, top_index[:, :k], torch.softmax(top_logits[:, :k], dim=1))


class MixtureOfAdapters(nn.Module):
    """E bottleneck adapters (x -> up(dropout(relu(down x))) * scale, up-projection zero-initialised) mixed
    per sample by a router's top-k gates, computed on the sample's first token.

    `task` picks the router (None: no adapter at all, the block as it was: DDAS's zero-shot choice).
    In training mode the gates are noisy and `usage` counts, per expert, the samples routed to it.
    """

    def __init__(self, width: int, experts: int, routers: int, bottleneck: int, scale: float, dropout: float, top_k: int):
        super().__init__()
        self.down = nn.ModuleList(nn.Linear(width, bottleneck) for _ in range(experts))
        self.up = nn.ModuleList(nn.Linear(bottleneck, width) for _ in range(experts))
        for down, up in zip(self.down, self.up):  # the code's init_option "lora"
            nn.init.zeros_(down.bias)
            nn.init.zeros_(up.weight)
            nn.init.zeros_(up.bias)
        self.routers = nn.ParameterList(nn.Parameter(torch.zeros(width, experts)) for _ in range(routers))
        self.noise = nn.ParameterList(nn.Parameter(torch.zeros(width, experts)) for _ in range(routers))
        self.scale, self.dropout, self.top_k = scale, dropout, top_k
        self.register_buffer("usage", torch.zeros(experts), persistent=False)
        self.task: Optional[int] = None

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        # dropout follows this module's mode: the engine puts fully frozen experts in eval mode, the code does not
        h = F.dropout(F.relu(self.down[e](x)), p=self.dropout, training=self.training)
        return self.up[e](h) * self.scale

    def forward(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """x [N, L, D] -> sum_e gate_e(x[:, 0]) * adapter_e(x), each expert run only on its samples."""
        if self.task is None:
            return None
        gates = noisy_top_k_gating(x[:, 0], self.routers[self.task], self.noise[self.task], self.top_k, self.training)
        if self.training:
            self.usage += (gates > 0).sum(dim=0).to(self.usage)
        out = torch.zeros_like(x)
        for e in range(len(self.down)):
            rows = gates[:, e].nonzero().squeeze(1)
            if len(rows):
                out.index_add_(0, rows, self.expert(e, x[rows]) * gates[rows, e, None, None].to(x.dtype))
        return out

    def most_used(self, n: int) -> List[int]:
        """The n experts with the highest usage (the lower index first among equals)."""
        order = sorted(range(len(self.usage)), key=lambda e: (-float(self.usage[e]), e))
        return order[:n]


@dataclass
class MoEAdaptersCILConfig(MethodConfig):
    # part: which encoders get adapters (whole: both, the code's "AdapterDoubleEncoder"; image; text)
    experts: int = 2
    top_k: int = 2
    bottleneck: int = 64  # the code's ffn_num
    scale: float = 0.1  # adapter_scalar
    dropout: float = 0.1  # on the bottleneck activations

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.top_k <= self.experts:
            raise ClipbenchError(f"top_k must be between 1 and experts ({self.experts}), got {self.top_k}")


@dataclass
class MoEAdaptersConfig(MoEAdaptersCILConfig):
    experts: int = 22
    frozen_per_task: int = 2  # experts frozen per layer after each task (the most used)
    threshold: float = 0.0655  # DDAS: above this reconstruction loss, zero-shot
    ddas_extractor: str = "efficientnet_lite0"  # or alexnet (torchvision weights in the torch hub cache)
    ddas_iterations: int = 300  # per task's autoencoder (the code's chooser scripts)
    ddas_reference_iterations: int = 1000  # the reference autoencoder (the code's TinyImageNet chooser)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.ddas_extractor not in EXTRACTORS:
            raise ClipbenchError(f"ddas_extractor must be one of {', '.join(EXTRACTORS)}, got '{self.ddas_extractor}'")


@register_method
class MoEAdaptersCIL(Method):
    """MoE-Adapters, class-incremental variant (Yu et al., CVPR 2024; JiazuoYu/MoE-Adapters4CL at 4572d97,
    `cil/clip/model.py` `ResidualAttentionBlock`, `cil/continual_clip/models.py` `ClassIncremental.train`,
    `cil/configs/class/*.yaml`).

    The CLIP model is frozen. Beside the MLP of every transformer block of both encoders,
    x <- x + attn(ln_1 x); x <- x + mlp(ln_2 x) + sum_e g_e(x_0) A_e(x), where A_e(x) = 0.1 * up(dropout_0.1(
    relu(down x))) is a bottleneck adapter of width 64 (up-projection zero-initialised, down bias zero),
    x_0 is the block's first token (after attention) and g = noisy top-2 gating over 2 experts with one
    router for every task (router and noise weights zero-initialised). Only the adapters and the router
    train. Defaults as the `cil/` configs: AdamW lr 1e-3, weight decay 0, 1 epoch, cosine schedule with
    30 warm-up steps, no label smoothing, cross-entropy over the current task's classes only (the code
    shifts the targets and encodes only the current class names), batch 128 (CIFAR-100; 64 for TinyImageNet).

    Departures: gates are noise-free at evaluation (the code's blocks copy `is_train=True` when built, so
    its router noise stays on at test); the load-balancing loss the code computes is never added to its
    loss, so it is not computed here; the prompt is the protocol's template, not "a bad photo of a {}.";
    the code's extra training step (`range(total_iterations + 1)`) is not taken. Written for
    class-incremental protocols, it also runs on task-incremental ones (its one router serves every task).
    On a model whose towers have no open_clip transformer block (the mini model: a frozen, cached
    EfficientNet and MiniLM), the mixture sits on each tower's pooled output before its frozen projection
    (p <- p + sum_e g_e(p) A_e(p), p 1280-d for images and 384-d for texts); only the mixtures train.
    """

    name = "moe_adapters_cil"
    version = 1
    Config = MoEAdaptersCILConfig
    # Reference settings (cil/configs/class/cifar100_*.yaml, models.py).
    train_defaults = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.0, "batch_size": 128, "epochs": 1,
                      "ce_classes": "current", "schedule": "cosine", "warmup_steps": 30, "label_smoothing": 0.0}
    per_task_routers = False

    def setup(self, model, streams) -> None:
        self.streams = streams
        self.trained = 0  # experiences learned so far
        self.frozen: Dict[int, Set[int]] = {}  # site index -> frozen experts
        routers = streams.n_experiences if self.per_task_routers else 1
        towers = {"whole": ("image", "text"), "image": ("image",), "text": ("text",)}[self.config.part]
        self.sites: List[Site] = [s for s in find_sites(model.clip, self.name) if s.tower in towers]
        self.mixtures: List[MixtureOfAdapters] = []
        c = self.config
        for site in self.sites:
            mixture = MixtureOfAdapters(site.width, c.experts, routers, c.bottleneck, c.scale, c.dropout, c.top_k)
            beside_mlp(site, mixture)
            self.mixtures.append(mixture)

    def _router(self) -> int:
        return self.trained if self.per_task_routers else 0

    def trainable_parameters(self, model) -> List[nn.Parameter]:
        params: List[nn.Parameter] = []
        for i, mixture in enumerate(self.mixtures):
            params += [mixture.routers[self._router()], mixture.noise[self._router()]]
            for e in range(len(mixture.down)):
                if e not in self.frozen.get(i, ()):
                    params += list(mixture.down[e].parameters()) + list(mixture.up[e].parameters())
        return params

    def set_task(self, task: Optional[int]) -> None:
        for mixture in self.mixtures:
            mixture.task = task

    def before_training_exp(self, strategy, **kwargs):
        for mixture in self.mixtures:
            mixture.usage.zero_()
        self.set_task(self._router())

    def after_training_exp(self, strategy, **kwargs):
        self.trained += 1

    def state_dict(self) -> Dict[str, Any]:
        return {"trained": self.trained, "frozen": {i: sorted(f) for i, f in self.frozen.items()}}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.trained = state["trained"]
        self.frozen = {int(i): set(f) for i, f in state["frozen"].items()}
        if self.trained:
            self.set_task(0)  # one router, used at every test after the first task


@register_method
class MoEAdapters(MoEAdaptersCIL):
    """MoE-Adapters, MTIL variant with DDAS (Yu et al., CVPR 2024; JiazuoYu/MoE-Adapters4CL at 4572d97:
    `mtil/clip/model.py` `ResidualAttentionBlock`, `mtil/clip/adapter.py`, `mtil/src/models/finetune.py`,
    `mtil/src/models/evaluation.py`, `mtil/src/models/AutoEncoder.py`, `mtil/scripts/train/
    train_full_shot_router11_experts22_1000iters.sh`).

    The CLIP model is frozen. Beside the MLP of every transformer block of both encoders,
    x <- x + attn(ln_1 x); x <- x + mlp(ln_2 x) + sum_e g_e(x_0) A_e(x), A_e a bottleneck adapter (width 64,
    scale 0.1, dropout 0.1, up-projection zero-initialised), 22 experts, g = noisy top-2 gating on the
    block's first token with one router (gate and noise weights, zero-initialised) per task. While task t
    trains, its router and every expert not yet frozen train; after it, the 2 experts each layer's router
    chose most often during its training (counted per sample) are frozen for good. At test DDAS
    (`methods/ddas.py`) picks a task per test batch from per-task autoencoders; the batch then runs with
    that task's router in both encoders (its images and the class prompts scored against them), or, when
    no task fits, as the original CLIP (zero-shot). Evaluated at the protocol's batch and at batch size 1.

    While task t trains, the text encoder sees only task t's class prompts, as the code encodes only the
    current dataset's names (`finetune.py`: `texts = [template(x) for x in dataset.classnames]`): only they
    count towards the text experts' usage (and draw router noise); the other classes' logits are -1e4.

    Recipe (`train_defaults`, and the `mtil` / `mtil_fewshot` suites' `recipes:` with `recipe: reference`):
    the code's MTIL scripts: AdamW (weight decay 0), batch 64, 1000 iterations per task (few-shot: 500),
    cosine schedule with 100 warm-up steps, label smoothing 0.2 on every task, cross-entropy over the current
    task's classes, a learning rate per dataset (full shot: 5e-3 Aircraft, CIFAR100; 1e-3 Caltech101, DTD,
    Flowers, Food, OxfordPet, StanfordCars, SUN397; 1e-4 EuroSAT, MNIST; `train.per_experience`), and DDAS
    on test batches of 128 (`--batch-size-eval 128`: `eval.batch_size`). The scripts hold order I only;
    order II takes each dataset's rate.

    Departures: the load-balancing loss the code computes is never added to its loss, so not computed
    here; ties in expert usage freeze the lower index; DDAS's departures are listed in `methods/ddas.py`
    (chiefly an EfficientNet-Lite0 extractor in place of AlexNet). On the mini model (no open_clip
    transformer block: frozen, cached EfficientNet and MiniLM towers) the mixture sits on each tower's
    pooled output before its frozen projection (p <- p + sum_e g_e(p) A_e(p), p 1280-d for images and
    384-d for texts), with per-task routers, freezing and DDAS as above.
    """

    name = "moe_adapters"
    version = 2  # 2: while a task trains, only its own class prompts are encoded (1: every class seen so far)
    Config = MoEAdaptersConfig
    infers_task_per_batch = True
    train_defaults = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.0, "batch_size": 64, "ce_classes": "current",
                      "schedule": "cosine", "warmup_steps": 100, "label_smoothing": 0.2, "iterations": 1000}
    per_task_routers = True
    uses_reference = True  # DDAS's reference autoencoder (images only; without a set, threshold only)

    def setup(self, model, streams) -> None:
        super().setup(model, streams)
        self.classifier = model  # its `text_rows`: the prompts encoded while a task trains
        device = next(model.parameters()).device
        self.ddas = DDAS(self.config.ddas_extractor, _input_size(model.clip), device, self.config.threshold)
        if streams.reference is not None and len(streams.reference.images):
            self.ddas.learn_reference(streams.reference.images, self.capped(self.config.ddas_reference_iterations))

    def before_training_exp(self, strategy, **kwargs):
        super().before_training_exp(strategy, **kwargs)
        # the code encodes only the current dataset's class names while a task trains (finetune.py:
        # `texts = [template(x) for x in dataset.classnames]`), so only they count towards text-expert usage
        classes = self.streams.experience_classes[self.trained]
        self.classifier.text_rows = (classes[0], classes[-1] + 1)

    def after_training_exp(self, strategy, **kwargs):
        self.classifier.text_rows = None
        for i, mixture in enumerate(self.mixtures):
            self.frozen.setdefault(i, set()).update(mixture.most_used(self.config.frozen_per_task))
        self.ddas.learn_task(self.streams.train[self.trained].images, self.capped(self.config.ddas_iterations))
        self.set_task(None)
        super().after_training_exp(strategy, **kwargs)

    def route_batch(self, loaded, images: torch.Tensor) -> Route:
        return self._route(self.ddas.choose(images))

    def route_each(self, loaded, images: torch.Tensor) -> List[Route]:
        return [self._route(task) for task in self.ddas.choose_each(images)]

    def _route(self, task: Optional[int]) -> Route:
        return Route(key=task, enter=lambda: self.set_task(task), exit=lambda: self.set_task(None))

    def inference_extras(self) -> str:
        return (f"DDAS: {self.config.ddas_extractor} (ImageNet) features and one autoencoder per task "
                f"(plus a reference one), evaluated on every test batch")

    def state_dict(self) -> Dict[str, Any]:
        return {**super().state_dict(), "ddas": self.ddas.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.set_task(None)  # DDAS routes each test batch
        self.ddas.load_state_dict(state["ddas"])


def _input_size(clip: nn.Module):
    """The image size the CLIP model takes (open_clip's preprocess config)."""
    cfg = getattr(clip.visual, "preprocess_cfg", {}) or {}
    size = cfg.get("size", getattr(clip.visual, "image_size", (224, 224)))
    return (size, size) if isinstance(size, int) else tuple(size)
