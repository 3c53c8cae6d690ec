"""ENGINE: external knowledge injection for CLIP-based class-incremental learning (Zhou et al., ICCV 2025)."""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from clipbench.errors import ClipbenchError

from . import bridge, descriptions
from .base import Method, MethodConfig, register_method
from .gda import SharedCovarianceGDA
from .toolkit import eval_mode

REPO = "LAMDA-CL/ICCV25-ENGINE at 8803d66de74d6c24f9300b8f9ad93c13b6de98bf"

# The authors' recipe for CIFAR-100 B0 Inc10, each value with where it is read.
REFERENCE_RECIPE: Dict[str, Any] = {
    "train.optimizer": ("sgd", "exps/engine/cifar_0_10.json 'optimizer'; models/engine.py Learner.train: SGD momentum 0.9"),
    "train.momentum": (0.9, "models/engine.py Learner.train: optim.SGD(..., momentum=0.9)"),
    "train.lr": (0.05, "exps/engine/cifar_0_10.json 'init_lr'"),
    "train.weight_decay": (0.05, "exps/engine/cifar_0_10.json 'weight_decay'"),
    "train.batch_size": (64, "exps/engine/cifar_0_10.json 'batch_size'"),
    "train.epochs": (10, "exps/engine/cifar_0_10.json 'tuned_epoch'"),
    "train.schedule": ("cosine", "models/engine.py Learner.train: CosineAnnealingLR(T_max=tuned_epoch, eta_min=min_lr=0), per epoch"),
    "methods.engine.text_des": (2.0, "exps/engine/cifar_0_10.json 'text_des'"),
    "methods.engine.image_aug": (0.5, "exps/engine/cifar_0_10.json 'image_aug' (imagenetr_0_20.json: 2)"),
    "methods.engine.rerank": (0.5, "exps/engine/cifar_0_10.json 'rerank' (imagenetr_0_20.json: 0.8)"),
    "methods.engine.stat": (0.8, "exps/engine/cifar_0_10.json 'stat'"),
    "methods.engine.sample_num": (0, "exps/engine/cifar_0_10.json 'sample_num' (0: every old class per batch)"),
    "methods.engine.sample_noise": (0.25, "exps/engine/cifar_0_10.json 'sample_noise'"),
    "methods.engine.rerank_top": (5, "exps/engine/cifar_0_10.json 'rerank_top'"),
    "methods.engine.descriptions": ("chat/cifar224_des.json", "models/engine.py Learner._get_text_des: 'chat/'+dataset+'_des.json'"),
}

NEEDS_FILE = ("needs methods.engine.descriptions: the LLM-written description file, a JSON "
              "{class: {other class: [visual features]}} as the authors' chat/<dataset>_des.json")


class AdapterSum(nn.Module):
    """One Linear(d, d) per task; the output is the sum of the first `active` adapters' outputs
    (`Engine.Image_encode` / `Text_encode`: `torch.sum(torch.stack([A_i(x) for i]), dim=0)`). With no
    adapter active yet (before the first task) it is the identity: the plain CLIP model."""

    def __init__(self, dim: int, tasks: int):
        super().__init__()
        self.adapters = nn.ModuleList(nn.Linear(dim, dim) for _ in range(tasks))  # MLP_Adapter: Sequential(Linear)
        self.active = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.active == 0:
            return x
        return torch.sum(torch.stack([self.adapters[i](x) for i in range(self.active)]), dim=0)


class AdaptedImageHead(nn.Module):
    """The image tower's own projection, then the image adapters (`Engine.encode_image`)."""

    def __init__(self, visual: nn.Module, adapters: AdapterSum):
        super().__init__()
        self.adapters = adapters
        self._tower = (visual,)  # a tuple: not registered (the tower holds this head)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.adapters(bridge.project(self._tower[0], pooled))


def _adapted_encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """`Engine.encode_text`: the text adapters on the CLIP text feature."""
    out = self.engine_text_adapters(type(self).encode_text(self, text, normalize=False))
    return F.normalize(out, dim=-1) if normalize else out


