"""CLAP4CLIP (Jha, Gong, Yao, NeurIPS 2024): variational adapters over visual-guided text features."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Normal, kl_divergence

from clipbench.errors import ClipbenchError
from clipbench.streams import LabelledImages

from .base import Method, MethodConfig, register_method
from .toolkit import encode_in_batches, same_optimizer

# The authors' recipe (srvCodes/clap4clip at 7ff95c2), one citation per key.
REFERENCE_RECIPE: Dict[str, Any] = {
    "optimizer": "sgd",  # classifier/continual_clip_variational.py build_optimizer: torch.optim.SGD (momentum 0)
    "lr": 1.6e-3,  # ClClipVariational.__init__: lr * train_batch / 20 = 1e-3 * 32 / 20 (main_incremental_submit.py --lr)
    "weight_decay": 0.0,  # main_incremental_submit.py --wd
    "batch_size": 32,  # README CIFAR command --train_batch 32 (test_batch = train_batch in main())
    "epochs": 5,  # README CIFAR command --epochs 5 (scripts/runner_clip_var_all_datasets.sh: 1)
    "schedule": "cosine with 30% linear warm-up from 0, down to lr*1e-3",  # build_optimizer, utils.build_cosine_scheduler
    "ce_classes": "seen",  # CLIP.forward: logits over every seen task's classes
    "finetune": {"epochs": 2, "lr": "lr/10", "schedule": "cosine, no warm-up"},  # README --finetune-epochs 2; finetuning()
    "forward_times": 20,  # README --forward-times 20
    "memory": "2000 in total for CIFAR-100 (fix_total), 20 per class otherwise",  # main(): memory_type
}


def sigma_transform(x: torch.Tensor) -> torch.Tensor:
    """The sigma adapter's output map (`Adapter.forward` with sigma=True): softplus(x) * 0.999 + 0.001."""
    return F.softplus(x) * 0.999 + 0.001


