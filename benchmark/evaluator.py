"""Evaluation of one model state: the accuracy-matrix row and the held-out figures, and the row-0 cache.

Row 0 (before any training) is the same for every method of a suite that holds the pretrained model,
so it is measured once per results folder and read back, after checking that it was measured on
streams of the same shape.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

from clipbench.streams import JoinedImages, Streams

from .errors import Diverged
from .evaluate import (accuracy, class_embeddings, class_prompts, encode_images, encode_texts, encoding_mode,
                       per_class_accuracy, per_class_templates, prompt_ensemble, retrieval_recall_folds,
                       similarity_recall_folds, top1_accuracy)
from .models import LoadedModel
from .spec import RunSpec
from .store import ResultStore, atomic_write_json


@dataclass
class Row:
    """One evaluation: the accuracy-matrix row and the held-out figures."""

    acc: List[float]
    zeroshot: Dict[str, float]
    retrieval: Dict[str, Dict[str, float]]
    class_acc_all: Optional[List[Optional[float]]] = None  # per class, every class scored (founding paper's metrics)
    # the same row at evaluation batch size 1 (methods that infer the task from a whole test batch)
    batch1: Optional["Row"] = None

    def copy(self) -> "Row":
        return Row(list(self.acc), dict(self.zeroshot), {k: dict(v) for k, v in self.retrieval.items()},
                   self.class_acc_all)


def _finite(values: torch.Tensor, what: str, row: int) -> torch.Tensor:
    """`values`, checked: a non-finite feature or score stops the run as diverged (it would still give an
    accuracy, every class scored alike)."""
    if not bool(torch.isfinite(values).all()):
        raise Diverged(f"non-finite {what} at evaluation", row)
    return values


class Evaluator:
    """Evaluates a model state on the stream's test sets and held-out sets.

    Features are cached per model state (`version`): an untrained model is encoded once and
    only rescored for later rows (class-incremental rows score different class ranges).
    """

    def __init__(self, streams: Streams, loaded: LoadedModel, spec: RunSpec, device: str, progress: bool,
                 method: Any = None):
        self.streams, self.loaded, self.device, self.progress = streams, loaded, device, progress
        self.method = method
        self.batch = spec.eval["batch_size"]
        self.precision = spec.precision
        self.test_images = JoinedImages([t.images for t in streams.test])  # no copy of memory-mapped sets
        self.test_labels = torch.cat([t.labels for t in streams.test])
        self.bounds = np.cumsum([0] + [len(t) for t in streams.test]).tolist()
        # the target classifier's templates: the protocol's unless the method prompts its own way
        own = method.prompt_templates(streams.templates) if method is not None else streams.templates
        # per class; a method's own templates replace every class's (CLIP's zero-shot prompt per class otherwise)
        self.templates = streams.class_templates if own == streams.templates else [list(own)] * len(streams.class_names)
        self._version: Optional[int] = None
        self._cached: Dict[str, Any] = {}

    def _features(self) -> Dict[str, Any]:
        s, kw = self.streams, dict(device=self.device, precision=self.precision)
        bar = dict(progress=self.progress, **kw)
        zeroshot, retrieval = {}, {}
        for name, zs in s.zeroshot_sets.items():
            f = encode_images(self.loaded, zs.data.images, self.batch, desc=f"zero-shot {name}", **bar)
            zeroshot[name] = accuracy(f, zs.data.labels, class_embeddings(self.loaded, zs.class_names, zs.templates, self.batch, **kw))
        for name, cap in s.retrieval_sets.items():
            f = encode_images(self.loaded, cap.images, self.batch, desc=f"retrieval {name}", **bar)
            retrieval[name] = retrieval_recall_folds(f, encode_texts(self.loaded, cap.captions, self.batch, **kw),
                                                     cap.caption_image, cap.folds)
        raw = self.method is not None and self.method.scores_raw_features  # argmax-neutral: rows only rescaled
        return {
            "image": encode_images(self.loaded, self.test_images, self.batch, desc="eval test sets", normalize=not raw, **bar),
            "classes": self._target_classifier(class_embeddings(self.loaded, s.class_names, self.templates, self.batch, **kw)),
            "zeroshot": zeroshot, "retrieval": retrieval,
        }

    def _target_classifier(self, text_classes: torch.Tensor) -> torch.Tensor:
        return self.method.class_features(self.loaded, text_classes) if self.method is not None else text_classes

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised image features of uint8 `images`, computed as evaluation computes them."""
        return encode_images(self.loaded, images, self.batch, device=self.device, precision=self.precision)

    def evaluate(self, row: int, version: int) -> Row:
        """Row `row` of the accuracy matrix and the held-out figures for model state `version`.

        A method that infers the task from a whole test batch is measured twice after training, at the
        evaluation batch size and at batch size 1 (`Row.batch1`); before training (version 0) every such
        method is the pretrained model, measured as any other.
        """
        if version != 0 and self.method is not None and self.method.infers_task_per_batch:
            with encoding_mode(self.loaded.clip):  # one mode check for the row's many small encodings
                row_b = self._routed_row(row, self.batch)
                row_b.batch1 = self._routed_row_each(row)
            return row_b
        if version != self._version:
            self._cached, self._version = self._features(), version
            _finite(self._cached["image"], "image features", row)
            _finite(self._cached["classes"], "class features", row)
        f, acc, own = self._cached, [], []
        for j in range(self.streams.n_experiences):
            lo, hi = self.streams.scored_classes(row, j)
            a, b = self.bounds[j], self.bounds[j + 1]
            scores = self.method.scores(f["image"][a:b], f["classes"]) if self.method is not None else None
            if scores is not None:
                _finite(scores, "scores", row)
                own.append(scores)
            acc.append(accuracy(f["image"][a:b], self.test_labels[a:b], f["classes"], lo, hi) if scores is None
                       else top1_accuracy(scores[:, lo:hi], self.test_labels[a:b], lo))
        if self.method is not None and self.method.scores_raw_features and len(own) == self.streams.n_experiences:
            # the method's own scores over every class (its class features score another space than raw images)
            per_class = per_class_accuracy(torch.cat(own), self.test_labels, torch.eye(len(f["classes"])))
        else:
            per_class = per_class_accuracy(f["image"], self.test_labels, f["classes"])
        return Row(acc, dict(f["zeroshot"]), {k: dict(v) for k, v in f["retrieval"].items()}, per_class)

    def _routed_row(self, row: int, batch: int) -> Row:
        """Row `row` under batch-wise task inference: each image set in batches of `batch` within the set
        (never straddling two sets); each batch's images, and the texts scored against them, encoded
        under the route the method infers from that batch (texts once per route key)."""
        s, kw = self.streams, dict(device=self.device, precision=self.precision)
        texts: Dict[Any, torch.Tensor] = {}

        def scores(images: torch.Tensor, what: Any, encode: Callable[[], torch.Tensor]) -> torch.Tensor:
            routes: List[Any] = []

            def per_batch(chunk: torch.Tensor):
                routes.append(self.method.route_batch(self.loaded, chunk))
                return routes[-1]

            features = encode_images(self.loaded, images, batch, per_batch=per_batch, progress=self.progress,
                                     desc=f"eval {what[0]} {what[1]} (batches of {batch})", **kw)
            out = []
            for i, route in enumerate(routes):
                key = (what, route.key)
                if key not in texts:
                    with route:
                        texts[key] = encode()
                out.append(features[i * batch:(i + 1) * batch] @ texts[key].T)
            return _finite(torch.cat(out), "scores", row) if out else torch.empty(0, 0)

        def classes(names: List[str], templates: Any) -> Callable[[], torch.Tensor]:
            tokens = self.loaded.tokenizer(class_prompts(names, templates))  # once, whatever the routes
            return lambda: class_embeddings(self.loaded, names, templates, self.batch, tokens=tokens, **kw)

        acc = []
        for j, test in enumerate(s.test):
            lo, hi = s.scored_classes(row, j)
            acc.append(top1_accuracy(scores(test.images, ("classes", lo, hi), classes(s.class_names[lo:hi], s.class_templates[lo:hi])),
                                     test.labels, lo))
        zeroshot = {name: top1_accuracy(scores(zs.data.images, ("zeroshot", name), classes(zs.class_names, zs.templates)),
                                        zs.data.labels) for name, zs in s.zeroshot_sets.items()}
        retrieval = {}
        for name, cap in s.retrieval_sets.items():
            tokens = self.loaded.tokenizer(list(cap.captions))
            sim = scores(cap.images, ("retrieval", name),
                         lambda: encode_texts(self.loaded, cap.captions, self.batch, tokens=tokens, **kw))
            retrieval[name] = similarity_recall_folds(sim, cap.caption_image, cap.folds)
        return Row(acc, zeroshot, retrieval)


    def _routed_row_each(self, row: int) -> Row:
        """Row `row` at evaluation batch size 1, computed in batches: every image's own route (`route_each`,
        as `route_batch` gives it for that image alone), then the images of one route group encoded together
        under their merged route and the texts once per route key (`texts_under_routes`). The same numbers
        as `_routed_row(row, 1)`, which encodes one image at a time."""
        s, kw = self.streams, dict(device=self.device, precision=self.precision)
        loaded, method, batch = self.loaded, self.method, self.batch
        texts: Dict[Any, torch.Tensor] = {}

        def scores(images: torch.Tensor, what: Any, job: Dict[str, Any]) -> torch.Tensor:
            if len(images) == 0:
                return torch.empty(0, 0)
            routes: List[Any] = []
            for a in range(0, len(images), batch):
                routes += method.route_each(loaded, images[a:a + batch])
            groups: Dict[Any, List[int]] = {}
            for i, route in enumerate(routes):
                groups.setdefault(route.image_group, []).append(i)
            features: List[Optional[torch.Tensor]] = [None] * len(images)
            for members in groups.values():
                for a in range(0, len(members), batch):
                    idx = members[a:a + batch]
                    with method.merge_routes([routes[i] for i in idx]):
                        f = encode_images(loaded, images[torch.tensor(idx)], len(idx), **kw)
                    for i, fi in zip(idx, f):
                        features[i] = fi
            firsts: Dict[Any, Any] = {}
            for route in routes:
                firsts.setdefault((what, route.key), route)
            todo = [k for k in firsts if k not in texts]
            encoded = method.texts_under_routes([firsts[k] for k in todo], job["encode"], job["tokens"],
                                                job["encode_tokens"], job["finish"])
            texts.update(zip(todo, encoded))
            out = torch.stack([features[i] @ texts[(what, route.key)].T for i, route in enumerate(routes)])
            return _finite(out, "scores", row)

        def encode_tokens(chunk: torch.Tensor) -> torch.Tensor:
            return encode_texts(loaded, [""] * len(chunk), len(chunk), tokens=chunk, **kw)

        def classes(names: List[str], templates: Any) -> Dict[str, Any]:
            per_class = per_class_templates(len(names), templates)
            tokens = loaded.tokenizer(class_prompts(names, per_class))
            return {"tokens": tokens, "encode_tokens": encode_tokens,
                    "encode": lambda: class_embeddings(loaded, names, templates, batch, tokens=tokens, **kw),
                    "finish": lambda raw: prompt_ensemble(raw, per_class)}

        acc = []
        for j, test in enumerate(s.test):
            lo, hi = s.scored_classes(row, j)
            acc.append(top1_accuracy(scores(test.images, ("classes", lo, hi),
                                            classes(s.class_names[lo:hi], s.class_templates[lo:hi])), test.labels, lo))
        zeroshot = {name: top1_accuracy(scores(zs.data.images, ("zeroshot", name), classes(zs.class_names, zs.templates)),
                                        zs.data.labels) for name, zs in s.zeroshot_sets.items()}
        retrieval = {}
        for name, cap in s.retrieval_sets.items():
            tokens = loaded.tokenizer(list(cap.captions))
            job = {"tokens": tokens, "encode_tokens": encode_tokens, "finish": lambda raw: raw,
                   "encode": lambda: encode_texts(loaded, cap.captions, batch, tokens=tokens, **kw)}
            retrieval[name] = similarity_recall_folds(scores(cap.images, ("retrieval", name), job), cap.caption_image, cap.folds)
        return Row(acc, zeroshot, retrieval)


