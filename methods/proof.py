"""PROOF (Zhou et al., TPAMI 2025): per-task projections, a fusion attention layer over image, class texts,
visual prototypes and context prompts, and herding exemplars, on a frozen CLIP."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from clipbench.errors import ClipbenchError
from clipbench.evaluate import class_prompts
from clipbench.streams import LabelledImages

from .base import Method, MethodConfig, register_method
from .icarl import herding
from .toolkit import raw_image_features

REPO = "zhoudw-zdw/PROOF at 0bb20520a726ebf3ca8b0c32168d5d4c1f59f3b7"

# The authors' recipe for CIFAR-100 B0 Inc10, each value with where it is read (the per-suite recipe modes
# read this; `mini` and `tiny` pin one recipe for every method).
REFERENCE_RECIPE: Dict[str, Tuple[Any, str]] = {
    "train.optimizer": ("sgd", "exps/cifar.json 'optimizer'; models/proof.py Learner._train_proj: optim.SGD(..., momentum=0.9)"),
    "train.momentum": (0.9, "models/proof.py Learner._train_proj: optim.SGD(..., momentum=0.9)"),
    "train.lr": (1e-3, "exps/cifar.json 'init_lr'"),
    "train.weight_decay": (0.05, "exps/cifar.json 'weight_decay'"),
    "train.batch_size": (64, "exps/cifar.json 'batch_size'"),
    "train.epochs": (5, "exps/cifar.json 'tuned_epoch'"),
    "train.schedule": ("cosine", "models/proof.py _train_proj: CosineAnnealingLR(T_max=tuned_epoch, eta_min=min_lr=0), "
                                 "stepped per epoch (clipbench's cosine steps per iteration)"),
    "methods.proof.memory_size": (2000, "exps/cifar.json 'memory_size', 'fixed_memory': false (memory_size // seen classes each)"),
    "methods.proof.prompts_per_task": (3, "utils/inc_net.py Proof_Net: context_prompt_length_per_task default 3"),
    "methods.proof.test_batch": (64, "models/proof.py incremental_train: test_loader batch_size=self.batch_size"),
    "seed": (1993, "exps/cifar.json 'seed' (the class order's shuffle)"),
    "model": ("open_clip ViT-B-16 laion400m_e32", "exps/cifar.json 'convnet_type': 'clip'; utils/inc_net.py get_convnet"),
}


class FusionAttention(nn.Module):
    """`convs/projections.py` `MultiHeadAttention` with one head (d_model = d_k = d_v = D, dropout 0.1):

        out = LayerNorm(dropout(fc(dropout(softmax(q k^T / sqrt(D))) v)) + x),  q, k, v = x W_q, x W_k, x W_v,

    W_q, W_k, W_v bias-free and drawn from N(0, 2 / (D + D)), fc's weight Xavier-normal."""

    def __init__(self, dim: int, dropout: float = 0.1):
        super().__init__()
        self.w_qs, self.w_ks, self.w_vs = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        for layer in (self.w_qs, self.w_ks, self.w_vs):
            nn.init.normal_(layer.weight, mean=0.0, std=math.sqrt(2.0 / (dim + dim)))
        self.fc = nn.Linear(dim, dim)
        nn.init.xavier_normal_(self.fc.weight)
        self.layer_norm = nn.LayerNorm(dim)
        self.temperature = dim ** 0.5
        self.attn_dropout, self.dropout = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn = torch.softmax(torch.bmm(self.w_qs(x), self.w_ks(x).transpose(1, 2)) / self.temperature, dim=2)
        out = torch.bmm(self.attn_dropout(attn), self.w_vs(x))
        return self.layer_norm(self.dropout(self.fc(out)) + x)


