"""Evaluation: image/text features under inference mode, zero-shot accuracy, retrieval recall.

Pure torch; no Avalanche. Features are L2-normalised float32 on the CPU. Metrics are computed
later from the stored numbers (see `clipbench.protocols.metrics`).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager, Dict, Iterator, List, Optional, Sequence, Set

import torch
from tqdm import tqdm

from .feed import DeviceFeeder
from .models import LoadedModel

RECALL_KS = (1, 5, 10)
# Bump when the numbers evaluation gives for the same model and data could change (enters run ids and
# the row-0 cache key).
EVALUATION_VERSION = 1


def _autocast(device: str, precision: str):
    if device.startswith("cuda") and precision == "amp_bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def any_training(module: torch.nn.Module) -> bool:
    """Whether `module` or any module below it is in training mode (a walk over `_modules`, about 6x faster
    than `module.modules()` and 6x faster again than `module.eval()` on the mini model's 398 modules)."""
    stack = [module]
    while stack:
        m = stack.pop()
        if m.training:
            return True
        stack.extend(c for c in m._modules.values() if c is not None)
    return False


@contextlib.contextmanager
def encoding_mode(module: torch.nn.Module) -> Iterator[None]:
    """`module.eval()` for the block, then `module.train(was)` with `was` its own flag before, as the encoders
    always did (every module below it ends in that mode). When every module is already in eval mode, both
    calls would change nothing: they are skipped (each walks every module through `__setattr__`, 0.9 ms on
    the mini model; the DIKI batch-1 evaluation encodes texts thousands of times). A module the block itself
    switches to training is set back by `module.train(False)`, as before. Inside another `encoding_mode` of
    the same module (an evaluation row encodes thousands of times under one), nothing is checked again."""
    if id(module) in _HELD:
        yield
        return
    _HELD.add(id(module))
    try:
        with _encoding_mode(module):
            yield
    finally:
        _HELD.discard(id(module))


_HELD: Set[int] = set()  # modules inside an `encoding_mode` block


@contextlib.contextmanager
def _encoding_mode(module: torch.nn.Module) -> Iterator[None]:
    if any_training(module):
        was = module.training
        module.eval()
        yield
        module.train(was)
        return
    yield
    if any_training(module):
        module.train(False)


@torch.inference_mode()
def encode_images(loaded: LoadedModel, images: torch.Tensor, batch_size: int, device: str = "cpu",
                  precision: str = "fp32", desc: str = "", progress: bool = False,
                  per_batch: Optional[Callable[[torch.Tensor], ContextManager]] = None,
                  normalize: bool = True) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> normalised image features [N, D], in batches (`normalize` False: as the encoder
    returns them).

    `per_batch(uint8 batch)`, when given, returns a context under which that batch is encoded (a
    method's route inferred from the whole batch, see `Method.route_batch`).
    """
    clip = loaded.clip
    with encoding_mode(clip):
        return _encode_images(loaded, images, batch_size, device, precision, desc, progress, per_batch, normalize)


def _encode_images(loaded: LoadedModel, images: torch.Tensor, batch_size: int, device: str, precision: str, desc: str,
                   progress: bool, per_batch: Optional[Callable[[torch.Tensor], ContextManager]],
                   normalize: bool) -> torch.Tensor:
    clip = loaded.clip
    out = []
    # one input buffer for every batch (inference mode: nothing keeps a batch's input alive)
    buffer = loaded.input_buffer(images, batch_size, device)
    # on a GPU: pinned slots and asynchronous copies; features stay there until the end (one wait, not one per batch)
    feeder = DeviceFeeder(device, min(batch_size, len(images)), images.shape[1:], images.dtype) if len(images) else None
    starts = range(0, len(images), batch_size)
    for s in tqdm(starts, desc=desc or "encode images", disable=not progress, leave=False, unit="batch"):
        chunk = feeder.put(images[s:s + batch_size])
        x = loaded.model_input(chunk, out=None if buffer is None else buffer[:len(chunk)])
        with _autocast(device, precision), (per_batch(chunk) if per_batch else contextlib.nullcontext()):
            f = clip.encode_image(x)
        out.append(torch.nn.functional.normalize(f.float(), dim=-1) if normalize else f.float())
    return torch.cat(out).cpu() if out else torch.empty(0)


@torch.inference_mode()
def encode_texts(loaded: LoadedModel, texts: Sequence[str], batch_size: int, device: str = "cpu",
                 precision: str = "fp32", tokens: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Texts -> normalised text features [M, D], in batches. `tokens`: the texts already tokenized
    (`loaded.tokenizer(texts)`), for callers that encode the same texts many times."""
    clip = loaded.clip
    out = []
    with encoding_mode(clip):
        for s in range(0, len(texts), batch_size):
            chunk = loaded.tokenizer(list(texts[s:s + batch_size])) if tokens is None else tokens[s:s + batch_size]
            with _autocast(device, precision):
                f = clip.encode_text(chunk.to(device))
            out.append(torch.nn.functional.normalize(f.float(), dim=-1).cpu())
    return torch.cat(out) if out else torch.empty(0)


Templates = Sequence[str] | Sequence[Sequence[str]]


def per_class_templates(n_classes: int, templates: Templates) -> List[List[str]]:
    """`templates` as one list per class: one list shared by every class, or already one per class."""
    if templates and isinstance(templates[0], str):
        return [list(templates)] * n_classes  # type: ignore[list-item]
    return [list(t) for t in templates]


def class_prompts(class_names: List[str], templates: Templates) -> List[str]:
    """Every template of each class filled with its name, class by class."""
    return [t.format(c=c) for c, ts in zip(class_names, per_class_templates(len(class_names), templates)) for t in ts]


def class_embeddings(loaded: LoadedModel, class_names: List[str], templates: Templates, batch_size: int,
                     device: str = "cpu", precision: str = "fp32", tokens: Optional[torch.Tensor] = None) -> torch.Tensor:
    """CLIP's prompt ensemble: per class, the renormalised mean of its normalised template embeddings.

    `templates`: one list for every class, or one list per class (MTIL: each dataset its own).
    `tokens`: the prompts already tokenized (see `encode_texts`)."""
    per_class = per_class_templates(len(class_names), templates)
    feats = encode_texts(loaded, class_prompts(class_names, per_class), batch_size, device, precision, tokens)
    return prompt_ensemble(feats, per_class)


def prompt_ensemble(feats: torch.Tensor, per_class: List[List[str]]) -> torch.Tensor:
    """Normalised prompt embeddings [sum of templates, D], class by class -> each class's renormalised mean."""
    if len({len(ts) for ts in per_class}) == 1:
        feats = feats.view(len(per_class), len(per_class[0]), -1).mean(dim=1)
    else:
        feats = torch.stack([g.mean(dim=0) for g in torch.split(feats, [len(ts) for ts in per_class])])
    return torch.nn.functional.normalize(feats, dim=-1)


def accuracy(image_features: torch.Tensor, labels: torch.Tensor, class_features: torch.Tensor,
             lo: int = 0, hi: int | None = None) -> float:
    """Top-1 accuracy scoring only classes [lo, hi); labels are global class ids."""
    hi = len(class_features) if hi is None else hi
    return top1_accuracy(image_features @ class_features[lo:hi].T, labels, lo)


def top1_accuracy(scores: torch.Tensor, labels: torch.Tensor, first_class: int = 0) -> float:
    """Top-1 accuracy of class scores [N, C] whose column c is class `first_class + c`."""
    pred = scores.argmax(dim=1) + first_class
    return float((pred == labels).double().mean()) if len(labels) else 0.0


def per_class_accuracy(image_features: torch.Tensor, labels: torch.Tensor,
                       class_features: torch.Tensor) -> List[Optional[float]]:
    """Per class c: the share of c's test images predicted as c, every class of `class_features` scored
    (the founding paper's `Base.test` per-class accuracy); None for a class without test images."""
    n = len(class_features)
    pred = (image_features @ class_features.T).argmax(dim=1)
    count = torch.bincount(labels, minlength=n).tolist()
    correct = torch.bincount(labels[pred == labels], minlength=n).tolist()
    return [c / k if k else None for c, k in zip(correct, count)]


def retrieval_recall(image_features: torch.Tensor, text_features: torch.Tensor, caption_image: torch.Tensor,
                     ks: Sequence[int] = RECALL_KS, chunk: int = 1024) -> Dict[str, float]:
    """Recall@K both ways; an image may have several captions.

    Image-to-text: an image is retrieved at K when fewer than K wrong captions score at least as
    high as its best caption. Text-to-image: a caption is retrieved at K when fewer than K wrong
    images score at least as high as its image. Ties count against the model.
    """
    return _recall(lambda a, b: image_features[a:b] @ text_features.T, lambda a, b: image_features @ text_features[a:b].T,
                   len(image_features), len(text_features), caption_image, ks, chunk)


def similarity_recall(similarity: torch.Tensor, caption_image: torch.Tensor, ks: Sequence[int] = RECALL_KS,
                      chunk: int = 1024) -> Dict[str, float]:
    """`retrieval_recall` from a ready image x caption similarity matrix [N, M] (batch-wise methods score
    each image batch against captions encoded under that batch's route)."""
    return _recall(lambda a, b: similarity[a:b], lambda a, b: similarity[:, a:b], similarity.shape[0],
                   similarity.shape[1], caption_image, ks, chunk)


def _recall(rows: Callable[[int, int], torch.Tensor], cols: Callable[[int, int], torch.Tensor], n_img: int, n_txt: int,
            caption_image: torch.Tensor, ks: Sequence[int], chunk: int) -> Dict[str, float]:
    """Recall@K from similarity rows [a:b] (images a..b-1 against every caption) and columns."""
    i2t_rank = torch.empty(n_img, dtype=torch.long)
    for s in range(0, n_img, chunk):
        sim = rows(s, min(s + chunk, n_img))  # [c, M]
        correct = caption_image[None, :] == torch.arange(s, s + len(sim))[:, None]
        best = sim.masked_fill(~correct, float("-inf")).max(dim=1).values
        i2t_rank[s:s + chunk] = ((sim >= best[:, None]) & ~correct).sum(dim=1)
    t2i_rank = torch.empty(n_txt, dtype=torch.long)
    for s in range(0, n_txt, chunk):
        sim = cols(s, min(s + chunk, n_txt))  # [N, c]
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
    return _folds(len(image_features), caption_image, folds, lambda lo, hi, mine, owners: retrieval_recall(
        image_features[lo:hi], text_features[mine], owners, ks))


def similarity_recall_folds(similarity: torch.Tensor, caption_image: torch.Tensor, folds: int = 1,
                            ks: Sequence[int] = RECALL_KS) -> Dict[str, float]:
    """`retrieval_recall_folds` from a ready similarity matrix [N, M]."""
    return _folds(len(similarity), caption_image, folds, lambda lo, hi, mine, owners: similarity_recall(
        similarity[lo:hi][:, mine], owners, ks))


def _folds(n: int, caption_image: torch.Tensor, folds: int,
           score: Callable[[int, int, Any, torch.Tensor], Dict[str, float]]) -> Dict[str, float]:
    """`score(lo, hi, captions of images lo..hi-1 (mask or slice), their image indices from lo)` per fold, averaged."""
    if folds <= 1:
        return score(0, n, slice(None), caption_image)  # every caption
    if n % folds:
        raise ValueError(f"{n} images do not split into {folds} equal folds")
    step, results = n // folds, []
    for f in range(folds):
        lo, hi = f * step, (f + 1) * step
        mine = (caption_image >= lo) & (caption_image < hi)
        results.append(score(lo, hi, mine, caption_image[mine] - lo))
    return {k: sum(r[k] for r in results) / folds for k in results[0]}