def stream_texts(streams: Streams) -> List[str]:
    """Every text a run of `streams` encodes with the model's own prompts: each class's training prompt and
    evaluation prompts, the zero-shot sets' prompts, the retrieval captions and the reference sentences."""
    texts = streams.train_prompts() + class_prompts(streams.class_names, streams.class_templates)
    for zs in streams.zeroshot_sets.values():
        texts += class_prompts(zs.class_names, zs.templates)
    for cap in [*streams.retrieval_sets.values(), *([streams.reference] if streams.reference is not None else [])]:
        texts += list(cap.captions)
    return texts


def row_zero_key(spec: RunSpec, device: str, templates: Optional[List[List[str]]] = None) -> str:
    """What row 0 depends on: the model and its weights, the protocol, the fingerprint of its data, the code
    that turns data into numbers, the evaluation settings, and the target classifier's templates when a
    method chooses its own (`templates`).

    Not the method otherwise: before any training every method holds the same pretrained model.
    """
    what = {"model": spec.model, "protocol": spec.protocol, "protocol_version": spec.protocol_version,
            "params": spec.protocol_params, "data": spec.data, "code": spec.code, "seed": spec.seed,
            "eval": spec.eval, "precision": spec.precision, "device": device.split(":")[0]}
    if templates is not None:
        what["templates"] = [list(t) for t in templates]
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stream_shape(streams: Streams) -> Dict[str, Any]:
    """The sizes and set names a row must match: checked when a cached row 0 is read back."""
    return {"test_sizes": [len(t) for t in streams.test],
            "zeroshot": {k: len(v.data) for k, v in streams.zeroshot_sets.items()},
            "retrieval": {k: [len(v.images), len(v.captions)] for k, v in streams.retrieval_sets.items()}}