def clip_loss(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """open_clip's ClipLoss as `utils/toolkit.py::ClipLoss` computes it on one device: row i of `image`
    pairs with row i of `text`, (CE(s I T^T, i) + CE(s T I^T, i)) / 2."""
    labels = torch.arange(len(image), device=image.device)
    return (F.cross_entropy(scale * image @ text.T, labels) + F.cross_entropy(scale * text @ image.T, labels)) / 2


def contrastive_loss(logits: torch.Tensor) -> torch.Tensor:
    """`utils/loss.py::contrastive_loss`: CE(logits, arange), no temperature."""
    return F.cross_entropy(logits, torch.arange(len(logits), device=logits.device))


class DescriptorTable:
    """Frozen CLIP text features of every "<class> with <descriptor>" string a run can use, and where
    each class's pool (`_get_text_des`) and each ordered pair's list (`des[A][B]`) sit in them."""

    def __init__(self, features: torch.Tensor, pair_items: torch.Tensor, pair_offsets: torch.Tensor,
                 pair_counts: torch.Tensor, pool_items: torch.Tensor, pool_offsets: torch.Tensor, pool_counts: torch.Tensor):
        self.features = features  # [M, D] raw (unnormalised) frozen text features
        self.pair_items, self.pair_offsets, self.pair_counts = pair_items, pair_offsets, pair_counts  # [C, C] offsets, counts
        self.pool_items, self.pool_offsets, self.pool_counts = pool_items, pool_offsets, pool_counts  # [C]

    @classmethod
    def build(cls, class_names: List[str], table, pools, encode) -> "DescriptorTable":
        strings: Dict[str, int] = {}

        def item(name: str, feature: str) -> int:  # the code's `classname + ' with ' + feature.lower()`
            return strings.setdefault(f"{name} with {feature.lower()}", len(strings))

        c = len(class_names)
        pair_items: List[int] = []
        pair_offsets, pair_counts = torch.zeros(c, c, dtype=torch.long), torch.zeros(c, c, dtype=torch.long)
        for a, name in enumerate(class_names):
            for b, other in enumerate(class_names):
                if a != b:
                    pair_offsets[a, b] = len(pair_items)
                    pair_items += [item(name, f) for f in table[name][other]]
                    pair_counts[a, b] = len(pair_items) - pair_offsets[a, b]
        pool_items: List[int] = []
        pool_offsets, pool_counts = torch.zeros(c, dtype=torch.long), torch.zeros(c, dtype=torch.long)
        for a, name in enumerate(class_names):
            pool_offsets[a] = len(pool_items)
            pool_items += [item(name, f) for f in pools[name]]
            pool_counts[a] = len(pool_items) - pool_offsets[a]
        return cls(encode(list(strings)), torch.tensor(pair_items, dtype=torch.long), pair_offsets, pair_counts,
                   torch.tensor(pool_items, dtype=torch.long), pool_offsets, pool_counts)

    def pool_draw(self, labels: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Raw features of one descriptor per label, drawn uniformly from its class's pool (`_get_batch_des`)."""
        labels = labels.cpu()
        count = self.pool_counts[labels]
        pick = self.pool_offsets[labels] + torch.minimum((u.cpu() * count).long(), count - 1)
        return self.features[self.pool_items[pick].to(self.features.device)]


def rerank_logits(outputs: torch.Tensor, image_raw: torch.Tensor, table: DescriptorTable, k: int,
                  u: torch.Tensor) -> torch.Tensor:
    """`Engine.rerank`: the top-k classes of `outputs` [N, C] re-scored with pairwise descriptors.

    For each top-k class A and each other top-k class B (in top-k order), one descriptor of
    "A against B" is drawn (`u` [draws, N, k, k-1] uniform numbers pick it: floor(u * count)); the
    raw frozen text features of A's k-1 descriptors are averaged and normalised, scored against the
    normalised frozen CLIP image feature `image_raw` [N, D], and averaged over the draws. The scores
    go to the top-k positions, every other class gets 0. Fewer than 2 classes: all 0 (no pair).
    """
    n, c = outputs.shape
    k = min(k, c)
    new = torch.zeros_like(outputs)
    if k < 2 or n == 0:
        return new
    top = outputs.topk(k, dim=1, largest=True, sorted=True).indices.cpu()  # [N, k]
    off_diagonal = ~torch.eye(k, dtype=torch.bool)
    main = top[:, :, None].expand(n, k, k)[:, off_diagonal].view(n, k, k - 1)
    second = top[:, None, :].expand(n, k, k)[:, off_diagonal].view(n, k, k - 1)
    count = table.pair_counts[main, second]
    pick = table.pair_offsets[main, second] + torch.minimum((u.cpu() * count).long(), count - 1)  # [draws, N, k, k-1]
    feats = table.features[table.pair_items[pick].to(table.features.device)].to(image_raw)  # [draws, N, k, k-1, D]
    texts = F.normalize(feats.mean(dim=3), dim=-1)  # [draws, N, k, D]
    logits = torch.einsum("nd,snkd->snk", image_raw, texts)
    total = logits[0]
    for s in range(1, len(logits)):
        total = total + logits[s]
    return new.scatter(1, top.to(new.device), (total / len(logits)).to(new))


@dataclass
class EngineConfig(MethodConfig):
    descriptions: str = ""  # the LLM-written descriptor file (a path, or bundled:<file>); "" = n/a
    text_des: float = 2.0  # weight of the description loss
    image_aug: float = 0.5  # weight of the noisy-image loss
    rerank: float = 0.5  # weight of the reranked scores against the adapted cosine
    stat: float = 0.8  # weight of GDA at inference
    sample_num: int = 0  # old classes drawn per batch for pseudo-features (0: every old class)
    sample_noise: float = 0.25  # std of the Gaussian around each stored prototype
    rerank_top: int = 5  # classes the reranking re-scores
    aug_noise: float = 0.25  # std of the noise added to the normalised input (hard-coded in the code)
    rerank_draws: int = 3  # descriptor draws averaged per reranking (hard-coded in the code)
    rerank_seed: int = 1993  # the reranking's draws at evaluation (the code: python random, seeded 1993 at import)
    raw_logit_scale: bool = True  # the code's quirk: scale by logit_scale itself (~4.6), not exp(logit_scale)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("stat", "rerank"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ClipbenchError(f"methods.engine.{name} must be within [0, 1], got {getattr(self, name)}")
        for name in ("text_des", "image_aug", "sample_noise", "aug_noise"):
            if getattr(self, name) < 0:
                raise ClipbenchError(f"methods.engine.{name} must be >= 0, got {getattr(self, name)}")
        if self.sample_num < 0 or self.rerank_top < 1 or self.rerank_draws < 1:
            raise ClipbenchError("methods.engine needs sample_num >= 0, rerank_top >= 1 and rerank_draws >= 1; got "
                                 f"{self.sample_num}, {self.rerank_top}, {self.rerank_draws}")


@register_method
class Engine(Method):
    """ENGINE (Zhou et al., "External Knowledge Injection for CLIP-Based Class-Incremental Learning",
    ICCV 2025). Code: LAMDA-CL/ICCV25-ENGINE at 8803d66: `models/engine.py` (`Learner.train`,
    `_get_text_des`, `_get_batch_des`, `_eval_cnn`), `utils/inc_net.py` class `Engine` (`update_task`,
    `update_stat`, `visual_forward_`, `Image_encode`, `Text_encode`, `rerank`), `convs/linears.py`
    (`MLP_Adapter`), `utils/loss.py` (`contrastive_loss`), `utils/toolkit.py` (`ClipLoss`).

    CLIP is frozen (its logit scale too). Each task adds an image adapter and a text adapter (Linear
    d -> d, default init); the adapted feature is the sum of every task's adapter applied to the CLIP
    feature, and only the newest pair trains. Per batch of images x with labels y, plus (tasks >= 1)
    one pseudo-feature per old class, p_c + N(0, sample_noise^2) around its stored prototype p_c (the
    class mean of raw CLIP image features), passed through the image adapters:

        L = ClipLoss(img, txt(y), s) + text_des * CE(txt(y) ref^T) + image_aug * CE(img[:B] aug^T)

    img: the normalised adapted image features (and pseudo-features); txt(y): the normalised adapted
    text of the training prompt of each label; s: the raw `logit_scale` (about 4.6 for a pretrained CLIP:
    the code's quirk, kept; `raw_logit_scale=false` uses exp(logit_scale)); ref: frozen CLIP text of
    "<class> with <descriptor>", one descriptor drawn per label from every list under the class in
    the description file; aug: frozen CLIP image features of the normalised input plus N(0, 0.25^2),
    clamped to [0, 1] (the code's quirk: the clamp is meant for pixels, it acts on normalised values).
    CE(M) is cross-entropy with target i for row i, without temperature. No cross-entropy over classes.

    Before each task, GDA statistics (`methods/gda.py`) are added from the task's normalised
    pre-projection image features (`methods/bridge.py`). At inference, over the classes seen so far:

        score = stat * normalise(GDA logits) + (1 - stat) * (rerank * R + (1 - rerank) * cos)

    cos: adapted image against adapted text (the mean over the protocol's templates); R: `rerank_logits`
    on the top `rerank_top` classes of cos, with the frozen CLIP image feature and pairwise
    descriptors. Classes not yet seen score below every seen one. Exemplar-free: it keeps the
    prototypes, the GDA statistics and the descriptors' frozen text features.

    The description file (`descriptions`, a path or `bundled:<file>`) is the user's: the authors ship
    theirs for their nine datasets (`chat/*_des.json`, written by qwen2.5-72b-instruct through
    `chat/chatdemo.py`); without it the method is not applicable (`not_applicable`). Its keys are the
    protocol's class names (see `methods/descriptions.py` for the matching); a protocol class or pair
    missing from it is an error before anything runs. The mini suite points to a file shipped with
    clipbench for Fashion-MNIST (`benchmark/assets/mini/engine_fashion_des.json`): written for clipbench
    by the AI assistant that ported this method, following chatdemo's prompt; not the authors' file.

    Departures: clipbench's model is any open_clip model (adapters are d x d for its embedding width
    d, 512 in ViT-B-16); the training prompt is the protocol's training template (the code: the first
    of its dataset's templates), and "<class>" is the protocol's class name; descriptors are drawn with
    torch's generator (seeded per experience by the runner), not python's `random`, and at evaluation
    from a generator reseeded with `rerank_seed` for every scored set, so a resumed run scores alike;
    the frozen text features of all descriptor strings are computed once, at setup; pseudo-features of
    old classes come in class order (the code shuffles them; ClipLoss pairs rows, so order is moot);
    prototypes are taken before training (the tower is frozen: the same means). The reference schedule
    is per epoch (CosineAnnealingLR); clipbench's `cosine` is per step. Before the first task (row 0)
    no adapter is active: the model is CLIP. The evaluated model (adapters included) also gives the
    held-out zero-shot and retrieval figures; GDA and the reranking act only on the target stream.
    """

    name = "engine"
    version = 1
    Config = EngineConfig
    train_defaults = {"optimizer": "sgd", "momentum": 0.9, "lr": 0.05, "weight_decay": 0.05, "batch_size": 64,
                      "epochs": 10, "schedule": "cosine"}

    @classmethod
    def not_applicable(cls, spec) -> Optional[str]:
        config = getattr(spec, "method_config", None) or {}
        return None if config.get("descriptions") else NEEDS_FILE

    # ---- setup -------------------------------------------------------------------------------------
    def setup(self, model, streams) -> None:
        if not self.config.descriptions:
            raise ClipbenchError(NEEDS_FILE)
        what = "methods.engine.descriptions"
        doc = descriptions.load(self.config.descriptions, what)
        self.class_names = list(streams.class_names)
        table = descriptions.for_classes(doc, self.class_names, what)
        pools = descriptions.pooled_by_class(table, doc)
        self.visual = model.clip.visual
        bridge.check(self.visual, self.name)
        self.device = model.prompt_tokens.device
        self.experience_classes = streams.experience_classes
        dim = bridge.projection_weight(self.visual).shape[0]
        tasks = streams.n_experiences
        self.image_adapters = AdapterSum(dim, tasks)
        self.record = bridge.PooledRecord()
        bridge.install(self.visual, AdaptedImageHead(self.visual, self.image_adapters), self.record, self.name)
        model.clip.add_module("engine_text_adapters", AdapterSum(dim, tasks))
        model.clip.encode_text = types.MethodType(_adapted_encode_text, model.clip)
        self.text_adapters = model.clip.engine_text_adapters
        self.loaded_input = model.model_input.__self__  # size, mean and std of the model's input
        self.table = DescriptorTable.build(self.class_names, table, pools, lambda s: self._frozen_text(model, s))
        self.trained = 0
        self.gda = SharedCovarianceGDA()
        self.prototypes: Optional[torch.Tensor] = None  # [classes so far, D] raw CLIP image feature means
        self._old_pool: Optional[torch.Tensor] = None

    @torch.no_grad()
    def _frozen_text(self, model, strings: List[str], batch: int = 256) -> torch.Tensor:
        """Raw frozen CLIP text features (no adapter is active at setup), in fixed batches."""
        model.to(self.device)
        assert self.text_adapters.active == 0
        with eval_mode(model):
            out = [model.clip.encode_text(model.tokenizer(strings[s:s + batch]).to(self.device))
                   for s in range(0, len(strings), batch)]
        return torch.cat(out) if out else torch.empty(0, 0)

    def inference_extras(self) -> str:
        n, d = self.table.features.shape if hasattr(self, "table") else (0, 0)
        return (f"GDA over pre-projection features, class prototypes, and the frozen text features of {n} "
                f"LLM descriptor prompts (reranking: frozen CLIP text and image features)")

    def trainable_parameters(self, model) -> List[nn.Parameter]:
        t = min(self.trained, len(self.image_adapters.adapters) - 1)
        return list(self.image_adapters.adapters[t].parameters()) + list(self.text_adapters.adapters[t].parameters())

    # ---- training ----------------------------------------------------------------------------------
    def before_training_exp(self, strategy, **kwargs):
        model = strategy.model
        t = self.trained
        self.record.clear()
        # update_task: fresh adapters for this task (nn.Linear's default init), older ones frozen
        self.image_adapters.adapters[t].reset_parameters()
        self.text_adapters.adapters[t].reset_parameters()
        self.image_adapters.active = self.text_adapters.active = t + 1
        model.invalidate_text_cache()
        classes = self.experience_classes[t]
        known, total = classes[0], classes[-1] + 1
        images, labels = strategy.experience.tensors
        pooled = self._pooled(model, images)
        labels = labels.to(pooled.device)
        self.gda.update(F.normalize(pooled, dim=-1), labels, known, total)  # update_stat
        with torch.no_grad():
            raw = bridge.project(self.visual, pooled)
        means = torch.stack([raw[labels == c].mean(dim=0) for c in range(known, total)])
        self.prototypes = means if self.prototypes is None else torch.cat([self.prototypes[:known], means])
        self.known = known
        strategy._criterion = _no_cross_entropy  # ENGINE's loss has no cross-entropy over classes

    def before_training_epoch(self, strategy, **kwargs):
        self._old_pool = torch.arange(self.known)  # the code's `old_class`, reset every epoch

    @torch.no_grad()
    def _pooled(self, model, images: torch.Tensor, batch: int = 128) -> torch.Tensor:
        with eval_mode(model):
            return torch.cat([bridge.pooled(self.visual, model.preprocess(images[s:s + batch]))
                              for s in range(0, len(images), batch)])

    def loss(self, strategy) -> torch.Tensor:
        model = strategy.model
        cfg = self.config
        img = model.last_image_features  # normalised adapted features of the batch
        labels = strategy.mb_y
        n_real = len(img)
        if self.known > 0:
            pool = self._old_pool
            if cfg.sample_num > 0:  # random.choices(old_class, k): the code draws from its previous draw
                pool = pool[torch.randint(len(pool), (cfg.sample_num,))]
                self._old_pool = pool
            pool = pool.to(labels.device)
            proto = self.prototypes[pool]
            pseudo = self.image_adapters(proto + torch.randn_like(proto) * cfg.sample_noise)
            img = torch.cat([img, F.normalize(pseudo, dim=-1)])
            labels = torch.cat([labels, pool])
        unique, inverse = labels.unique(return_inverse=True)
        text = model.encode_tokens(model.prompt_tokens[unique])[inverse]  # normalised adapted prompt features
        scale = model.clip.logit_scale.detach()
        total = clip_loss(img, text, scale if cfg.raw_logit_scale else scale.exp())
        if cfg.image_aug > 0:
            total = total + cfg.image_aug * contrastive_loss(img[:n_real] @ self._noisy_features(strategy.mb_x).T)
        if cfg.text_des > 0:
            ref = self.table.pool_draw(labels, torch.rand(len(labels))).to(text)
            total = total + cfg.text_des * contrastive_loss(text @ F.normalize(ref, dim=-1).T)
        return total

    @torch.no_grad()
    def _noisy_features(self, images: torch.Tensor) -> torch.Tensor:
        """Frozen CLIP features of the normalised input + N(0, aug_noise^2), clamped to [0, 1] (as the code)."""
        x = images
        if x.dtype == torch.uint8:
            m = self.loaded_input
            from clipbench.model_input import to_model_input

            x = to_model_input(x, m.image_size, m.mean, m.std)
        x = torch.clamp(x + torch.randn_like(x) * self.config.aug_noise, 0, 1)
        return F.normalize(bridge.project(self.visual, bridge.pooled(self.visual, x)), dim=-1)

    def after_training_exp(self, strategy, **kwargs):
        self.trained += 1
        self.record.clear()

    # ---- inference ---------------------------------------------------------------------------------
    @torch.no_grad()
    def scores(self, image_features: torch.Tensor, class_features: torch.Tensor) -> Optional[torch.Tensor]:
        if self.trained == 0 or len(image_features) == 0:
            return None
        cfg = self.config
        seen = self.experience_classes[self.trained - 1][-1] + 1
        pooled = self.record.lookup(image_features, self.name).to(self.device)
        gda = F.normalize(self.gda.logits(F.normalize(pooled, dim=-1)), dim=-1).cpu()
        raw = F.normalize(bridge.project(self.visual, pooled), dim=-1).cpu()
        cos = image_features @ class_features[:seen].T
        generator = torch.Generator().manual_seed(cfg.rerank_seed)
        k = min(cfg.rerank_top, seen)
        out = []
        for s in range(0, len(cos), 256):  # bounded memory: draws x rows x k x (k-1) x D features at once
            u = torch.rand((cfg.rerank_draws, len(cos[s:s + 256]), k, max(k - 1, 1)), generator=generator)
            out.append(rerank_logits(cos[s:s + 256], raw[s:s + 256], self.table, k, u))
        reranked = torch.cat(out)
        fused = cfg.stat * gda + (1 - cfg.stat) * (cfg.rerank * reranked + (1 - cfg.rerank) * cos)
        unseen = (fused.min(dim=1, keepdim=True).values - 1).expand(-1, class_features.shape[0] - seen)
        return torch.cat([fused, unseen], dim=1)

    # ---- resume ------------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        return {"trained": self.trained, "gda": self.gda.state_dict(),
                "prototypes": None if self.prototypes is None else self.prototypes.cpu()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.trained = state["trained"]
        self.gda.load_state_dict(state["gda"], self.device)
        self.prototypes = None if state["prototypes"] is None else state["prototypes"].to(self.device)
        self.image_adapters.active = self.text_adapters.active = self.trained


def _no_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return logits.new_zeros(())

