"""The runner: plans method x protocol x seed runs of a suite and executes them, resumably.

Each run: build the protocol's streams, load the model, evaluate row 0 (before training), then
for each experience train, evaluate, and save progress plus a checkpoint. A killed run resumes
from its last finished experience; seeds are re-derived per experience so a resumed run ends
with the same numbers as an uninterrupted one. A complete record is never rewritten.
"""

from __future__ import annotations

import hashlib
import random
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from clipbench.protocols.catalog import get_protocol
from clipbench.protocols.metrics import compute_metrics
from clipbench.streams import Streams

from . import claims, provenance
from .costs import PeakMemory, accumulated, peak_rss_mb, state_bytes
from .decode import decode_streams
from .errors import ClipbenchError, Diverged, GridError, StorageError
from .evaluator import Evaluator, Row, row_zero, stream_texts
from .image_store import ImageStore, cache_dir
from .models import LoadedModel, load_model
from .plan import method_registry, not_applicable
from .recipes import experience_names
from .spec import RunSpec
from .store import SCHEMA_VERSION, ResultStore


@dataclass(frozen=True)
class RunOptions:
    """How runs execute, never what they compute (records are the same either way).

    `share_evaluation`: reuse row 0 across methods and an untrained model's features across rows
    (`clipbench bench` turns it off to measure what it saves). `on_model_loaded`: called with each
    loaded model (bench counts the images its vision tower is asked for). `cache_dir`: where decoded
    images are kept (None: `image_store.default_cache_dir(results)`); `workers`: decoding processes
    (None: every core this process may use). `log`: Avalanche loggers for watching training
    (`clipbench.avalanche_api.TrainingLog`)."""

    share_evaluation: bool = True
    on_model_loaded: Optional[Callable[[LoadedModel], None]] = None
    cache_dir: Optional[str] = None
    workers: Optional[int] = None
    log: Tuple[str, ...] = ()  # Avalanche's loggers (`--log`), writing under the run's folder


def seed_everything(*parts: Any) -> None:
    """Seed python, numpy and torch from a tuple (e.g. (seed, experience))."""
    seed = int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little") & 0x7FFFFFFF
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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
                quiet: bool = False, options: Optional["RunOptions"] = None) -> Dict[str, Any]:
    """Run (or resume) one spec to completion and write its record.

    A non-finite loss or feature (`Diverged`) ends the run as `diverged`, naming the experience and step;
    any other exception is a failed run: a crash, or a ClipbenchError while the run is built (missing data,
    a missing reference set, settings this run's method or data refuse), whose one-line message is its error.
    Either way the record says why, the checkpoint is kept, and the other runs of the grid go on (bad input
    the plan can see, such as an unknown method or `--set` key, is refused before any run and writes nothing).
    """
    started = provenance.now()
    wall = time.perf_counter()
    # prior: the costs of the run's earlier processes, from its checkpoint
    state: Dict[str, Any] = {"raw": None, "trainable": 0, "extra_bytes": 0, "inference_extras": None, "exemplars": None,
                             "prior": {}}
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    gpu = (lambda: torch.cuda.max_memory_allocated()) if device.startswith("cuda") else (lambda: None)
    try:
        with PeakMemory() as memory:
            state["costs"] = lambda: accumulated(state["prior"], time.perf_counter() - wall, memory.peak, gpu(),
                                                 state["extra_bytes"])
            _run_experiences(spec, store, device, progress, quiet, state, options or RunOptions())
        status, error = "complete", None
    except Diverged as err:
        status = "diverged"
        error = {"type": "Diverged", "message": str(err), "experience": err.experience, "step": err.step}
    except (StorageError, GridError):  # the results folder, the disk, the model: every run would meet it (exit 2)
        raise
    except ClipbenchError as err:  # bad data or settings of this run: its message says what and how to fix it
        status = "failed"
        error = {"type": type(err).__name__, "message": str(err), "traceback": None}
    except Exception as err:
        status = "failed"
        error = {"type": type(err).__name__, "message": str(err), "traceback": traceback.format_exc()}
    finally:
        if state.get("log"):
            state["log"].close()
    raw = state["raw"] or {}
    costs = state["costs"]()  # over every process of the run
    reported = get_protocol(spec.protocol).metrics
    metrics = compute_metrics(raw, reported) if status == "complete" else {"values": {}, "versions": {}}
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
            "extra_memory_mb": round(costs["extra_bytes"] / 2**20, 3),
            # while this run executed, the most of any of its processes
            "peak_rss_mb": round(costs["peak_rss_bytes"] / 2**20, 1) if status == "complete" else None,
            "process_peak_rss_mb": round(peak_rss_mb(), 1),  # high-water mark of the whole (last) process so far
            "peak_gpu_mb": round(costs["peak_gpu_bytes"] / 2**20, 1) if costs["peak_gpu_bytes"] is not None else None,
            "wall_seconds": round(costs["wall_seconds"], 3),  # summed over the run's processes
            # of which training and evaluation (`raw.train_seconds`, `raw.eval_seconds` summed): the rest is the
            # run's own overhead (building, loading, checkpoints)
            "train_seconds": round(sum(raw.get("train_seconds") or []), 3),
            "eval_seconds": round(sum(raw.get("eval_seconds") or []), 3),
            "processes": costs["processes"],  # 1, plus one per resume
            "inference_extras": state["inference_extras"],  # what inference needs beyond the model ("": nothing)
            "exemplars": state["exemplars"],  # training images the method keeps, after its last experience
        },
        "provenance": {**provenance.collect(device, spec.precision, argv), "started": started, "ended": provenance.now()},
        # per dataset with published sizes: the reference split, or how it differs (`clipbench data check`)
        "data_check": _data_check(spec),
        "error": error,
    }
    store.write_record(spec, record)
    if status == "complete":
        store.clear_progress(spec)
    return record