def task_embedding_init(template_features: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """`CLIP.init_new_heads`: the new mu adapter's weight E^T E / D with E the per-class mean over templates
    of the normalised template features [C, T, D] (every class seen so far), the new sigma adapter's weight
    V^T V / D with V their per-class variance over templates (unbiased, as torch's `var`; with a single
    template the population variance, 0, instead of NaN)."""
    mean = template_features.mean(dim=1)
    var = template_features.var(dim=1, correction=1 if template_features.shape[1] > 1 else 0)
    mu_w = mean.T @ mean
    sigma_w = var.T @ var
    return mu_w / mu_w.shape[0], sigma_w / sigma_w.shape[0]


def task_mask(sizes: Sequence[int]) -> torch.Tensor:
    """`CLIP.get_attention_mask` without task tokens: True (blocked) where a class query would attend to a
    class of another task; each task's classes attend to each other."""
    n = sum(sizes)
    mask = torch.ones(n, n, dtype=torch.bool)
    start = 0
    for size in sizes:
        mask[start:start + size, start:start + size] = False
        start += size
    return mask


def kl_term(mu: torch.Tensor, sigma: torch.Tensor, weight: float = 0.001) -> torch.Tensor:
    """The prior-matching loss with the standard-normal prior (no `--use-np-prior`):
    KL(N(mu, sigma) || N(0, 1)), mean over classes, sum over dimensions, times 0.001."""
    q = Normal(mu, sigma)
    p = Normal(torch.zeros_like(mu), torch.ones_like(mu))
    return kl_divergence(q, p).mean(0).sum() * weight


def lasp_loss(template_mean: torch.Tensor, samples: torch.Tensor, beta: float) -> torch.Tensor:
    """LASP (`--lasp --beta 15`): sims[c, c'] = mean over samples r and templates t of <e_{c,t}, r_{c'}>
    (the code stacks prior_text_features @ rsamples[r].T and averages over templates then samples; the mean of
    the dot products is the dot product with the template mean `template_mean` [C, D]); beta * CE(sims, c)."""
    s, k, d = samples.shape
    sims = (template_mean @ samples.reshape(s * k, d).T).view(-1, s, k).mean(dim=1)  # one product, [C, C]
    return F.cross_entropy(sims, torch.arange(len(sims), device=sims.device)) * beta


class VariationalHead(nn.Module):
    """The trained part: the VGA (one `nn.TransformerDecoder` layer, d_model = D, 1 head, GELU, its default
    dropout 0.1 and feed-forward 2048, batch first) and one (mu, sigma) pair of D x D linear adapters per task."""

    def __init__(self, dim: int, tasks: int):
        super().__init__()
        layer = nn.TransformerDecoderLayer(d_model=dim, nhead=1, activation="gelu", batch_first=True)
        self.vga = nn.TransformerDecoder(layer, 1)
        self.mu = nn.ModuleList(nn.Linear(dim, dim) for _ in range(tasks))
        self.sigma = nn.ModuleList(nn.Linear(dim, dim) for _ in range(tasks))

    def forward(self, images: torch.Tensor, text: torch.Tensor, sizes: Sequence[int], samples: int, scale: float,
                terms: Sequence[int] = (), template_mean: Optional[torch.Tensor] = None, beta: float = 15.0,
                kl_weight: float = 0.001) -> Tuple[torch.Tensor, torch.Tensor]:
        """`CLIP.forward` (use_vga, expandable_adapter, variational): logits [samples, N, C] for the normalised
        image features [N, D] of one batch against the seen classes' text [C, D] (tasks of `sizes`), and the
        KL and LASP terms of the tasks in `terms`.

        The VGA's queries are the text features, its memory the batch's image features (so a class's
        visual-guided feature depends on the whole batch, as in the code); each task's features
        t_i + vga_i go through that task's adapters; `samples` residuals r ~ N(mu, sigma) are added and the
        logits are scale * <image, t_i + vga_i + r> (the text is not renormalised)."""
        mask = task_mask(sizes).to(text.device)
        vga = self.vga(text[None], images[None], tgt_mask=mask)[0]
        logits, extra, start = [], text.new_zeros(()), 0
        for i, size in enumerate(sizes):
            feats = text[start:start + size] + vga[start:start + size]
            mu, sigma = self.mu[i](feats), sigma_transform(self.sigma[i](feats))
            residual = Normal(mu, sigma).rsample([samples])
            if i in terms:
                extra = extra + lasp_loss(template_mean[start:start + size], residual, beta) + kl_term(mu, sigma, kl_weight)
            texts = (feats[None] + residual).reshape(-1, feats.shape[1])  # [samples * size, D]: one product
            logits.append(scale * (images @ texts.T).view(len(images), samples, size).transpose(0, 1))
            start += size
        return torch.cat(logits, dim=-1), extra


def sample_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CE over every MC sample: logits [S, N, C] viewed as [S*N, C] against the labels repeated per sample."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.repeat(logits.shape[0]))


def first_per_class(images: torch.Tensor, labels: torch.Tensor, classes: Sequence[int], m: int) -> Dict[int, torch.Tensor]:
    """`RandomExemplarsSelector.select_indices`: despite its name, the first m samples of each class in the
    dataset's order (np.where(targets == c)[0][:m])."""
    return {c: images[torch.nonzero(labels == c).flatten()[:m]] for c in classes}


@dataclass
class CLAP4CLIPConfig(MethodConfig):
    forward_times: int = 20  # --forward-times: MC samples in training and at inference
    beta: float = 15.0  # --beta: weight of the LASP loss
    kl_weight: float = 0.001  # the prior-matching weight (hard-coded in CLIP.forward)
    memory_size: int = 2000  # exemplars in total (fix_total, CIFAR-100)
    memory_per_class: int = 0  # > 0: that many per class instead (fix_per_cls, the code's other datasets: 20)
    finetune_epochs: int = 2  # --finetune-epochs (class-balanced finetune on the memory, tasks > 0)
    finetune_lr_factor: float = 0.1  # finetuning(): lr / 10
    eval_batch: int = 32  # test_batch = train_batch: the VGA's memory at inference is one such batch

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.forward_times < 1 or self.eval_batch < 1 or self.memory_size < 0 or self.memory_per_class < 0 \
                or self.finetune_epochs < 0:
            raise ClipbenchError("methods.clap4clip: forward_times and eval_batch must be >= 1; memory_size, "
                                 "memory_per_class and finetune_epochs >= 0")


@register_method
class CLAP4CLIP(Method):
    """CLAP4CLIP (Jha, Gong, Yao, "CLAP4CLIP: Continual Learning with Probabilistic Finetuning for
    Vision-Language Models", NeurIPS 2024; srvCodes/clap4clip at 7ff95c2: `classifier/continual_clip_variational.py`
    `Adapter`, `CLIP.__init__`/`init_new_heads`/`prior_text_features`/`get_attention_mask`/`forward`,
    `ClClipVariational.fit`/`finetuning`/`expand_adapter`/`unfreeze_for_finetuning`/`build_optimizer`;
    `main_incremental_submit.py` `main`; `dataset/incremental_dataloader.py` `get_same_index`/`get_memory`/
    `get_memory_loader`; `dataset/exemplars_selection.py` `RandomExemplarsSelector`; the README's CIFAR command
    `--lasp --beta 15 --use-vga --expandable-adapter --finetuning --finetune-epochs 2 --epochs 5
    --forward-times 20 --train_batch 32 --exemplar-selector random --method er --variational`).

    Both CLIP encoders are frozen. A class's prior text feature t_c is the normalised mean of its normalised
    template features (the protocol's templates). `VariationalHead`: the VGA decoder (text queries, with
    attention among queries blocked across tasks; the batch's image features as memory) gives t_c + vga_c;
    task i's adapters give mu = W_mu x + b, sigma = softplus(W_s x + b) * 0.999 + 0.001; 20 residuals
    r ~ N(mu, sigma) per class; logits = exp(logit_scale) <image, t + vga + r> over every seen class.
    Loss = mean over samples of CE + for the current task 0.001 KL(q || N(0, I)) + 15 LASP (module
    functions above). At a task's start its new adapters are set to (E^T E)/D and (V^T V)/D
    (`task_embedding_init`, over every class seen so far); old adapters are frozen, the VGA trains.
    Exemplars: the training set of task t > 0 is its data plus the memory; after each task the memory keeps
    the first 2000 // (#seen classes) images of each class (the code's "random" selector takes the first
    ones); after each task t > 0 a class-balanced finetune on the memory trains every adapter (VGA frozen,
    eval mode) for 2 epochs at the run's optimizer and lr / 10 with the code's cosine (no warm-up, down to
    lr*1e-3), with the KL and LASP terms of every task. Inference: per test set, batches of 32 (the VGA's
    memory), logits averaged over 20 samples; classes not learned yet score below every learned one.
    The custom loss replaces the harness's cross-entropy: `loss` returns it minus the engine's CE (which
    has no gradient here: every encoder is frozen).

    Reference recipe (`REFERENCE_RECIPE`): SGD (no momentum) lr 1.6e-3, batch 32, 5 epochs, cosine with 30 %
    warm-up; `train_defaults` holds what the harness can express.

    Departures: no warm-up in `train_defaults` (a fraction of the steps is not expressible; set
    train.warmup_steps per suite); the code's per-dataset lr scaling when a task has fewer images than a
    batch is not applied; templates are the protocol's (the code: its dataset's list); the finetune's
    batches come from the run's batch size; with a single template the variance is the population one (0);
    the features of the finetune's memory images are computed once per finetune (the encoder is frozen, the
    same numbers). Task-incremental scoring is not supported.
    """

    name = "clap4clip"
    version = 1
    Config = CLAP4CLIPConfig
    supports = ("class_incremental",)
    train_defaults = {"optimizer": "sgd", "momentum": 0.0, "lr": 1.6e-3, "weight_decay": 0.0, "batch_size": 32,
                      "epochs": 5, "schedule": "cosine", "ce_classes": "seen"}

    def setup(self, model, streams) -> None:
        self.streams, self.model = streams, model
        self.task = 0  # experiences learned
        self.memory: Dict[int, torch.Tensor] = {}
        per_class = []
        with torch.no_grad():
            for c, name in enumerate(streams.class_names):
                templates = streams.class_templates[c]
                tokens = model.tokenizer([t.format(c=name) for t in templates]).to(model.prompt_tokens.device)
                per_class.append(model.encode_tokens(tokens).float())
        if len({len(f) for f in per_class}) != 1:
            raise ClipbenchError("clap4clip needs the same number of templates for every class of the protocol")
        self.template_features = torch.stack(per_class)  # [C, T, D], normalised per template
        self.text = F.normalize(self.template_features.mean(dim=1), dim=-1)  # prior_text_features
        dim = self.text.shape[1]
        model.add_module("clap4clip", VariationalHead(dim, streams.n_experiences))

    def _sizes(self, tasks: int) -> List[int]:
        return [len(self.streams.experience_classes[i]) for i in range(tasks)]

    def _seen(self, tasks: int) -> int:
        return self.streams.experience_classes[tasks - 1][-1] + 1

    def trainable_parameters(self, model) -> List[nn.Parameter]:
        head = model.clap4clip
        return list(head.vga.parameters()) + list(head.mu[self.task].parameters()) + list(head.sigma[self.task].parameters())

    def training_data(self, streams, exp):
        if not self.memory:
            return streams.train[exp]
        kept = [(imgs, torch.full((len(imgs),), c, dtype=torch.long)) for c, imgs in sorted(self.memory.items())]
        memory = LabelledImages(torch.cat([i for i, _ in kept]), torch.cat([y for _, y in kept]))
        return LabelledImages.concat([memory, streams.train[exp]])  # get_same_index: memory first

    def inference_extras(self) -> str:
        return f"the VGA decoder and per-task variational adapters, {self.config.forward_times} samples per test batch"

    def exemplar_count(self) -> int:
        return sum(len(v) for v in self.memory.values())

    # ---- training -------------------------------------------------------------------------------------
    def before_training_exp(self, strategy, **kwargs):
        head = strategy.model.clap4clip
        seen = self._seen(self.task + 1)
        mu_w, sigma_w = task_embedding_init(self.template_features[:seen])
        with torch.no_grad():
            head.mu[self.task].weight.copy_(mu_w)
            head.sigma[self.task].weight.copy_(sigma_w)

    def _loss(self, model, images: torch.Tensor, labels: torch.Tensor, terms: Sequence[int]) -> torch.Tensor:
        device = images.device
        tasks = self.task + 1
        cfg = self.config
        seen = self._seen(tasks)
        logits, extra = model.clap4clip(images.float(), self.text[:seen].to(device), self._sizes(tasks),
                                        cfg.forward_times, float(model.clip.logit_scale.exp()), terms,
                                        self.template_features[:seen].mean(dim=1).to(device), cfg.beta, cfg.kl_weight)
        return sample_cross_entropy(logits, labels) + extra

    def loss(self, strategy):
        own = self._loss(strategy.model, strategy.model.last_image_features.detach(), strategy.mb_y, [self.task])
        return own - strategy.loss.detach()  # replaces the engine's cross-entropy (no gradient: frozen encoders)

    def after_training_exp(self, strategy, **kwargs):
        exp = strategy.experience.current_experience
        self.update_memory(exp)
        if exp > 0 and self.config.finetune_epochs > 0:
            self.finetune(strategy)
        self.task += 1

    def update_memory(self, exp: int) -> None:
        """`get_memory` with the first-m selector: m = memory_size // #seen (or memory_per_class)."""
        seen = self.streams.experience_classes[exp][-1] + 1
        m = self.config.memory_per_class or self.config.memory_size // seen
        self.memory = {c: imgs[:m] for c, imgs in self.memory.items()}
        data = self.streams.train[exp]
        self.memory.update(first_per_class(data.images, data.labels, self.streams.experience_classes[exp], m))

    def finetune(self, strategy) -> None:
        """`ClClipVariational.finetuning`: every adapter trains on the memory, the VGA frozen (eval mode)."""
        model, device, cfg = strategy.model, strategy.device, self.config
        head = model.clap4clip
        tasks = self.task + 1
        params = [p for i in range(tasks) for m in (head.mu[i], head.sigma[i]) for p in m.parameters()]
        flags = {p: p.requires_grad for p in model.parameters()}
        modes = {m: m.training for m in model.modules()}
        images = torch.cat([v for _, v in sorted(self.memory.items())])
        labels = torch.cat([torch.full((len(v),), c, dtype=torch.long) for c, v in sorted(self.memory.items())])
        model.eval()
        feats = encode_in_batches(model, images, device).to(device)
        labels = labels.to(device)
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        for i in range(tasks):
            head.mu[i].train()
            head.sigma[i].train()
        optimizer = same_optimizer(strategy.optimizer, params, cfg.finetune_lr_factor)
        lr = optimizer.defaults["lr"]
        batch = strategy.train_mb_size
        steps = cfg.finetune_epochs * math.ceil(len(labels) / batch)
        step = 0
        try:
            for _ in range(cfg.finetune_epochs):
                order = torch.randperm(len(labels))
                for s in range(0, len(labels), batch):
                    rate = lr * 1e-3 + 0.5 * (lr - lr * 1e-3) * (1 + math.cos(math.pi * step / steps))
                    for group in optimizer.param_groups:
                        group["lr"] = rate
                    index = order[s:s + batch].to(device)
                    loss = self._loss(model, feats[index], labels[index], range(tasks))
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    step += 1
        finally:
            for p, flag in flags.items():
                p.requires_grad_(flag)
            for m, flag in modes.items():
                m.training = flag

    # ---- evaluation -----------------------------------------------------------------------------------
    @torch.no_grad()
    def scores(self, image_features: torch.Tensor, class_features: torch.Tensor) -> Optional[torch.Tensor]:
        if self.task == 0:
            return None
        model = self.model
        head = model.clap4clip
        device = next(head.parameters()).device
        modes = {m: m.training for m in head.modules()}
        head.eval()
        seen = self._seen(self.task)
        text, sizes, scale = self.text[:seen].to(device), self._sizes(self.task), float(model.clip.logit_scale.exp())
        out = []
        for s in range(0, len(image_features), self.config.eval_batch):
            images = image_features[s:s + self.config.eval_batch].float().to(device)
            logits, _ = head(images, text, sizes, self.config.forward_times, scale)
            out.append(logits.mean(dim=0).cpu())
        for m, flag in modes.items():
            m.training = flag
        learned = torch.cat(out) if out else torch.empty(0, seen)
        floor = (learned.min() - 1) if learned.numel() else torch.tensor(0.0)
        full = torch.full((len(image_features), len(class_features)), float(floor))
        full[:, :seen] = learned
        return full

    def state_dict(self) -> Dict[str, Any]:
        return {"task": self.task, "memory": dict(self.memory)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.task = state["task"]
        self.memory = dict(state["memory"])
