"""KeepLoRA: low-rank updates along the task gradient's residual directions (Luo et al., ICLR 2026)."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn
from torch.func import functional_call

from clipbench.errors import ClipbenchError

from .base import Method, MethodConfig, register_method
from .toolkit import eval_mode

TOWERS = ("image", "text")


@dataclass(frozen=True)
class Slot:
    """One adapted matrix: rows [start, stop) of the wrapped module's parameter `param` (out x in)."""

    key: str  # q, k, v, o (attention) or w (a plain linear layer)
    param: str
    start: int
    stop: int
    feeds: str  # what it multiplies: query, key, value, output (the attention output before the out projection), input


class LowRankUpdate(nn.Module):
    """delta W = scaling * (A B)^T (out x in), the code's `KeepLoRA.get_delta_weight`: A (in x r) is a
    buffer (set once per task, never trained), B (r x out) the only parameter."""

    def __init__(self, in_dim: int, out_dim: int, rank: int, scaling: float, like: torch.Tensor):
        super().__init__()
        self.scaling = scaling
        self.register_buffer("A", like.new_zeros(in_dim, rank))
        self.B = nn.Parameter(like.new_zeros(rank, out_dim))

    def delta(self) -> torch.Tensor:
        return self.scaling * (self.A @ self.B).T


class FeatureMean:
    """The code's `accumulate_features`: a running mean, batch by batch, of the batch's input features
    transposed (in x tokens of one batch); batches must have one size (the code drops the last one)."""

    def __init__(self) -> None:
        self.matrix: Optional[torch.Tensor] = None
        self.count = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1])
        n, m = self.count, x.shape[0]
        if self.matrix is None:
            self.matrix = x.new_zeros(x.shape[1], m)
        self.matrix = n / (n + m) * self.matrix + 1 / (n + m) * x.T
        self.count += m


class KeepLoRAModule(nn.Module):
    """A self-attention (q, k, v as row slices of its packed input projection, o its output projection)
    or a linear layer, with one `LowRankUpdate` per adapted matrix.

    Inactive (outside a task's training), it is the wrapped module itself, bit for bit. Active, the
    wrapped module runs on W + delta W for each packed parameter (`torch.func.functional_call`), which
    for q is exactly the code's `F.linear(x, W_q) + x @ A @ B * scaling`.
    """

    def __init__(self, base: nn.Module, slots: Tuple[Slot, ...], rank: int, scaling: float):
        super().__init__()
        self.base, self.slots = base, slots
        self.lora = nn.ModuleDict()
        for name in self.params():
            rows = [(s.start, s.stop) for s in slots if s.param == name]
            assert rows[0][0] == 0 and rows[-1][1] == base.get_parameter(name).shape[0], "slots must cover the rows"
        for s in slots:
            weight = base.get_parameter(s.param)
            self.lora[s.key] = LowRankUpdate(weight.shape[1], s.stop - s.start, rank, scaling, weight)
        self.active = False
        self.features: Optional[Dict[str, FeatureMean]] = None  # set while recording a task's features

    def params(self) -> List[str]:
        return list(dict.fromkeys(s.param for s in self.slots))

    def weight(self, slot: Slot) -> torch.Tensor:
        return self.base.get_parameter(slot.param)[slot.start:slot.stop]

    def deltas(self) -> Dict[str, torch.Tensor]:
        """Each packed parameter's delta, its slots' deltas stacked in row order."""
        return {name: torch.cat([self.lora[s.key].delta() for s in self.slots if s.param == name])
                for name in self.params()}

    @torch.no_grad()
    def fold(self, sign: float) -> None:
        """W += sign * delta W: -1 after A and B are set (the code's `subtract_keeplora_weights`), +1 to merge."""
        for name, delta in self.deltas().items():
            self.base.get_parameter(name).add_(sign * delta)

    @torch.no_grad()
    def reset(self) -> None:
        for update in self.lora.values():
            update.A.zero_()
            update.B.zero_()

    def forward(self, *args, **kwargs):
        if self.features is not None:
            self._record(args, kwargs)
        if not self.active:
            return self.base(*args, **kwargs)
        weights = {name: self.base.get_parameter(name) + delta for name, delta in self.deltas().items()}
        return functional_call(self.base, weights, args, kwargs)

    def _record(self, args, kwargs) -> None:
        x = args[0]
        given = lambda i, name: args[i] if len(args) > i and args[i] is not None else kwargs.get(name, x)  # noqa: E731
        inputs = {"input": x, "query": x, "key": given(1, "key"), "value": given(2, "value")}
        for s in self.slots:
            self.features[s.key].add(self._before_output(s, args, kwargs) if s.feeds == "output" else inputs[s.feeds])

    def _before_output(self, slot: Slot, args, kwargs) -> torch.Tensor:
        """The attention output that enters the out projection: the module run with that projection
        set to the identity (nn.MultiheadAttention applies it inside one functional call)."""
        weight = self.base.get_parameter(slot.param)
        swap = {slot.param: torch.eye(weight.shape[0], dtype=weight.dtype, device=weight.device)}
        bias = slot.param[: -len("weight")] + "bias"
        if any(n == bias for n, _ in self.base.named_parameters()):
            swap[bias] = torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)
        out = functional_call(self.base, swap, args, kwargs)
        return out[0] if isinstance(out, tuple) else out