def _data_check(spec: RunSpec) -> Dict[str, str]:
    """`clipbench data check`'s verdicts on the run's datasets; a check that cannot run says why, never fails the run."""
    from .data_check import record_verdicts

    try:
        return record_verdicts(spec.protocol, spec.protocol_params, spec.data_root)
    except Exception as err:  # the run itself already read its data: this is only a note
        return {"error": f"{type(err).__name__}: {err}"}


def run_streams(spec: RunSpec) -> Streams:
    """The streams a run of `spec` reads: its protocol built for its seed, with the reference set only for a
    method that uses one (the set declared for it)."""
    reference_for = spec.method if method_registry().get(spec.method).uses_reference else None
    return get_protocol(spec.protocol).build(spec.data_root, spec.seed, spec.protocol_params,
                                             reference_for=reference_for)


def decode_run_images(streams: Streams, loaded: LoadedModel, options: RunOptions, root: Path, progress: bool) -> None:
    """Image files -> the model's own preprocessing, decoded once per machine (in the cache folder of `options`,
    else under the results folder `root`) and memory-mapped, in place in `streams`."""
    decode_streams(streams, loaded.preprocess, progress,
                   store=ImageStore(cache_dir(options.cache_dir, root), options.workers, progress))


def _run_experiences(spec: RunSpec, store: ResultStore, device: str, progress: bool, quiet: bool,
                     state: Dict[str, Any], options: "RunOptions") -> None:
    """Build, evaluate row 0 (or resume), then train and evaluate experience by experience.

    Fills `state["raw"]` as it goes, so a crash still leaves what was measured.
    """
    from .engine import CLIPClassifier, set_trainable, train_experience

    protocol = get_protocol(spec.protocol)
    method_cls = method_registry().get(spec.method)
    streams = run_streams(spec)
    names = experience_names(protocol, spec.protocol_params)  # for train.per_experience by dataset name
    seed_everything(spec.seed, "model")  # random-init models are a function of the seed
    try:
        loaded = load_model(spec.model["arch"], spec.model.get("pretrained"), device)
    except ClipbenchError as err:  # the same for every run of the grid
        raise GridError(str(err)) from None
    if options.on_model_loaded is not None:
        options.on_model_loaded(loaded)
    decode_run_images(streams, loaded, options, store.root, progress)
    if loaded.warm_texts is not None:  # a cached text tower: the run's texts in one pass (changes no number)
        loaded.warm_texts(stream_texts(streams))
    model = CLIPClassifier(loaded, streams.class_names, streams.train_templates()).to(device)
    model.eval()
    method = method_cls(method_cls.Config(**spec.method_config))
    method.limit_steps = int(spec.limit.get("steps", 0))
    method.setup(model, streams)
    state["inference_extras"] = method.inference_extras()
    state["exemplars"] = method.exemplar_count()
    model.to(device)  # a method may have added modules
    state["trainable"] = set_trainable(model, method) if method_cls.trains else 0
    evaluator = Evaluator(streams, loaded, spec, device, progress, method)
    if options.log and method_cls.trains:
        from .avalanche_api import TrainingLog

        state["log"] = TrainingLog(options.log, store.run_dir(spec) / "logs", spec_label(spec), spec.to_dict())

    checkpoint = store.load_checkpoint(spec)
    raw, start = (checkpoint["raw"], checkpoint["completed"]) if checkpoint else (_empty_raw(streams), 0)
    state["raw"] = raw
    if checkpoint:
        model.load_checkpoint_state(checkpoint["model"])
        method.load_state_dict(checkpoint["method"])
        state["exemplars"] = method.exemplar_count()
        state["prior"] = checkpoint.get("costs") or {}  # checkpoints of older code carry none
        _log(f"  resuming from experience {start}/{streams.n_experiences}", quiet)
    else:
        if method_cls.infers_task_per_batch:  # the same measures at batch size 1
            raw["batch1"] = {k: _empty_raw(streams)[k] for k in ("acc_matrix", "zeroshot", "retrieval")}
        t = time.perf_counter()
        row = row_zero(spec, store, evaluator, device, options.share_evaluation)
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
                                       experience_classes=streams.experience_classes, log=state.get("log"),
                                       name=names[exp] if names and exp < len(names) else None,
                                       limit_steps=method.limit_steps)
        elif data is not None:  # learning without gradients (analytic methods; nothing for zero-shot)
            t = time.perf_counter()
            method.fit_experience(data, exp, evaluator.image_features)
            seconds = time.perf_counter() - t
        raw["train_seconds"].append(seconds)
        state["extra_bytes"] = max(state["extra_bytes"], state_bytes(method))
        state["inference_extras"] = method.inference_extras()  # as it stands after learning (sizes known by now)
        state["exemplars"] = method.exemplar_count()
        t = time.perf_counter()
        # an untrained model keeps its features
        version = exp + 1 if (method_cls.trains or not options.share_evaluation) else 0
        _append_row(raw, evaluator.evaluate(exp + 1, version), time.perf_counter() - t)
        if checkpoint_due(exp + 1, streams.n_experiences):
            store.save_progress(spec, {"spec_id": spec.id, "completed": exp + 1, "raw": raw,
                                       "costs": state["costs"](), "model": model.checkpoint_state(),
                                       "method": method.state_dict()}, exp + 1, streams.n_experiences)


