"""Records -> leaderboard entries: the runs of one spec but the seed, their metrics recomputed from raw results,
the n/a declarations and the records that could not be read; the tidy table. Every name is escaped where shown."""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
import pandas as pd
from clipbench.protocols.metrics import compute_metrics

from ..store import SPEC_KEYS, ResultStore
from .stats import reported_metrics


LABEL_KEYS = 3  # settings named in a row label before "+N more"


def escape(text: Any) -> str:
    """Markdown-safe text: a crafted name cannot open a link, emphasis, code, math or HTML, or break a table."""
    out = str(text).replace("\\", "\\\\").replace("\r", " ").replace("\n", " ")
    for ch in "|`*_[]<>#!$~&":
        out = out.replace(ch, "\\" + ch)
    return out


def slug(text: str) -> str:
    """A file-name-safe version of a name."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", str(text)).strip("._") or "x"


def spec_settings(spec: Dict[str, Any]) -> Dict[str, Any]:
    """A record's spec as flat settings named like `--set` keys (`train.lr`, `methods.lwf.alpha`,
    `protocols.tiny_shapes.n_experiences`, `model.weights`), without what names the row (suite,
    protocol, method) and without the seed."""
    out: Dict[str, Any] = {}

    def flatten(value: Any, prefix: str) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                flatten(v, f"{prefix}.{k}")
        else:
            out[prefix] = value

    for key, value in spec.items():
        if key in SPEC_KEYS:
            continue
        prefix = {"method_config": f"methods.{spec.get('method')}",
                  "protocol_params": f"protocols.{spec.get('protocol')}"}.get(key, key)
        flatten(value, prefix)
    return out


@dataclass
class Entry:
    """One leaderboard row: the runs of one spec but for the seed, one run per distinct seed."""

    suite: str
    protocol: str
    method: str
    model: str  # the architecture (weights and every other setting are in `settings`)
    key: str  # canonical JSON of the spec without the seed
    settings: Dict[str, Any]
    runs: List[Dict[str, Any]] = field(default_factory=list)
    label: str = ""  # what sets it apart from the method's other entries, e.g. "train.lr=0.05"

    @property
    def name(self) -> str:
        return f"{self.method} [{self.label}]" if self.label else self.method

    @property
    def file_stem(self) -> str:
        stem = f"{slug(self.method)}__{slug(self.model)}"
        return f"{stem}__{hashlib.sha256(self.key.encode()).hexdigest()[:8]}" if self.label else stem

    def values(self, metric: str) -> List[float]:
        vals = [r["metrics"].get(metric) for r in self.runs]
        return [float(v) for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]


@dataclass(frozen=True)
class NotApplicable:
    """A method x protocol the method declares it cannot run (an n/a record): a row whose cells say why."""

    suite: str
    protocol: str
    method: str
    model: str
    reason: str


@dataclass
class Loaded:
    """What the records under a results folder give: entries, the records that could not be read, and the
    pairs declared not applicable."""

    entries: List[Entry]
    corrupt: List[Tuple[str, str]]  # (path relative to the results folder, why)
    not_applicable: List[NotApplicable] = field(default_factory=list)


def _costs(record: Dict[str, Any]) -> Dict[str, Any]:
    costs, device = record.get("costs") or {}, str((record.get("provenance") or {}).get("device", "cpu"))
    return {
        "trainable_params": costs.get("trainable_params"),
        "extra_memory_mb": costs.get("extra_memory_mb"),
        "exemplars": costs.get("exemplars"),  # records from before it was recorded: none
        "peak_mb": costs.get("peak_gpu_mb") if device.startswith("cuda") else costs.get("peak_rss_mb", costs.get("process_peak_rss_mb")),
        "hours": (costs.get("wall_seconds") or 0) / 3600.0,
        "inference_extras": costs.get("inference_extras"),
    }


def _run(path: Path, record: Dict[str, Any]) -> Dict[str, Any]:
    """The parts of a complete record the tables need (the store has checked it holds them); its metrics
    recomputed from `raw` with the current code. Raises ValueError when they cannot be."""
    spec, raw = record["spec"], record["raw"]
    try:
        metrics = compute_metrics(raw, reported_metrics(spec["protocol"]))["values"]
    except (KeyError, IndexError, TypeError, ValueError, ZeroDivisionError) as err:
        raise ValueError(f"raw results unreadable ({type(err).__name__}: {err})") from None
    return {"path": path, "spec": spec, "seed": spec["seed"], "raw": raw, "metrics": metrics,
            "costs": _costs(record), "provenance": record.get("provenance") or {}}


def _label_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict, bool)) or value is None else str(value)
    return text if len(text) <= 16 else text[:12] + "…"


def _label(entries: List[Entry]) -> None:
    """Label the entries of one method by the settings in which they differ (none when alone)."""
    if len(entries) < 2:
        return
    keys = sorted({k for e in entries for k in e.settings})
    differ = [k for k in keys if len({json.dumps(e.settings.get(k, "<unset>"), sort_keys=True, default=str)
                                      for e in entries}) > 1]
    if "model.pretrained" in differ and "model.weights" in differ:
        differ.remove("model.weights")  # the weights' fingerprint says nothing the file name does not
    for e in entries:
        parts = [f"{k}={_label_value(e.settings.get(k, '<unset>'))}" for k in differ]
        e.label = ", ".join(parts[:LABEL_KEYS]) + (f", +{len(parts) - LABEL_KEYS} more" if len(parts) > LABEL_KEYS else "")
    seen: Dict[str, int] = {}
    for e in entries:  # a label cut short may repeat: the spec's hash tells them apart
        seen[e.label] = seen.get(e.label, 0) + 1
    for e in entries:
        if seen[e.label] > 1:
            e.label += f", spec {hashlib.sha256(e.key.encode()).hexdigest()[:6]}"


def load(results: Path, suite: Optional[str] = None) -> Loaded:
    """Entries of the complete records under `results` (of `suite` if given), and the corrupt records.

    A record is corrupt when it is not readable JSON, or complete but without the spec and raw results
    a table needs. Of two complete records of one spec and seed (copies merged from two folders), the
    one that ended last counts.
    """
    store = ResultStore(results)
    readable, corrupt = store.scan_records()
    bad = [(str(p.relative_to(store.root)), why) for p, why in corrupt]
    groups: Dict[Tuple, Entry] = {}
    na: Set[NotApplicable] = set()
    for path, record in readable:
        if record.get("status") == "n/a" and isinstance(record.get("spec"), dict):
            spec = record["spec"]
            if not suite or spec.get("suite") == suite:
                na.add(NotApplicable(str(spec.get("suite")), str(spec.get("protocol")), str(spec.get("method")),
                                     str((spec.get("model") or {}).get("arch")), str(record.get("reason", ""))))
            continue
        if record.get("status") != "complete":
            continue
        try:
            run = _run(path, record)
        except ValueError as err:
            bad.append((str(path.relative_to(store.root)), str(err)))
            continue
        spec = run["spec"]
        if suite and spec["suite"] != suite:
            continue
        key = json.dumps({k: v for k, v in spec.items() if k != "seed"}, sort_keys=True, default=str)
        ident = (spec["suite"], spec["protocol"], spec["method"], spec["model"]["arch"], key)
        entry = groups.setdefault(ident, Entry(*ident, settings=spec_settings(spec)))
        same_seed = [r for r in entry.runs if r["seed"] == run["seed"]]
        if same_seed and str(same_seed[0]["provenance"].get("ended", "")) >= str(run["provenance"].get("ended", "")):
            continue
        entry.runs = [r for r in entry.runs if r["seed"] != run["seed"]] + [run]
    entries = sorted(groups.values(), key=lambda e: (e.suite, e.protocol, e.method, e.model, e.key))
    by_method: Dict[Tuple, List[Entry]] = {}
    for e in entries:
        by_method.setdefault((e.suite, e.protocol, e.method), []).append(e)
        e.runs.sort(key=lambda r: r["seed"])
    for group in by_method.values():
        _label(group)
    entries.sort(key=lambda e: (e.suite, e.protocol, e.method, e.model, e.label))
    ran = {(e.suite, e.protocol, e.method, e.model) for e in entries}
    not_applicable = sorted((n for n in na if (n.suite, n.protocol, n.method, n.model) not in ran),
                            key=lambda n: (n.suite, n.protocol, n.method, n.model, n.reason))
    return Loaded(entries, sorted(bad), not_applicable)


def tidy(entries: Sequence[Entry]) -> pd.DataFrame:
    """The tidy table: suite, protocol, method, variant, model, metric, mean, std, n_seeds."""
    out = []
    for e in entries:
        for metric in sorted({m for r in e.runs for m in r["metrics"]}):
            vals = e.values(metric)
            out.append(dict(suite=e.suite, protocol=e.protocol, method=e.method, variant=e.label, model=e.model,
                            metric=metric, mean=float(np.mean(vals)) if vals else None,
                            std=float(np.std(vals, ddof=1)) if len(vals) > 1 else None, n_seeds=len(vals)))
    return pd.DataFrame(out, columns=["suite", "protocol", "method", "variant", "model", "metric", "mean", "std",
                                      "n_seeds"])


def _entry_name(e: Entry, entries: Sequence[Entry]) -> str:
    return e.name if len({x.model for x in entries}) == 1 else f"{e.name} ({e.model})"
