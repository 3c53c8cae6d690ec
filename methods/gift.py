"""GIFT (Wu, Shi, Wang, Ye, "Synthetic Data is an Elegant GIFT for Continual Vision-Language Models", CVPR 2025):
distillation and image-text alignment on synthetic image-text pairs, with adaptive weight consolidation."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F

from clipbench.errors import ClipbenchError

from .base import MethodConfig, WithTeacher, register_method
from .descriptions import resolve
from .toolkit import Cycle

REPO = "Luo-Jiaming/GIFT_CL at 7511963a3b5f62869413c1955aaa8a3d23377df1"

NEEDS_FOLDER = ("needs methods.gift.synthetic: a folder of synthetic image-text pairs (image_text.csv with columns "
                "image,text beside the images), as GIFT generates with Stable Diffusion v1.5; clipbench does not "
                "generate images")


# ---------------------------------------------------------------------------------------------- the pairs

def read_pairs(folder: Path, limit: int, size: int) -> tuple:
    """The pairs of one `image_text.csv` (the authors' `data/synthetic/*/<Task>_Syn/`): each row's image is the file
    of that base name in `folder`; missing and all-black images are skipped (`SyntheticDataset.is_black`); the
    first `limit` kept. Returns uint8 images [N, 3, size, size] and their captions."""
    from PIL import Image

    from clipbench.mini_model import to_square_rgb

    table = folder / "image_text.csv"
    try:
        with table.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as err:
        raise ClipbenchError(f"methods.gift.synthetic: cannot read {table}: {err.strerror or err}") from None
    if not rows or not {"image", "text"} <= set(rows[0]):
        raise ClipbenchError(f"methods.gift.synthetic: {table} needs the columns image,text and at least one row")
    images, captions = [], []
    for row in rows:
        path = folder / Path(row["image"]).name
        if not path.is_file():
            continue
        with Image.open(path) as img:
            array = to_square_rgb(img, size)
        if not array.any():
            continue
        images.append(torch.from_numpy(array))
        captions.append(row["text"])
        if len(images) == limit:
            break
    if len(images) < 2:
        raise ClipbenchError(f"methods.gift.synthetic: {folder} holds fewer than 2 readable images listed in image_text.csv")
    return torch.stack(images), captions


def caption_labels(captions: List[str]) -> torch.Tensor:
    """`SyntheticDataset`'s labels: the index of each caption among the distinct captions (equal captions,
    equal labels)."""
    index: Dict[str, int] = {}
    return torch.tensor([index.setdefault(c, len(index)) for c in captions], dtype=torch.long)


# ---------------------------------------------------------------------------------------------- cores

def distillation(t: torch.Tensor, s: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """`helpers.distillation`: T^2 * CE(s / T, softmax(t / T)), mean over rows."""
    return F.cross_entropy(s / temperature, F.softmax(t / temperature, dim=1)) * temperature ** 2


def soft_targets(labels: torch.Tensor) -> torch.Tensor:
    """`finetune_gift`'s ITA targets: row i spreads 1 equally over the batch items with i's caption label."""
    equal = (labels[None, :] == labels[:, None]).float()
    return equal / equal.sum(dim=1, keepdim=True)


def gift_terms(teacher_img: torch.Tensor, teacher_txt: torch.Tensor, img: torch.Tensor, txt: torch.Tensor,
               labels: torch.Tensor, scale: torch.Tensor, distill: float, ita: float, temperature: float,
               smoothing: float) -> torch.Tensor:
    """distill * (D(L_ref, L) + D(L_ref^T, L^T)) + ita * (CE(L, Y) + CE(L^T, Y)), L_ref = s I_t T_t^T from the
    teacher, L = s I T^T from the model, on one batch of synthetic pairs (features normalised), Y = soft_targets."""
    logits_ref = scale * teacher_img @ teacher_txt.T
    logits = scale * img @ txt.T
    total = logits.new_zeros(())
    if distill > 0:
        total = total + distill * (distillation(logits_ref, logits, temperature)
                                   + distillation(logits_ref.T, logits.T, temperature))
    if ita > 0:
        y = soft_targets(labels)
        total = total + ita * (F.cross_entropy(logits, y, label_smoothing=smoothing)
                               + F.cross_entropy(logits.T, y, label_smoothing=smoothing))
    return total


def awc_precision(grads: Dict[str, Optional[torch.Tensor]], shapes: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """`finetune_gift`'s AWC importance (static_awc 0: re-estimated every iteration): per parameter tensor,
    g^2 / mean(g^2) of this iteration's distillation + ITA gradient; 1e-6 where there is no gradient or for
    the logit scale."""
    out = {}
    for n, p in shapes.items():
        g = grads.get(n)
        if g is not None and "logit_scale" not in n:
            f = g.detach() ** 2
            out[n] = f / f.mean()
        else:
            out[n] = torch.zeros_like(p) + 1e-6
    return out


def weighted_l2(params: Dict[str, torch.Tensor], anchor: Dict[str, torch.Tensor],
                precision: Dict[str, torch.Tensor]) -> torch.Tensor:
    """`helpers.ewc_loss`: sum_n sum F_n (theta_n - theta0_n)^2."""
    return sum((precision[n] * (params[n] - anchor[n]) ** 2).sum() for n in anchor)


# ---------------------------------------------------------------------------------------------- the method

@dataclass
class GIFTConfig(MethodConfig):
    synthetic: str = ""  # folder of image_text.csv + images (or of one such subfolder per experience); "" = n/a
    image_nums: int = 1000  # synthetic images used per task
    distill: float = 1.0
    ita: float = 0.25
    l2: float = 1.0
    awc: bool = True  # Fisher-weighted L2 (AWC); false: the plain L2 to the task's starting weights
    temperature: float = 2.0
    ita_label_smoothing: float = 0.2  # the code's `ls`, also used by its ITA cross-entropies
    reference_batch_size: int = 0  # synthetic pairs per step; 0: the training batch size (the code's)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.image_nums < 2 or min(self.distill, self.ita, self.l2, self.ita_label_smoothing) < 0:
            raise ClipbenchError("methods.gift needs image_nums >= 2 and distill, ita, l2, ita_label_smoothing >= 0")


@register_method
class GIFT(WithTeacher):
    """GIFT (CVPR 2025). Code: Luo-Jiaming/GIFT_CL at 7511963a3b5f62869413c1955aaa8a3d23377df1:
    `src/models/finetune_gift.py::finetune_gift`, `src/models/helpers.py` (`distillation`, `ewc_loss`,
    `l2_loss`, `prepare_ref_dataset`), `src/datasets/synthetic.py::SyntheticDataset`, `txt2img.py::ImgGenerator`,
    `configs/mtil_order_I.json`, `src/args.py`.

    The whole CLIP model fine-tunes (ZSCL's code base). Each step adds to the cross-entropy (label smoothing 0.2,
    a training setting) a batch of synthetic image-text pairs: with the teacher (the model as it was before this
    task: `ref_model: load`), L_ref = s I_t T_t^T, and the model's L = s I T^T;
    loss += distill (D(L_ref, L) + D(L_ref^T, L^T)) + ita (CE(L, Y) + CE(L^T, Y)) (D: ZSCL's soft CE with T = 2;
    Y: uniform over the batch pairs with the same caption; label smoothing 0.2) + l2 sum F (theta - theta_0)^2,
    theta_0 the weights at the task's start and F, per parameter tensor, the squared gradient of this step's
    distillation + ITA terms over its mean (AWC, re-estimated every step; `awc: false`: plain L2).

    The synthetic pairs are the user's folder (`synthetic`): the authors generate 1000 images per task with Stable
    Diffusion v1.5 from shipped ImageNet-class prompts (`data/synthetic/synthetic_data_a/<Task>_Syn/image_text.csv`);
    clipbench does not generate images, and without the folder the method is not applicable. The folder holds one
    `image_text.csv` (columns image,text; each image found by its base name beside it) used for every task, or one
    such subfolder per experience (taken in name order). Recipe (`configs/mtil_order_I.json`, `src/args.py`): AdamW
    (beta2 0.999, wd 0), 1000 iterations per task, lr 1e-5 (5e-5 for Aircraft and MNIST), cosine with 100 warm-up
    steps, batch 64, label smoothing 0.2.

    Departures: images are taken in the CSV's order (the code: `os.listdir` order, then the first 1000), padded to
    a square and resized for the model (the code: CLIP's preprocess); synthetic batches are drawn by a shuffled
    cycle over the pairs (the code: a shuffled loader, restarted when exhausted); the AWC gradient comes from
    `torch.autograd.grad` of the same terms (the code backpropagates them, then the CE and AWC terms on top: the same
    total gradient); the per-task learning-rate list is a training setting (one lr per run here).
    """

    name = "gift"
    version = 1
    Config = GIFTConfig
    train_defaults = {"optimizer": "adamw", "lr": 1e-5, "weight_decay": 0.0, "schedule": "cosine",
                      "warmup_steps": 100, "iterations": 1000, "batch_size": 64, "label_smoothing": 0.2}

    @classmethod
    def not_applicable(cls, spec) -> Optional[str]:
        config = getattr(spec, "method_config", None) or {}
        return None if config.get("synthetic") else NEEDS_FOLDER

    def setup(self, model, streams) -> None:
        cfg = self.config
        if not cfg.synthetic:
            raise ClipbenchError(NEEDS_FOLDER)
        root = resolve(cfg.synthetic)
        if not root.is_dir():
            raise ClipbenchError(f"methods.gift.synthetic: {root} is not a folder")
        size = int(streams.train[0].images.shape[-1]) if torch.is_tensor(streams.train[0].images) else 224
        if (root / "image_text.csv").is_file():
            folders = [root] * streams.n_experiences
        else:
            folders = sorted(p for p in root.iterdir() if (p / "image_text.csv").is_file())
            if len(folders) != streams.n_experiences:
                raise ClipbenchError(f"methods.gift.synthetic: {root} has no image_text.csv and {len(folders)} subfolders "
                                     f"with one; the protocol has {streams.n_experiences} experiences")
        cache: Dict[Path, Any] = {}
        self.pools = []
        for folder in folders:
            if folder not in cache:
                images, captions = read_pairs(folder, cfg.image_nums, size)
                cache[folder] = (images, model.tokenizer(captions), caption_labels(captions))
            self.pools.append(cache[folder])
        self.learned = 0

    def before_training_exp(self, strategy, **kwargs):
        super().before_training_exp(strategy, **kwargs)  # the teacher: the model before this task
        images, _, _ = self.pools[self.learned]
        size = self.config.reference_batch_size or strategy.train_mb_size
        self.cycle = Cycle(len(images), size, shuffle=True)

    def loss(self, strategy) -> torch.Tensor:
        model, cfg = strategy.model, self.config
        images, tokens, labels = self.pools[self.learned]
        pick = self.cycle.next()
        x, t, y = images[pick].to(strategy.device), tokens[pick].to(strategy.device), labels[pick].to(strategy.device)
        teacher_img = self.teacher_image_features(model, x)
        teacher_txt = self.teacher_text_features(model, t)
        scale = model.clip.logit_scale.exp().detach()
        terms = gift_terms(teacher_img, teacher_txt, model.encode_images(x), model.encode_tokens(t), y, scale,
                           cfg.distill, cfg.ita, cfg.temperature, cfg.ita_label_smoothing)
        if cfg.l2 == 0:
            return terms
        params = {n: p for n, p in model.named_parameters() if n in self.teacher}
        if cfg.awc:
            names = [n for n, p in params.items() if p.requires_grad]
            grads = torch.autograd.grad(terms, [params[n] for n in names], retain_graph=True, allow_unused=True) \
                if terms.requires_grad else [None] * len(names)
            precision = awc_precision(dict(zip(names, grads)), {n: self.teacher[n] for n in self.teacher})
            return terms + cfg.l2 * weighted_l2(params, self.teacher, precision)
        return terms + cfg.l2 * sum(((params[n] - v) ** 2).sum() for n, v in self.teacher.items())

    def after_training_exp(self, strategy, **kwargs):
        self.learned += 1

    def inference_extras(self) -> str:
        return ""

    def state_dict(self) -> Dict[str, Any]:
        return {"learned": self.learned}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.learned = state["learned"]