def checkpoint_due(completed: int, total: int) -> bool:
    """Whether a checkpoint is saved after `completed` of `total` experiences: not after the last, which the
    record follows at once (a crash in between redoes that experience from the checkpoint before it, to the
    same numbers). Tests that inspect the final state patch it to always save."""
    return completed < total


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class Summary:
    ran: int = 0
    skipped: int = 0
    failed: int = 0
    claimed: int = 0  # held by another live runner
    diverged: int = 0
    na: int = 0  # not applicable by the method's declaration (never run, never a failure)
    problems: List[str] = field(default_factory=list)  # "<run>: <why>" of each failed or diverged run

    def add(self, outcome: str) -> None:
        """Count one `run_one` outcome ("ran", "skipped", "claimed", "failed", "diverged" or "na")."""
        setattr(self, outcome, getattr(self, outcome) + 1)


def not_applicable_record(spec: RunSpec, reason: str, argv: Sequence[str]) -> Dict[str, Any]:
    """The record of a pair the method declares it cannot run: `status: n/a` and why (the leaderboard shows it)."""
    return {"schema_version": SCHEMA_VERSION, "status": "n/a", "id": spec.id, "spec": spec.to_dict(), "reason": reason,
            "provenance": {"argv": list(argv), "ended": provenance.now()}, "error": None}


def needs_write(spec: RunSpec, store: ResultStore) -> bool:
    """Whether running `spec` would write: it has no complete record, or (n/a) no record saying so yet."""
    reason = not_applicable(spec)
    record = store.read_record(spec) or {}
    if reason is not None:
        return not (record.get("status") == "n/a" and record.get("reason") == reason)
    return record.get("status") != "complete"


