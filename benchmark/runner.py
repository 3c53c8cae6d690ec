"""The runner: plans method x protocol x seed runs of a suite and executes them, resumably.

Each run: build the protocol's streams, load the model, evaluate row 0 (before training), then
for each experience train, evaluate, and save progress plus a checkpoint. A killed run resumes
from its last finished experience; seeds are re-derived per experience so a resumed run ends
with the same numbers as an uninterrupted one. A complete record is never rewritten.
"""

from __future__ import annotations

import hashlib
import json
import random
import resource
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from clipbench.protocols.catalog import ProtocolDef, SuiteDef, get_protocol, get_suite
from clipbench.protocols.data import Streams
from clipbench.protocols.metrics import compute_metrics

from . import claims, provenance
from .decode import decode_streams
from .errors import ClipbenchError
from .evaluate import (accuracy, class_embeddings, class_prompts, encode_images, encode_texts, per_class_accuracy,
                       retrieval_recall_folds, similarity_recall_folds, top1_accuracy)
from .models import LoadedModel, load_model
from .spec import RunSpec, dotted_tree, known_settings, resolve_specs, user_overrides
from .store import SCHEMA_VERSION, ResultStore, atomic_write_json


def _method_registry():
    from clipbench.methods.base import METHODS  # imports Avalanche; only when methods are needed

    return METHODS


# Evaluation sharing (row 0 per suite, an untrained model's features reused); `clipbench bench` turns it
# off to measure what it saves.
SHARE_EVALUATION = True


def shard(specs: Sequence[RunSpec], index: int, count: int) -> List[RunSpec]:
    """Part `index` of `count` disjoint parts of the plan (round robin over the plan's order)."""
    if count < 1 or not 0 <= index < count:
        raise ClipbenchError(f"--shard {index}/{count}: need 0 <= i < N")
    return [s for k, s in enumerate(specs) if k % count == index]


def plan(suite_name: str, methods: Optional[Sequence[str]] = None, protocols: Optional[Sequence[str]] = None,
         seeds: Optional[Sequence[int]] = None, config_file: Optional[str] = None,
         sets: Sequence[str] = (), strict_weights: bool = True) -> List[RunSpec]:
    """Every run spec of the selection; validates all names and settings before anything runs."""
    suite: SuiteDef = get_suite(suite_name)
    registry = _method_registry()
    if methods:
        method_names = list(methods)
    elif suite.methods == "all":
        method_names = registry.names()
    else:
        method_names = list(suite.methods)
    method_classes = [registry.get(m) for m in method_names]
    protocol_defs: List[ProtocolDef] = [get_protocol(p) for p in (protocols or suite.protocols)]
    known = known_settings({m.name: m.config_fields() for m in method_classes},
                           {p.name: p for p in protocol_defs})
    # the suite's `settings:` may name any registered method and any of its protocols, run now or not
    suite_known = known_settings({m: registry.get(m).config_fields() for m in registry.names()},
                                 {p.name: p for p in protocol_defs + [get_protocol(n) for n in suite.protocols]})
    dotted_tree(suite.settings, suite_known, f"the `settings:` of suite '{suite.name}'")
    overrides = user_overrides(config_file, sets, known)
    seeds = list(seeds) if seeds else suite.seeds
    specs: List[RunSpec] = []
    fingerprints: Dict[str, str] = {}  # each dataset's files are read once per plan
    for protocol in protocol_defs:
        for method_cls in method_classes:
            if protocol.kind not in method_cls.supports:
                continue
            specs.extend(resolve_specs(suite, method_cls, protocol, seeds, overrides, strict_weights, fingerprints))
    return specs