def _cached_row(path: Path, shape: Dict[str, Any]) -> Optional[Row]:
    """The cached row 0 at `path` if it is readable and measured on streams of this shape, else None."""
    try:
        doc = json.loads(path.read_text())
        row = Row(doc["acc"], doc["zeroshot"], doc["retrieval"], doc.get("class_acc_all"))
    except (OSError, ValueError, TypeError, KeyError):
        return None  # unreadable: measure again
    fits = (doc.get("shape") == shape and len(row.acc) == len(shape["test_sizes"])
            and set(row.zeroshot) == set(shape["zeroshot"]) and set(row.retrieval) == set(shape["retrieval"]))
    return row if fits else None


def row_zero(spec: RunSpec, store: ResultStore, evaluator: Evaluator, device: str, share: bool = True) -> Row:
    """Row 0 from the results folder's cache, or measured once and cached for every other method.

    A cached row is used only when it was measured on streams of the same shape (test-set sizes, held-out
    set names and sizes); otherwise it is measured again and the cache rewritten. `share` False measures it
    every time (what `clipbench bench` compares evaluation sharing against)."""
    if not share:
        return evaluator.evaluate(0, version=0)
    own = evaluator.templates if evaluator.templates != evaluator.streams.class_templates else None
    path = store.root / "cache" / f"row0-{row_zero_key(spec, device, own)}.json"
    shape = stream_shape(evaluator.streams)
    row = _cached_row(path, shape) if path.is_file() else None
    if row is None:
        row = evaluator.evaluate(0, version=0)
        atomic_write_json(path, {"acc": row.acc, "zeroshot": row.zeroshot, "retrieval": row.retrieval,
                                 "class_acc_all": row.class_acc_all, "shape": shape})
    return row