class ProofHead(nn.Module):
    """`utils/inc_net.py` `Proof_Net`'s own parts: an image and a text projection per task (Linear D -> D,
    `Proj_Pure_MLP`), summed over the tasks so far; context prompts per task; the fusion attention; the
    visual prototypes (a buffer, one row per class of the stream, filled as classes are learned).
    Every task's modules exist from the start (checkpoints hold them all); `tasks` says how many are used."""

    def __init__(self, dim: int, n_tasks: int, n_classes: int, prompts_per_task: int):
        super().__init__()
        self.projs_img = nn.ModuleList(nn.Linear(dim, dim) for _ in range(n_tasks))
        self.projs_text = nn.ModuleList(nn.Linear(dim, dim) for _ in range(n_tasks))
        self.context_prompts = nn.ParameterList(nn.Parameter(torch.randn(prompts_per_task, dim)) for _ in range(n_tasks))
        self.sel_attn = FusionAttention(dim)
        self.register_buffer("img_prototypes", torch.zeros(n_classes, dim))
        self.tasks = 0

    def project_image(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([p(x) for p in self.projs_img[:self.tasks]], dim=1).sum(dim=1)

    def project_text(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([p(x) for p in self.projs_text[:self.tasks]], dim=1).sum(dim=1)

    def prompts(self) -> torch.Tensor:
        return torch.cat(list(self.context_prompts[:self.tasks]), dim=0)

    def prototypes(self, n: int) -> torch.Tensor:
        """`encode_prototpyes(normalize=True)` over the first n classes."""
        return F.normalize(self.project_image(self.img_prototypes[:n]), dim=-1)

    def fuse(self, image: torch.Tensor, text: torch.Tensor, protos: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """`forward_transformer`: per image, the sequence [image, every class text, every prototype, the
        context prompts] through the attention; the image's output, and the class texts' and prototypes'
        outputs averaged over the batch."""
        b, prompts = len(image), self.prompts()
        seq = torch.cat([image[:, None], text.expand(b, *text.shape), protos.expand(b, *protos.shape),
                         prompts.expand(b, *prompts.shape)], dim=1)
        out = self.sel_attn(seq)
        c, p = len(text), len(protos)
        return out[:, 0], out[:, 1:c + 1].mean(dim=0), out[:, c + 1:c + 1 + p].mean(dim=0)


def clip_loss(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """`utils/toolkit.py` `ClipLoss` on one device: (CE(s I T^T, arange) + CE(s T I^T, arange)) / 2."""
    labels = torch.arange(len(image), device=image.device)
    return (F.cross_entropy(scale * image @ text.T, labels) + F.cross_entropy(scale * text @ image.T, labels)) / 2


def proof_scores(head: ProofHead, image: torch.Tensor, text: torch.Tensor, n_seen: int) -> torch.Tensor:
    """`Learner._eval_cnn` for one test batch: `image` the batch's raw encoder features, `text` the classes'
    template-ensembled projected text features [n_seen, D]; proj_img . text + fused_img . fused_text +
    fused_img . fused_proto, with the projected image features left unnormalised, as the code's."""
    projected = head.project_image(image)
    fused_img, fused_text, fused_proto = head.fuse(projected, text, head.prototypes(n_seen))
    return projected @ text.T + fused_img @ fused_text.T + fused_img @ fused_proto.T


@dataclass
class PROOFConfig(MethodConfig):
    memory_size: int = 2000  # exemplars in total, memory_size // (classes seen) per class (fixed_memory false)
    prompts_per_task: int = 3  # context prompts added per task
    test_batch: int = 64  # images per test batch: the fused text and prototypes are averaged over it
    train_old_text_projections: bool = True  # the code's quirk: every text projection trains; False: the newest only
    train_logit_scale: bool = True  # the code's quirk: the CLIP loss's logit scale trains

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.memory_size < 0 or self.prompts_per_task < 1 or self.test_batch < 1:
            raise ClipbenchError(f"proof needs memory_size >= 0, prompts_per_task >= 1 and test_batch >= 1; got "
                                 f"{self.memory_size}, {self.prompts_per_task}, {self.test_batch}")


@register_method
class PROOF(Method):
    """PROOF (Zhou et al., "Learning without Forgetting for Vision-Language Models", TPAMI 2025).

    Code: zhoudw-zdw/PROOF at 0bb20520a726ebf3ca8b0c32168d5d4c1f59f3b7: `models/proof.py` (`Learner.
    incremental_train`, `_train_proj`, `cal_prototype`, `_eval_cnn`), `utils/inc_net.py` (`Proof_Net`:
    `extend_task`, `update_context_prompt`, `update_prototype`, `encode_image`, `encode_text`,
    `encode_prototpyes`, `forward_transformer`, `freeze_projection_weight_new`), `convs/projections.py`
    (`Proj_Pure_MLP`, `MultiHeadAttention`), `utils/toolkit.py` (`ClipLoss`), `models/base.py` (herding,
    `samples_per_class`), defaults of `exps/cifar.json`. The authors run open_clip ViT-B-16 `laion400m_e32`;
    here it is whatever model the suite gives.

    The CLIP towers are frozen. Each task adds an image and a text projection (Linear D -> D) and 3 context
    prompts (N(0, 1)); features are the sums of every task's projections of the raw encoder outputs. Before
    a task trains, each new class's visual prototype is the mean of the L2-normalised raw image features
    of its training images. Training (classes seen so far, text "templates[0]" per class, i.e. the
    protocol's training prompt): i, t = normalised projected image and class texts; the fusion attention
    runs [i, every t, every projected prototype, every context prompt] per image, the texts' and
    prototypes' outputs averaged over the batch; loss = CE(fused_i . fused_t) (no temperature) +
    ClipLoss(i, t[label], exp(logit_scale)) + CE(fused_i . fused_proto). Trained: the newest image
    projection, every text projection, the newest prompts, the attention and the logit scale. Exemplars:
    iCaRL herding on the normalised raw image features, memory_size // (classes seen) per class, joined
    to each later task's training data (not to the prototypes). Test: per batch of `test_batch` images,
    proj_img . t_ens + fused_i . fused_t + fused_i . fused_proto over the classes seen, t_ens the
    renormalised mean over the protocol's templates of each template's normalised projected text.

    Quirks kept: the logit scale trains (`train_logit_scale`), every text projection trains
    (`train_old_text_projections`; False: only the newest, the corrected form); the fusion cross-entropies
    have no temperature; the image features are normalised in training but not at test; the fused texts
    and prototypes are batch means, so a test image's scores depend on its batch (`test_batch`).
    Departures:
    - every task's projections and prompts are created (drawn) when the run starts, not when the task
      starts: the same distributions, another draw; unused ones change nothing.
    - test batches are cut within each experience's test set in the stream's order; the code evaluates
      all seen classes' test images in one class-sorted loader, so its batches may straddle two tasks.
    - classes not learned yet (scored only in rows before their experience) get a score below every
      learned class's; the code never scores them. Row 0 (nothing learned) is zero-shot CLIP.
    - a class with fewer training images than its exemplar share keeps them all (the code's herding
      would fail); `memory_size` is the authors' 2000, which on the `mini` suite keeps every image.
    - the held-out zero-shot and retrieval sets see the frozen CLIP: PROOF's head scores only the
      stream's classes.
    - the optimiser, rate, epochs and batch are the suite's (`REFERENCE_RECIPE`: SGD 1e-3, momentum 0.9,
      weight decay 0.05, cosine per epoch, 5 epochs, batch 64); weight decay then also reaches the
      trainable logit scale, as in the code (its optimiser takes every parameter with a gradient).
    """

    name = "proof"
    version = 1
    Config = PROOFConfig
    scores_raw_features = True

    def setup(self, model, streams) -> None:
        self.streams, self.model = streams, model
        with torch.no_grad():
            dim = model.encode_tokens(model.prompt_tokens[:1]).shape[-1]
        self.head = ProofHead(dim, streams.n_experiences, len(streams.class_names), self.config.prompts_per_task)
        model.add_module("proof", self.head)
        self.learned = 0  # experiences learned
        self.n_seen = 0  # classes learned
        self.exemplars: Dict[int, torch.Tensor] = {}  # class id -> uint8 images in herding order
        method = self

        def forward(images: torch.Tensor) -> torch.Tensor:  # training: the fusion logits, the engine's CE
            return method.train_forward(images)

        model.forward = forward  # this instance only

    # ---------------------------------------------------------------- training

    def trainable_parameters(self, model) -> List[nn.Parameter]:
        t, head = self.learned, self.head
        texts = head.projs_text[:t + 1] if self.config.train_old_text_projections else head.projs_text[t:t + 1]
        params = list(head.projs_img[t].parameters()) + [p for m in texts for p in m.parameters()]
        params += [head.context_prompts[t]] + list(head.sel_attn.parameters())
        return params + ([model.clip.logit_scale] if self.config.train_logit_scale else [])

    def training_data(self, streams, exp):
        if not self.exemplars:
            return streams.train[exp]
        memory = [LabelledImages(imgs, torch.full((len(imgs),), c, dtype=torch.long)) for c, imgs in sorted(self.exemplars.items())]
        return LabelledImages.concat([streams.train[exp]] + memory)

    def before_training_exp(self, strategy, **kwargs):
        model, exp = strategy.model, strategy.experience.current_experience
        self.head.tasks = self.learned + 1
        data = self.streams.train[exp]
        self.features = raw_image_features(model, data.images, strategy.device)  # frozen: also herding's
        normalised = F.normalize(self.features, dim=-1)
        with torch.no_grad():
            for c in self.streams.experience_classes[exp]:  # `cal_prototype`
                self.head.img_prototypes[c] = normalised[data.labels == c].mean(0).to(self.head.img_prototypes)
            self.text_raw = model.clip.encode_text(model.prompt_tokens[:model.num_active]).float()

    def train_forward(self, images: torch.Tensor) -> torch.Tensor:
        model, head = self.model, self.head
        with torch.no_grad():
            raw = model.clip.encode_image(model.preprocess(images)).float()
        image = F.normalize(head.project_image(raw), dim=-1)
        text = F.normalize(head.project_text(self.text_raw), dim=-1)
        fused_img, fused_text, fused_proto = head.fuse(image, text, head.prototypes(model.num_active))
        self.batch = (image, text, fused_img, fused_proto)
        return fused_img @ fused_text.T

    def loss(self, strategy) -> Optional[torch.Tensor]:
        image, text, fused_img, fused_proto = self.batch
        y = strategy.mb_y
        scale = strategy.model.clip.logit_scale.exp()
        return clip_loss(image, text[y], scale) + F.cross_entropy(fused_img @ fused_proto.T, y)

    def after_training_exp(self, strategy, **kwargs):
        exp = strategy.experience.current_experience
        classes = self.streams.experience_classes[exp]
        self.learned += 1
        self.n_seen = classes[-1] + 1
        per_class = self.config.memory_size // self.n_seen  # `samples_per_class`, fixed_memory false
        self.exemplars = {c: imgs[:per_class] for c, imgs in self.exemplars.items()}  # `_reduce_exemplar`
        data = self.streams.train[exp]
        for c in classes:  # `_construct_exemplar`
            rows = data.labels == c
            if per_class:
                self.exemplars[c] = data.images[rows][herding(self.features[rows], per_class)]
        self.features, self.text_raw, self.batch = None, None, None

    # ---------------------------------------------------------------- evaluation

    def class_features(self, loaded, class_features: torch.Tensor) -> torch.Tensor:
        """The classes' test text features: per template, the normalised projected text, averaged and
        renormalised (the code's `_eval_cnn`); CLIP's until a task is learned."""
        if not self.learned:
            return class_features
        model, head = self.model, self.head
        templates = self.streams.class_templates
        device = model.prompt_tokens.device
        counts = [len(t) for t in templates]
        tokens = model.tokenizer(class_prompts(self.streams.class_names, templates))
        out = []
        with torch.no_grad():
            for s in range(0, len(tokens), 256):
                raw = model.clip.encode_text(tokens[s:s + 256].to(device)).float()
                out.append(F.normalize(head.project_text(raw), dim=-1))
        per_template = torch.cat(out)
        means = torch.stack([g.mean(0) for g in torch.split(per_template, counts)])
        return F.normalize(means, dim=-1).cpu()

    def scores(self, image_features: torch.Tensor, class_features: torch.Tensor) -> Optional[torch.Tensor]:
        if not self.learned:
            return None
        head, n = self.head, self.n_seen
        device = next(head.parameters()).device
        was_training = head.training
        head.eval()
        out = torch.empty(len(image_features), len(class_features))
        text = class_features[:n].to(device)
        with torch.no_grad():
            for s in range(0, len(image_features), self.config.test_batch):
                seen = proof_scores(head, image_features[s:s + self.config.test_batch].to(device), text, n).cpu()
                out[s:s + len(seen), :n] = seen
                out[s:s + len(seen), n:] = seen.min(dim=1, keepdim=True).values - 1  # never above a learned class
        head.train(was_training)
        return out

    def inference_extras(self) -> str:
        return "fusion attention over class texts, visual prototypes and context prompts"

    def exemplar_count(self) -> int:
        return sum(len(imgs) for imgs in self.exemplars.values())

    def state_dict(self) -> Dict[str, Any]:
        return {"learned": self.learned, "n_seen": self.n_seen, "exemplars": self.exemplars}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.learned, self.n_seen, self.exemplars = state["learned"], state["n_seen"], dict(state["exemplars"])
        self.head.tasks = self.learned
