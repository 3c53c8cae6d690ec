"""`clipbench prepare mini`: align the mini model's two projections with the CLIP loss.

Both towers are frozen, so their pooled outputs are computed once; the image projection
(1280 -> 256), the text projection (384 -> 256) and the logit scale are trained with the
symmetric contrastive loss of CLIP on the alignment split's pairs (Tux Paint descriptions and
emoji names). Deterministic for a seed on the CPU. The product ships in the repository, so
`clipbench run --all` never pays for this step.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Dict

import torch
import torch.nn.functional as F
from tqdm import tqdm

from clipbench.protocols.builders import mini as mini_module_  # the data split is the mini suite's

from . import mini_model
from .evaluate import accuracy, class_embeddings, encode_images, encode_texts, retrieval_recall
from .models import BUNDLED_DIR, load_model

DEFAULT_OUT = BUNDLED_DIR / "mini" / "projections-v2.pt"


def _pooled(fn, items: torch.Tensor, batch: int, desc: str, progress: bool) -> torch.Tensor:
    out = [fn(items[s:s + batch]) for s in tqdm(range(0, len(items), batch), desc=desc, disable=not progress, leave=False)]
    return torch.cat(out)


def prepare_mini(out: Path = DEFAULT_OUT, epochs: int = 10, batch_size: int = 256, lr: float = 1e-3,
                 weight_decay: float = 0.5, seed: int = 0, progress: bool = True,
                 limit: int | None = None) -> Dict[str, Any]:
    """Train the projections and write them (with what was measured) to `out`.

    `limit` aligns on the first `limit` pairs only (for tests); the shipped file uses all of them.
    """
    mini = mini_module_
    started = time.perf_counter()
    torch.manual_seed(seed)
    loaded = load_model(mini_model.ARCH, None)
    clip = loaded.clip
    split = mini.alignment_split()
    train = mini.captioned(split["train"])
    if limit:
        train = type(train)(train.images[:limit], train.captions[:limit], train.caption_image[:limit])
    tokens = loaded.tokenizer(train.captions)
    with torch.no_grad():  # the image tower takes uint8 batches and prepares them itself
        img_f = _pooled(clip.visual.pooled, train.images, 128, "image tower", progress)
        txt_f = _pooled(clip.text.pooled, tokens, 256, "text tower", progress)
    params = [clip.visual.head.proj.weight, clip.text.proj.weight, clip.logit_scale]
    for p in clip.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    n = len(img_f)
    steps = epochs * math.ceil(n / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    bar = tqdm(total=steps, desc="align projections", disable=not progress, leave=False)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for s in range(0, n, batch_size):
            b = perm[s:s + batch_size]
            fi = F.normalize(clip.visual.head(img_f[b]), dim=-1)
            ft = F.normalize(clip.text.proj(txt_f[b]), dim=-1)
            logits = clip.logit_scale.exp() * fi @ ft.T
            target = torch.arange(len(b))
            loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                clip.logit_scale.clamp_(0, math.log(100))
            bar.update(1)
    bar.close()
    clip.eval()
    measured = heldout_report(loaded, mini)
    meta = {"pairs": n, "epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
            "seed": seed, "split_version": mini.SPLIT_VERSION, "final_loss": round(loss.item(), 4),
            "heldout": measured}
    state = {"visual.head.proj.weight": clip.visual.head.proj.weight.detach().clone(),
             "text.proj.weight": clip.text.proj.weight.detach().clone(),
             "logit_scale": clip.logit_scale.detach().clone()}
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state, "meta": meta}, out)  # no timestamps: same seed, same bytes
    return {**meta, "seconds": round(time.perf_counter() - started, 1)}


def heldout_report(loaded, mini) -> Dict[str, Any]:
    """Zero-shot accuracy and retrieval recall on the held-out sets (the model as it is now)."""
    split = mini.alignment_split()
    report: Dict[str, Any] = {}
    for name in ("heldout_tux", "heldout_emoji"):
        cap = mini.captioned(split[name])
        recalls = retrieval_recall(encode_images(loaded, cap.images, 256), encode_texts(loaded, cap.captions, 256),
                                   cap.caption_image)
        report[f"retrieval_{name}"] = {k: round(v, 4) for k, v in recalls.items()}
    zs = mini.labelled_from(split["heldout_emoji"], mini.EMOJI_ZEROSHOT)
    classes = class_embeddings(loaded, zs.class_names, mini.TEMPLATES["emoji"], 256)
    report["zeroshot_emoji"] = round(accuracy(encode_images(loaded, zs.data.images, 256), zs.data.labels, classes), 4)
    return report