def seed_everything(*parts: Any) -> None:
    """Seed python, numpy and torch from a tuple (e.g. (seed, experience))."""
    seed = int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little") & 0x7FFFFFFF
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def peak_rss_mb() -> float:
    """The process's resident-memory high-water mark (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class PeakMemory:
    """Peak resident memory of this process while a block runs, sampled every 0.1 s by a thread
    (ru_maxrss only ever grows over a whole grid, so it cannot say what one run needed)."""

    def __init__(self, interval: float = 0.1):
        import threading

        import psutil

        self._proc, self._interval, self.peak = psutil.Process(), interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self._stop.wait(self._interval)

    def __enter__(self) -> "PeakMemory":
        self.peak = self._proc.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def state_bytes(obj: Any, _seen: Optional[set] = None) -> int:
    """Bytes of the tensors a method keeps (teachers, buffers, exemplars, memories), found by walking
    its attributes; the model and the protocol's streams are not the method's to count."""
    from torch import nn

    seen = _seen if _seen is not None else set()
    if id(obj) in seen or isinstance(obj, (nn.Module, Streams)):
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(state_bytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(state_bytes(v, seen) for v in obj)
    if hasattr(obj, "__dict__") and not isinstance(obj, type):
        return sum(state_bytes(v, seen) for v in vars(obj).values())
    return 0


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
        self.test_images = torch.cat([t.images for t in streams.test])
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
        return {
            "image": encode_images(self.loaded, self.test_images, self.batch, desc="eval test sets", **bar),
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
            row_b = self._routed_row(row, self.batch)
            row_b.batch1 = self._routed_row(row, 1)
            return row_b
        if version != self._version:
            self._cached, self._version = self._features(), version
        f, acc = self._cached, []
        for j in range(self.streams.n_experiences):
            lo, hi = self.streams.scored_classes(row, j)
            a, b = self.bounds[j], self.bounds[j + 1]
            scores = self.method.scores(f["image"][a:b], f["classes"]) if self.method is not None else None
            acc.append(accuracy(f["image"][a:b], self.test_labels[a:b], f["classes"], lo, hi) if scores is None
                       else top1_accuracy(scores[:, lo:hi], self.test_labels[a:b], lo))
        return Row(acc, dict(f["zeroshot"]), {k: dict(v) for k, v in f["retrieval"].items()},
                   per_class_accuracy(f["image"], self.test_labels, f["classes"]))

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

            features = encode_images(self.loaded, images, batch, per_batch=per_batch, **kw)
            out = []
            for i, route in enumerate(routes):
                key = (what, route.key)
                if key not in texts:
                    with route:
                        texts[key] = encode()
                out.append(features[i * batch:(i + 1) * batch] @ texts[key].T)
            return torch.cat(out) if out else torch.empty(0, 0)

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


def _row_zero(spec: RunSpec, store: ResultStore, evaluator: "Evaluator", device: str) -> "Row":
    """Row 0 from the results folder's cache, or measured once and cached for every other method.

    A cached row is used only when it was measured on streams of the same shape (test-set sizes, held-out
    set names and sizes); otherwise it is measured again and the cache rewritten."""
    if not SHARE_EVALUATION:
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


def _empty_raw(streams: Streams) -> Dict[str, Any]:
    return {
        "acc_matrix": [], "test_sizes": [len(t) for t in streams.test],
        "train_sizes": [len(t) for t in streams.train], "experience_classes": streams.experience_classes,
        "class_names": streams.class_names,
        "zeroshot": {k: [] for k in streams.zeroshot_sets},
        "retrieval": {k: {} for k in streams.retrieval_sets},
        "train_seconds": [], "eval_seconds": [], "class_acc_all": [],
    }


def _append_row(raw: Dict[str, Any], row: Row, seconds: float) -> None:
    _append_measures(raw, row)
    if row.batch1 is not None:
        _append_measures(raw["batch1"], row.batch1)
    raw["eval_seconds"].append(seconds)
    # per row; a run resumed from a checkpoint of older code has none for its earlier rows
    raw.setdefault("class_acc_all", [None] * (len(raw["acc_matrix"]) - 1)).append(row.class_acc_all)


def _append_measures(raw: Dict[str, Any], row: Row) -> None:
    raw["acc_matrix"].append(row.acc)
    for k, v in row.zeroshot.items():
        raw["zeroshot"][k].append(v)
    for k, recalls in row.retrieval.items():
        for key, v in recalls.items():
            raw["retrieval"][k].setdefault(key, []).append(v)


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def execute_run(spec: RunSpec, store: ResultStore, device: str, progress: bool, argv: List[str],
                quiet: bool = False) -> Dict[str, Any]:
    """Run (or resume) one spec to completion and write its record.

    Bad input (a ClipbenchError: missing data, unreadable weights) propagates and writes nothing.
    Any other exception is a failed run: its record says why, and its checkpoint is kept.
    """
    started = provenance.now()
    wall = time.perf_counter()
    state: Dict[str, Any] = {"raw": None, "trainable": 0, "extra_bytes": 0, "inference_extras": None}
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    try:
        with PeakMemory() as memory:
            _run_experiences(spec, store, device, progress, quiet, state)
        status, error = "complete", None
    except ClipbenchError:
        raise
    except Exception as err:
        status = "failed"
        error = {"type": type(err).__name__, "message": str(err), "traceback": traceback.format_exc()}
    raw = state["raw"] or {}
    metrics = compute_metrics(raw) if status == "complete" else {"values": {}, "versions": {}}
    record = {
        "schema_version": SCHEMA_VERSION,
        "status": status,
        "id": spec.id,
        "spec": spec.to_dict(),
        "raw": raw,
        "metrics": metrics["values"],
        "metric_versions": metrics["versions"],
        "costs": {
            "trainable_params": state["trainable"],
            # the most memory the method kept between experiences (teachers, buffers, exemplars)
            "extra_memory_mb": round(state["extra_bytes"] / 2**20, 3),
            "peak_rss_mb": round(memory.peak / 2**20, 1) if status == "complete" else None,  # while this run executed
            "process_peak_rss_mb": round(peak_rss_mb(), 1),  # high-water mark of the whole process so far
            "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if device.startswith("cuda") else None,
            "wall_seconds": round(time.perf_counter() - wall, 3),
            "inference_extras": state["inference_extras"],  # what inference needs beyond the model ("": nothing)
        },
        "provenance": {**provenance.collect(device, spec.precision, argv), "started": started, "ended": provenance.now()},
        "error": error,
    }
    store.write_record(spec, record)
    if status == "complete":
        store.clear_progress(spec)
    return record


def _run_experiences(spec: RunSpec, store: ResultStore, device: str, progress: bool, quiet: bool,
                     state: Dict[str, Any]) -> None:
    """Build, evaluate row 0 (or resume), then train and evaluate experience by experience.

    Fills `state["raw"]` as it goes, so a crash still leaves what was measured.
    """
    from .engine import CLIPClassifier, set_trainable, train_experience

    protocol = get_protocol(spec.protocol)
    method_cls = _method_registry().get(spec.method)
    streams = protocol.build(spec.data_root, spec.seed, spec.protocol_params)
    seed_everything(spec.seed, "model")  # random-init models are a function of the seed
    loaded = load_model(spec.model["arch"], spec.model.get("pretrained"), device)
    decode_streams(streams, loaded.preprocess, progress)  # image files -> the model's own preprocessing
    model = CLIPClassifier(loaded, streams.class_names, streams.train_templates()).to(device)
    model.eval()
    method = method_cls(method_cls.Config(**spec.method_config))
    method.setup(model, streams)
    state["inference_extras"] = method.inference_extras()
    model.to(device)  # a method may have added modules
    state["trainable"] = set_trainable(model, method) if method_cls.trains else 0
    evaluator = Evaluator(streams, loaded, spec, device, progress, method)

    checkpoint = store.load_checkpoint(spec)
    raw, start = (checkpoint["raw"], checkpoint["completed"]) if checkpoint else (_empty_raw(streams), 0)
    state["raw"] = raw
    if checkpoint:
        model.load_checkpoint_state(checkpoint["model"])
        method.load_state_dict(checkpoint["method"])
        _log(f"  resuming from experience {start}/{streams.n_experiences}", quiet)
    else:
        if method_cls.infers_task_per_batch:  # the same measures at batch size 1
            raw["batch1"] = {k: _empty_raw(streams)[k] for k in ("acc_matrix", "zeroshot", "retrieval")}
        t = time.perf_counter()
        row = _row_zero(spec, store, evaluator, device)
        if method_cls.infers_task_per_batch:  # before training every route is the pretrained model
            row.batch1 = row.copy()
        _append_row(raw, row, time.perf_counter() - t)

    for exp in range(start, streams.n_experiences):
        seed_everything(spec.seed, exp)
        seconds = 0.0
        data = method.training_data(streams, exp)
        if data is not None and method_cls.trains:
            classes = streams.experience_classes[exp]
            active = max(classes[-1] + 1, int(data.labels.max()) + 1)  # a joint learner sees every class at once
            seconds = train_experience(model, method, data, exp, active, spec.train, device, progress,
                                       experience_classes=streams.experience_classes)
        elif data is not None:  # learning without gradients (analytic methods; nothing for zero-shot)
            t = time.perf_counter()
            method.fit_experience(data, exp, evaluator.image_features)
            seconds = time.perf_counter() - t
        raw["train_seconds"].append(seconds)
        state["extra_bytes"] = max(state["extra_bytes"], state_bytes(method))
        t = time.perf_counter()
        # an untrained model keeps its features
        version = exp + 1 if (method_cls.trains or not SHARE_EVALUATION) else 0
        _append_row(raw, evaluator.evaluate(exp + 1, version), time.perf_counter() - t)
        store.save_progress(spec, {"spec_id": spec.id, "completed": exp + 1, "raw": raw,
                                   "model": model.checkpoint_state(), "method": method.state_dict()},
                            exp + 1, streams.n_experiences)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class Summary:
    ran: int = 0
    skipped: int = 0
    failed: int = 0
    claimed: int = 0  # held by another live runner

    def add(self, outcome: str) -> None:
        """Count one `run_one` outcome ("ran", "skipped", "claimed" or "failed")."""
        setattr(self, outcome, getattr(self, outcome) + 1)


def unfinished(specs: Sequence[RunSpec], store: ResultStore) -> Tuple[List[RunSpec], Summary]:
    """The specs without a complete record, and a summary that already counts the others as skipped."""
    todo = [s for s in specs if not store.is_complete(s)]
    return todo, Summary(skipped=len(specs) - len(todo))


def execute(specs: Sequence[RunSpec], store: ResultStore, device: str, progress: bool, argv: List[str],
            quiet: bool = False) -> Summary:
    """Run every spec that has no complete record, in order. Returns counts."""
    provenance.code_version()  # pin the commit of the code this process loaded
    summary = Summary()
    for i, spec in enumerate(specs, 1):
        summary.add(run_one(spec, store, device, progress, argv, quiet, label=f"[{i}/{len(specs)}]"))
    return summary


def run_one(spec: RunSpec, store: ResultStore, device: str, progress: bool, argv: List[str], quiet: bool,
            label: str = "") -> str:
    """One run under its claim, whatever executes it (this process, a Slurm job, a Ray task).

    Returns "ran", "skipped" (already complete), "claimed" (another live runner has it) or "failed".
    """
    label = f"{label} {spec.method} x {spec.protocol} x {spec.model['arch']} seed {spec.seed} ({spec.id})".strip()
    if store.is_complete(spec):
        _log(f"{label}: complete, skipped", quiet)
        return "skipped"
    claim = store.claim_path(spec)
    if not claims.acquire(claim):
        _log(f"{label}: another runner holds it, skipped", quiet)
        return "claimed"
    try:
        if store.is_complete(spec):  # finished by another runner between our two looks
            return "skipped"
        _log(f"{label}: running", quiet)
        record = execute_run(spec, store, device, progress, argv, quiet)
    finally:
        claims.release(claim)
    if record["status"] == "complete":
        shown = {k: round(record["metrics"][k], 4) for k in ("last", "avg", "zs_retention", "i2t_r1") if k in record["metrics"]}
        _log(f"{label}: complete in {record['costs']['wall_seconds']:.1f}s {shown}", quiet)
        return "ran"
    _log(f"{label}: FAILED: {record['error']['type']}: {record['error']['message']}", quiet)
    return "failed"


def run_state(store: ResultStore, spec: RunSpec) -> str:
    """complete, running (a live claim), corrupt (its record cannot be read), failed, partial (a
    checkpoint exists), stale (only records made on other data or by other data/evaluation code exist)
    or missing."""
    record = store.read_record(spec)
    if record and record.get("status") == "complete":
        return "complete"
    if claims.held_by_other(store.claim_path(spec)):
        return "running"
    if record is None and store.record_problem(spec):
        return "corrupt"
    if store.progress(spec):
        return "partial"
    if record:
        return "failed"
    if store.stale_records(spec):
        return "stale"
    return "missing"
