"""Evaluation: image/text features under inference mode, zero-shot accuracy, retrieval recall.

Pure torch; no Avalanche. Features are L2-normalised float32 on the CPU. Metrics are computed
later from the stored numbers (see `clipbench.protocols.metrics`).
"""

from __future__ import annotations

import contextlib
from typing import Dict, List, Sequence

import torch
from tqdm import tqdm

from .models import LoadedModel

RECALL_KS = (1, 5, 10)


def _autocast(device: str, precision: str):
    if device.startswith("cuda") and precision == "amp_bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.inference_mode()
def encode_images(loaded: LoadedModel, images: torch.Tensor, batch_size: int, device: str = "cpu",
                  precision: str = "fp32", desc: str = "", progress: bool = False) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> normalised image features [N, D], in batches."""
    clip = loaded.clip
    was_training = clip.training
    clip.eval()
    out = []
    # one input buffer for every batch (inference mode: nothing keeps a batch's input alive)
    buffer = loaded.input_buffer(images, batch_size, device)
    starts = range(0, len(images), batch_size)
    for s in tqdm(starts, desc=desc or "encode images", disable=not progress, leave=False):
        chunk = images[s:s + batch_size].to(device, non_blocking=True)
        x = loaded.model_input(chunk, out=None if buffer is None else buffer[:len(chunk)])
        with _autocast(device, precision):
            f = clip.encode_image(x)
        out.append(torch.nn.functional.normalize(f.float(), dim=-1).cpu())
    clip.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


@torch.inference_mode()
def encode_texts(loaded: LoadedModel, texts: Sequence[str], batch_size: int, device: str = "cpu",
                 precision: str = "fp32") -> torch.Tensor:
    """Texts -> normalised text features [M, D], in batches."""
    clip = loaded.clip
    was_training = clip.training
    clip.eval()
    out = []
    for s in range(0, len(texts), batch_size):
        tokens = loaded.tokenizer(list(texts[s:s + batch_size])).to(device)
        with _autocast(device, precision):
            f = clip.encode_text(tokens)
        out.append(torch.nn.functional.normalize(f.float(), dim=-1).cpu())
    clip.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def class_embeddings(loaded: LoadedModel, class_names: List[str], templates: List[str], batch_size: int,
                     device: str = "cpu", precision: str = "fp32") -> torch.Tensor:
    """CLIP's prompt ensemble: per class, the renormalised mean of its normalised template embeddings."""
    prompts = [t.format(c=c) for c in class_names for t in templates]
    feats = encode_texts(loaded, prompts, batch_size, device, precision)
    feats = feats.view(len(class_names), len(templates), -1).mean(dim=1)
    return torch.nn.functional.normalize(feats, dim=-1)


def accuracy(image_features: torch.Tensor, labels: torch.Tensor, class_features: torch.Tensor,
             lo: int = 0, hi: int | None = None) -> float:
    """Top-1 accuracy scoring only classes [lo, hi); labels are global class ids."""
    hi = len(class_features) if hi is None else hi
    return range_accuracy(image_features @ class_features[lo:hi].T, labels, lo)


def range_accuracy(range_scores: torch.Tensor, labels: torch.Tensor, lo: int = 0) -> float:
    """Top-1 accuracy of scores [N, k] over the classes [lo, lo + k); labels are global class ids."""
    pred = range_scores.argmax(dim=1) + lo
    return float((pred == labels).double().mean()) if len(labels) else 0.0


def retrieval_recall(image_features: torch.Tensor, text_features: torch.Tensor, caption_image: torch.Tensor,
                     ks: Sequence[int] = RECALL_KS, chunk: int = 1024) -> Dict[str, float]:
    """Recall@K both ways; an image may have several captions.

    Image-to-text: an image is retrieved at K when fewer than K wrong captions score at least as
    high as its best caption. Text-to-image: a caption is retrieved at K when fewer than K wrong
    images score at least as high as its image. Ties count against the model.
    """
    n_img = len(image_features)
    i2t_rank = torch.empty(n_img, dtype=torch.long)
    for s in range(0, n_img, chunk):
        sim = image_features[s:s + chunk] @ text_features.T  # [c, M]
        correct = caption_image[None, :] == torch.arange(s, s + len(sim))[:, None]
        best = sim.masked_fill(~correct, float("-inf")).max(dim=1).values
        i2t_rank[s:s + chunk] = ((sim >= best[:, None]) & ~correct).sum(dim=1)
    n_txt = len(text_features)
    t2i_rank = torch.empty(n_txt, dtype=torch.long)
    for s in range(0, n_txt, chunk):
        sim = image_features @ text_features[s:s + chunk].T  # [N, c]
        owner = caption_image[s:s + chunk]
        correct = torch.arange(n_img)[:, None] == owner[None, :]
        own = sim.gather(0, owner[None, :]).squeeze(0)
        t2i_rank[s:s + chunk] = ((sim >= own[None, :]) & ~correct).sum(dim=0)
    out = {}
    for k in ks:
        out[f"i2t_r{k}"] = float((i2t_rank < k).double().mean())
        out[f"t2i_r{k}"] = float((t2i_rank < k).double().mean())
    return out


def retrieval_recall_folds(image_features: torch.Tensor, text_features: torch.Tensor, caption_image: torch.Tensor,
                           folds: int = 1, ks: Sequence[int] = RECALL_KS) -> Dict[str, float]:
    """Recall averaged over `folds` equal, contiguous folds of the images, each scored against only its
    own images' captions (how COCO's 5k test set is scored as five folds of 1k)."""
    if folds <= 1:
        return retrieval_recall(image_features, text_features, caption_image, ks)
    n = len(image_features)
    if n % folds:
        raise ValueError(f"{n} images do not split into {folds} equal folds")
    step, results = n // folds, []
    for f in range(folds):
        lo, hi = f * step, (f + 1) * step
        mine = (caption_image >= lo) & (caption_image < hi)
        results.append(retrieval_recall(image_features[lo:hi], text_features[mine], caption_image[mine] - lo, ks))
    return {k: sum(r[k] for r in results) / folds for k in results[0]}