def attention_slots(module: nn.Module) -> Optional[Tuple[Slot, ...]]:
    """q, k, v and o of a self-attention KeepLoRA knows, or None.

    open_clip's blocks use `nn.MultiheadAttention` (packed `in_proj_weight`, 3d x d, rows q | k | v) or
    open_clip's own `Attention` (same names); timm towers use timm's `Attention` (`qkv`, `proj`).
    """
    from open_clip.transformer import Attention as OpenClipAttention

    names = None
    if isinstance(module, nn.MultiheadAttention) and module.in_proj_weight is not None:
        names = ("in_proj_weight", "out_proj.weight")
    elif isinstance(module, OpenClipAttention):
        names = ("in_proj_weight", "out_proj.weight")
    else:
        try:
            from timm.layers import Attention as TimmAttention
        except ImportError:
            TimmAttention = ()
        if TimmAttention and isinstance(module, TimmAttention):
            names = ("qkv.weight", "proj.weight")
    if names is None:
        return None
    packed, out = names
    d = module.get_parameter(packed).shape[0] // 3
    out_rows = module.get_parameter(out).shape[0]
    return (Slot("q", packed, 0, d, "query"), Slot("k", packed, d, 2 * d, "key"),
            Slot("v", packed, 2 * d, 3 * d, "value"), Slot("o", out, 0, out_rows, "output"))


def weight_subspace_matrix(weight: torch.Tensor) -> torch.Tensor:
    """The matrix whose left singular vectors give a layer's pretrained principal subspace.

    The code takes the weight as stored (out x in) and uses its left singular vectors as directions of
    the layer's input space, which it can because every attention projection is square. For a
    non-square layer (the mini model's projections) the input space is the row space: W^T.
    """
    return weight if weight.shape[0] == weight.shape[1] else weight.T


def grow_subspace(basis: Optional[torch.Tensor], activation: torch.Tensor, threshold: float) -> Optional[torch.Tensor]:
    """The code's `PrinSubspace._update_prin_subspace` for one layer (columns of `basis` orthonormal).

    First time: the left singular vectors of `activation` whose cumulative energy ratio stays below
    `threshold` (at least one). Later: the energy already inside `basis` counts first; then residual
    directions are added, one at a time, while the accumulated ratio is below `threshold`; none
    needed leaves `basis` as it was; at most as many columns as rows are kept.
    """
    activation = activation.detach().float()
    if basis is None:
        U, S, _ = torch.linalg.svd(activation, full_matrices=False)
        ratio = S**2 / (S**2).sum()
        r = int((torch.cumsum(ratio, dim=0) < threshold).sum())
        return U[:, :max(r, 1)]
    total = (torch.linalg.svdvals(activation) ** 2).sum()
    residual = activation - (basis @ basis.T) @ activation
    U, S, _ = torch.linalg.svd(residual, full_matrices=False)
    ratio = S**2 / total
    accumulated = (total - (S**2).sum()) / total
    r = 0
    for value in ratio:
        if accumulated >= threshold:
            break
        accumulated = accumulated + value
        r += 1
    if r == 0:
        return basis
    grown = torch.hstack((basis, U[:, :r]))
    return grown[:, :grown.shape[0]]