def mark_not_applicable(spec: RunSpec, store: ResultStore, argv: Sequence[str]) -> Optional[str]:
    """The n/a reason of `spec` (None when its method can run it); writes its n/a record when it has none."""
    reason = not_applicable(spec)
    if reason is not None:
        record = store.read_record(spec)
        if not record or record.get("status") != "n/a" or record.get("reason") != reason:
            store.write_record(spec, not_applicable_record(spec, reason, argv))
    return reason


def unfinished(specs: Sequence[RunSpec], store: ResultStore, argv: Sequence[str] = ()) -> Tuple[List[RunSpec], Summary]:
    """The specs without a complete record, and a summary that already counts the others as skipped (or
    n/a: their records are written here)."""
    summary = Summary()
    todo = []
    for s in specs:
        if mark_not_applicable(s, store, argv) is not None:
            summary.na += 1
        elif store.is_complete(s):
            summary.skipped += 1
        else:
            todo.append(s)
    return todo, summary


def execute(specs: Sequence[RunSpec], store: ResultStore, device: str, progress: bool, argv: List[str],
            quiet: bool = False, options: Optional[RunOptions] = None) -> Summary:
    """Run every spec that has no complete record, in order, in this process (a failed run does not stop the
    others). Returns counts, and the failed and diverged runs with why. Several processes at once:
    `clipbench.workers.execute`."""
    provenance.code_version()  # pin the commit of the code this process loaded
    summary = Summary()
    for i, spec in enumerate(specs, 1):
        outcome = run_one(spec, store, device, progress, argv, quiet, label=f"[{i}/{len(specs)}]", options=options)
        count(summary, spec, outcome, store)
    return summary


def count(summary: Summary, spec: RunSpec, outcome: str, store: ResultStore) -> None:
    """Add a run's outcome to `summary`, with why for a failed or diverged run."""
    summary.add(outcome)
    if outcome in ("failed", "diverged"):
        error = (store.read_record(spec) or {}).get("error") or {}
        summary.problems.append(f"{spec_label(spec)}: {outcome}: {error.get('type', '?')}: {error.get('message', '?')}")


def run_task(spec: Dict[str, Any], root: str, device: str, argv: List[str], quiet: bool, label: str,
             options: RunOptions) -> str:
    """`run_one` from plain arguments: what a worker process (`clipbench.workers`) is sent."""
    return run_one(RunSpec.from_dict(spec), ResultStore(root), device, False, argv, quiet, label=label, options=options)


def spec_label(spec: RunSpec) -> str:
    """How a run is named in messages and logs."""
    return f"{spec.method} x {spec.protocol} x {spec.model['arch']} seed {spec.seed} ({spec.id})"


def run_one(spec: RunSpec, store: ResultStore, device: str, progress: bool, argv: List[str], quiet: bool,
            label: str = "", options: Optional[RunOptions] = None) -> str:
    """One run under its claim, whatever executes it (this process, a Slurm job, a Ray task).

    Returns "ran", "skipped" (already complete), "claimed" (another live runner has it), "failed", "diverged"
    or "na" (the method declares it cannot run this spec: an n/a record says why, nothing runs).
    """
    label = f"{label} {spec_label(spec)}".strip()
    reason = mark_not_applicable(spec, store, argv)
    if reason is not None:
        _log(f"{label}: n/a: {reason}", quiet)
        return "na"
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
        record = execute_run(spec, store, device, progress, argv, quiet, options)
    finally:
        claims.release(claim)
    if record["status"] == "complete":
        shown = {k: round(record["metrics"][k], 4) for k in get_protocol(spec.protocol).headline_metrics()
                 if k in record["metrics"]}
        _log(f"{label}: complete in {record['costs']['wall_seconds']:.1f}s {shown}", quiet)
        return "ran"
    if record["status"] == "diverged":
        _log(f"{label}: DIVERGED: {record['error']['message']}; recorded as diverged, never complete "
             "(a lower train.lr or a train.grad_clip may train)", False)  # even with --quiet
        return "diverged"
    _log(f"{label}: FAILED: {record['error']['type']}: {record['error']['message']}", False)
    return "failed"