def down_projection(grad_t: torch.Tensor, basis: Optional[torch.Tensor], rank: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """A and the initial B from a layer's mean task gradient, transposed (in x out): the code's
    `in_proj_weight_process`. The gradient loses its component in the protected subspace
    (G - U U^T G), then a randomized SVD (q = 4r, 4 power iterations) gives A = U_r, B = S_r V_r^T."""
    grad_t = grad_t.float()
    if basis is not None:
        grad_t = grad_t - (basis @ basis.T) @ grad_t
    U, S, V = torch.svd_lowrank(grad_t, q=min(4 * rank, *grad_t.shape), niter=4)
    return U[:, :rank], V.T[:rank, :] * S[:rank].unsqueeze(1)


def full_batches(n: int, size: int) -> List[torch.Tensor]:
    """Shuffled batches without the last partial one (the code's `accum_loader`, drop_last); all `n`
    as one batch when they do not fill one (the code would have no batch at all)."""
    order = torch.randperm(n)
    if n < size:
        return [order]
    return [order[i * size:(i + 1) * size] for i in range(n // size)]


def find_targets(model, allowed: set) -> List[Tuple[str, nn.Module, Tuple[Slot, ...]]]:
    """(name under `model.clip`, module, slots) of what KeepLoRA adapts in each encoder that may train.

    An encoder's self-attention layers if it has any KeepLoRA knows; otherwise, when everything that may
    train there is a linear layer (the mini model's projections above its frozen towers), those layers.
    """
    found: Dict[str, List] = {tower: [] for tower in TOWERS}
    linear: Dict[str, List] = {tower: [] for tower in TOWERS}
    for name, module in model.clip.named_modules():
        tower = "image" if name.startswith("visual.") else "text"
        slots = attention_slots(module)
        if slots is not None and id(module.get_parameter(slots[0].param)) in allowed:
            found[tower].append((name, module, slots))
        elif type(module) is nn.Linear and id(module.weight) in allowed:
            linear[tower].append((name, module, (Slot("w", "weight", 0, module.out_features, "input"),)))
    targets = []
    for tower in TOWERS:
        prefix_params = [(n, p) for n, p in model.clip.named_parameters()
                         if id(p) in allowed and (n.startswith("visual.") == (tower == "image"))]
        if not prefix_params or found[tower]:
            targets += found[tower]
            continue
        covered = {id(p) for _, m, _ in linear[tower] for p in m.parameters()}
        loose = [n for n, p in prefix_params if id(p) not in covered]
        if loose:
            raise ClipbenchError(f"keeplora adapts open_clip's and timm's self-attention; the {tower} encoder of this "
                                 f"model has none it knows and trains more than linear layers ({loose[0]}): leave it "
                                 f"out with --set methods.keeplora.part={'text' if tower == 'image' else 'image'}")
        targets += linear[tower]
    if not targets:
        raise ClipbenchError("keeplora found nothing to adapt in the encoders that may train")
    return targets


@dataclass
class KeepLoRAConfig(MethodConfig):
    rank: int = 16  # v_adapter_dim, t_adapter_dim
    alpha: float = 1.0  # lora_alpha: delta W = (alpha / rank) * (A B)^T
    image_weight_threshold: float = 0.85  # v_prin_subspace_threshold2: pretrained weights, before task 1
    text_weight_threshold: float = 0.2  # t_prin_subspace_threshold2
    image_feature_threshold: float = 0.99  # v_prin_subspace_threshold: each task's features, after it
    text_feature_threshold: float = 0.99  # t_prin_subspace_threshold

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rank < 1:
            raise ClipbenchError(f"methods.keeplora.rank must be a positive integer, got {self.rank}")
        for name in ("image_weight_threshold", "text_weight_threshold", "image_feature_threshold",
                     "text_feature_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ClipbenchError(f"methods.keeplora.{name} must be within [0, 1], got {getattr(self, name)}")


@register_method
class KeepLoRA(Method):
    """KeepLoRA (Luo et al., ICLR 2026; code: MaolinLuo/KeepLoRA at a17f9c2, `MTIL/`: `trainer/trainer.py`,
    `trainer/framework4MTIL.py`, `model/peft_modules.py`, `model/prin_subspace.py`,
    `model/prin_subspace_helper.py`, `model/customClip.py`, `configs/keeplora_order1.yaml`).

    Per task, for each adapted matrix W (out x in) with protected subspace U (orthonormal, input space):
    1. G = the mean over full batches of the task's data of d CE / d W, the model without updates;
    2. G^T loses its protected part, G^T - U U^T G^T; a randomized SVD gives A = U_r (frozen for the
       task) and B = S_r V_r^T (rank r = 16);
    3. W <- W - s (A B)^T with s = alpha / r = 1/16, so the model is unchanged; only B trains, the
       model running on W + s (A B)^T;
    4. after training W <- W + s (A B)^T (merged; A, B reset), then the task's inputs to each matrix
       (a running mean over full batches of the batch's features, transposed, as the code keeps it; the
       text side: the task's class prompts) grow U by `grow_subspace` with threshold 0.99.
    Before the first task U holds the pretrained weights' principal subspace (threshold 0.85 in the
    image encoder, 0.2 in the text encoder). Step 2 makes A orthogonal to U, so the inputs of earlier
    tasks (and the weights' principal directions) pass through the updates unchanged.

    What is adapted: q, k, v, o of every self-attention of each encoder `part` names, in every open_clip
    transformer (open_clip's `nn.MultiheadAttention`: q, k, v are the row slices [0:d], [d:2d], [2d:3d] of
    its packed `in_proj_weight` and o its `out_proj.weight`; gradients, deltas and merges are taken on
    those slices; open_clip's own `Attention` and timm's `Attention` (`qkv`, `proj`) likewise). Other
    attention modules (e.g. EVA's, an attentional pooler's cross-attention) are not adapted. On the mini
    model, whose towers are frozen, each encoder's trainable part is one linear projection (image
    1280 -> 256, text 384 -> 256): KeepLoRA adapts those two matrices with the same steps; their inputs
    are the frozen towers' pooled features (text: one vector per class prompt).

    Departures: the code's pretrained subspace is the left singular vectors of W as stored (out x in),
    used as input-space directions (possible because attention projections are square); for the mini
    model's non-square projections the input space is taken, W^T. The code's OneCycleLR schedule is
    not available (OneCycleLR: 30 % warm-up from lr/25, cosine down to lr/25e4, beta1 cycled 0.95 -> 0.85
    -> 0.95; none of constant|step|cosine expresses it, cosine without warm-up is the nearest); the gradient and feature passes run in eval mode (no
    difference for open_clip ViTs; it keeps the mini model's frozen BatchNorm statistics), and a task
    with fewer samples than one batch uses them all as one batch (the code would have no batch). The
    code's per-task epochs (`epoch_list`: SUN397 5 in order I; order II 5, 2, 5, 5, 5, 5, then 10) are the
    `mtil` suite's recipe for it (`train.per_experience`); its fp16 autocast (`prec: amp`) is not (fp32).
    Step 1's gradient is always the plain cross-entropy's, as the code's `F.cross_entropy`, even under a
    recipe with label smoothing (the `shared` mode on `mtil`); training then uses the run's loss.
    Weights change only by merging: a model with A B = 0 outside training is the plain model.

    As in the code, when a matrix's residual gradient has fewer than r directions (few distinct inputs:
    a task's handful of class prompts in the text encoder; the mini text projection, whose input is one
    vector per prompt), the randomized SVD fills A's remaining columns with arbitrary unit vectors, not
    orthogonal to the protected subspace; their rows of B start at zero but train.
    """

    name = "keeplora"
    version = 2  # 2: A and B from the plain cross-entropy's gradient (1 used the run's, smoothed where the recipe smooths)
    Config = KeepLoRAConfig
    # configs/keeplora_order1.yaml: AdamW, lr 1e-3, wd 0.01, batch 64, 10 epochs; the model's logits cover
    # the current task's class prompts, hence cross-entropy over the current experience's classes.
    train_defaults = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.01, "batch_size": 64, "epochs": 10,
                      "ce_classes": "current", "schedule": "cosine"}

    def setup(self, model, streams) -> None:
        allowed = {id(p) for p in super().trainable_parameters(model)}
        scaling = self.config.alpha / self.config.rank
        for name, module, slots in find_targets(model, allowed):
            narrow = min(min(module.get_parameter(s.param)[s.start:s.stop].shape) for s in slots)
            if narrow < self.config.rank:
                raise ClipbenchError(f"methods.keeplora.rank {self.config.rank} exceeds the width {narrow} of "
                                     f"{name}; set a smaller rank")
            parent, _, attr = name.rpartition(".")
            setattr(model.clip.get_submodule(parent) if parent else model.clip, attr,
                    KeepLoRAModule(module, slots, self.config.rank, scaling))
        # protected subspaces (input space of each matrix), keyed "<module name>:<slot>"
        self.bases: Dict[str, torch.Tensor] = {}
        for key, module, slot in self.slots(model):
            threshold = self._threshold(key, "weight")
            if threshold > 1e-8:
                self.bases[key] = grow_subspace(None, weight_subspace_matrix(module.weight(slot)), threshold)

    def inference_extras(self) -> str:
        return ""  # the updates are merged into the weights after every task

    @staticmethod
    def slots(model) -> Iterator[Tuple[str, KeepLoRAModule, Slot]]:
        for name, module in model.named_modules():
            if isinstance(module, KeepLoRAModule):
                for slot in module.slots:
                    yield f"{name}:{slot.key}", module, slot

    @staticmethod
    def wrappers(model) -> List[KeepLoRAModule]:
        return [m for m in model.modules() if isinstance(m, KeepLoRAModule)]

    def _threshold(self, key: str, kind: str) -> float:
        tower = "image" if key.startswith("clip.visual.") else "text"
        return getattr(self.config, f"{tower}_{kind}_threshold")

    def trainable_parameters(self, model):
        return [u.B for m in self.wrappers(model) for u in m.lora.values()]

    def before_training_exp(self, strategy, **kwargs):
        model = strategy.model
        grads = self._mean_gradients(strategy)
        with torch.no_grad():
            for key, module, slot in self.slots(model):
                grad_t = grads[id(module.base.get_parameter(slot.param))][slot.start:slot.stop].T
                A, B = down_projection(grad_t, self.bases.get(key), self.config.rank)
                module.lora[slot.key].A.copy_(A)
                module.lora[slot.key].B.copy_(B)
        for module in self.wrappers(model):
            module.fold(-1.0)
            module.active = True

    def after_training_exp(self, strategy, **kwargs):
        model = strategy.model
        for module in self.wrappers(model):
            module.fold(1.0)
            module.reset()
            module.active = False
        for key, matrix in self._task_features(strategy).items():
            threshold = self._threshold(key, "feature")
            if threshold > 1e-8:
                self.bases[key] = grow_subspace(self.bases.get(key), matrix, threshold)
        model.invalidate_text_cache()

    def _mean_gradients(self, strategy) -> Dict[int, torch.Tensor]:
        """d CE / d W for every adapted parameter, averaged over full batches (the code's `estimate_gradient`), with
        plain cross-entropy (`F.cross_entropy` there) even where the run trains with label smoothing."""
        model = strategy.model
        weights = list({id(p): p for m in self.wrappers(model) for p in map(m.base.get_parameter, m.params())}.values())
        images, labels = strategy.experience.tensors
        batches = full_batches(len(labels), strategy.train_mb_size)
        plain = getattr(strategy, "plain_criterion", strategy._criterion)
        sums = [torch.zeros_like(w) for w in weights]
        with eval_mode(model), _requiring_grad(weights):
            for index in batches:
                x, y = images[index].to(strategy.device), labels[index].to(strategy.device)
                loss = plain(model(x), y)  # the code's F.cross_entropy: no label smoothing, whatever the recipe
                for total, g in zip(sums, torch.autograd.grad(loss, weights, allow_unused=True)):
                    if g is not None:
                        total += g
        model.last_image_features = None
        return {id(w): total / len(batches) for w, total in zip(weights, sums)}

    @torch.no_grad()
    def _task_features(self, strategy) -> Dict[str, torch.Tensor]:
        """Each matrix's inputs on this task (the code's `accumulate_features_for_task`): images in full
        batches through the image encoder, the task's class prompts once through the text encoder."""
        model = strategy.model
        wrappers = self.wrappers(model)
        towers = {"image" if k.startswith("clip.visual.") else "text" for k, _, _ in self.slots(model)}
        images, labels = strategy.experience.tensors
        for module in wrappers:
            module.features = {s.key: FeatureMean() for s in module.slots}
        try:
            with eval_mode(model):
                if "image" in towers:
                    for index in full_batches(len(labels), strategy.train_mb_size):
                        model.encode_images(images[index].to(strategy.device))
                if "text" in towers:
                    model.encode_tokens(model.prompt_tokens[labels.unique().to(model.prompt_tokens.device)])
            return {key: module.features[slot.key].matrix for key, module, slot in self.slots(model)
                    if module.features[slot.key].matrix is not None}
        finally:
            for module in wrappers:
                module.features = None

    def state_dict(self) -> Dict[str, Any]:
        return {"bases": self.bases}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.bases = state["bases"]



@contextmanager
def _requiring_grad(params: List[nn.Parameter]) -> Iterator[None]:
    """`requires_grad` on for the block, restored after."""
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
