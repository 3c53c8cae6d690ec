"""Leaderboards from run records alone: markdown, CSV, JSON and pictures.

Records -> entries (the runs whose specs are identical except for the seed, one run per distinct
seed) -> metrics recomputed from each record's raw results with the current code -> mean, std and
seed count per cell -> a main table per suite (one section per protocol: the protocol's headline
metrics, bold where not significantly worse than the best, a mean rank, costs), a page per protocol
with every metric and each entry's accuracy matrix, `leaderboard.csv` / `leaderboard.json`, PNG
heatmaps and curves, and a provenance footer.

Runs of one method that differ in any setting or in the weights are separate entries, labelled by
what differs (`finetune [train.lr=0.05]`). Reported numbers from papers (`reported/*.yaml`, shipped in
`clipbench.protocols` and in the results folder; format in `load_reported`) appear beside the entries
of the method and settings they name, never beside another. A record that cannot be read is named,
never silently dropped. Every name from a record reaches tables and pictures escaped.
"""

from __future__ import annotations

import filecmp
import hashlib
import json
import math
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
import pandas as pd
from tabulate import tabulate

from clipbench.protocols.metrics import BATCH1_SUFFIX, METRICS, Metric, compute_metrics, headline_metrics, metric_of

from .errors import ClipbenchError, unknown_name_error
from .store import SPEC_KEYS, ResultStore, atomic_write_json
from .yamlio import load_yaml

BOLD_LEVEL = 0.05  # one-sided Welch's t-test: bold unless significantly worse than the column's best
BOLD_RULE = (f"**Bold**: not significantly worse than the column's best mean (Welch's t-test, one-sided, "
             f"level {BOLD_LEVEL}); only rows with 2 or more seeds are tested, so with fewer nothing is bold.")
COST_COLUMNS = [("trainable_params", "trainable params"), ("extra_memory_mb", "extra mem (MB)"),
                ("exemplars", "exemplars"), ("peak_mb", "peak mem (MB)"), ("hours", "wall (h)")]
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


# ------------------------------------------------------------------ loading


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


# ------------------------------------------------------------------ statistics


def _protocol(name: str):
    """The catalog's protocol of that name, or None for one unknown to this catalog."""
    from clipbench.protocols.catalog import get_protocol

    try:
        return get_protocol(name)
    except ClipbenchError:
        return None


def reported_metrics(protocol: str) -> Optional[Tuple[str, ...]]:
    """The metrics the protocol reports (its file's `metrics:` or its kind's default); None (every
    registered metric) for a protocol unknown to this catalog."""
    proto = _protocol(protocol)
    return None if proto is None else proto.metrics


def headline_of(protocol: str) -> List[str]:
    """The protocol's headline metrics (its YAML's `headline:`), else those of its metrics declared
    headline (every metric declared headline for a protocol unknown to this catalog)."""
    proto = _protocol(protocol)
    return headline_metrics() if proto is None else list(proto.headline_metrics())


def ranked_metrics(columns: Sequence[str], one_session: bool) -> List[str]:
    """The columns a mean rank counts: the first of each family (a metric and its `_drop` twin rank
    alike; in one-session protocols `avg` measures what `last` does)."""
    seen: Set[str] = set()
    out = []
    for m in columns:
        family = metric_of(m).family_in(one_session)
        if family not in seen:
            seen.add(family)
            out.append(m)
    return out


def not_worse(values: Sequence[float], best: Sequence[float], lower: bool) -> bool:
    """True unless `values` are significantly worse than `best` (one-sided Welch's t-test at BOLD_LEVEL)."""
    from scipy.stats import ttest_ind

    a, b = np.asarray(values, dtype=float), np.asarray(best, dtype=float)
    if np.ptp(a) == 0 and np.ptp(b) == 0:  # no spread: the test is undefined; equal means are not worse
        return bool(np.isclose(a.mean(), b.mean()))
    with warnings.catch_warnings():  # scipy warns of precision loss on near-constant samples; the p-value stands
        warnings.simplefilter("ignore", RuntimeWarning)
        p = ttest_ind(a, b, equal_var=False, alternative="greater" if lower else "less").pvalue
    return bool(p >= BOLD_LEVEL)


def bold_entries(entries: Sequence[Entry], metric: Metric, metric_id: str) -> Set[int]:
    """Indices of the entries not significantly worse than the best mean, among those with 2 or more seeds."""
    tested = {i: e.values(metric_id) for i, e in enumerate(entries) if len(e.values(metric_id)) >= 2}
    if not tested:
        return set()
    pick = min if metric.lower_is_better else max
    best = pick(tested, key=lambda i: float(np.mean(tested[i])))
    return {i for i, vals in tested.items() if not_worse(vals, tested[best], metric.lower_is_better)}


def mean_ranks(entries: Sequence[Entry], metrics: Sequence[str]) -> List[Optional[float]]:
    """Per entry, its rank (1 = best; ties share the mean rank) averaged over `metrics` it has a value for."""
    per_entry: List[List[float]] = [[] for _ in entries]
    for m in metrics:
        means = {i: float(np.mean(v)) for i, e in enumerate(entries) if (v := e.values(m))}
        if not means:
            continue
        for i, r in pd.Series(means).rank(ascending=metric_of(m).lower_is_better, method="average").items():
            per_entry[int(i)].append(float(r))
    return [float(np.mean(r)) if r else None for r in per_entry]


# ------------------------------------------------------------------ formatting


class Footnotes:
    """Numbered footnotes, one per distinct text."""

    def __init__(self) -> None:
        self.texts: List[str] = []

    def mark(self, text: str) -> str:
        if text not in self.texts:
            self.texts.append(text)
        return f"[^{self.texts.index(text) + 1}]"

    def render(self) -> str:
        return "\n".join(f"[^{i}]: {escape(t)}" for i, t in enumerate(self.texts, 1))


def fmt(mean: Optional[float], std: Optional[float], digits: int = 3) -> str:
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def cell_text(vals: List[float]) -> str:
    """mean ± std over seeds (no std for one seed), or a dash."""
    if not vals:
        return "-"
    return fmt(float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else None)


def _cost(key: str, vals: List[Any]) -> str:
    if key == "inference_extras":
        if not vals:
            return "-"  # records from before it was recorded
        return escape("; ".join(sorted({v or "none" for v in vals})))
    if not vals:
        return "-"
    v = float(np.mean(vals))
    if key == "trainable_params":
        return f"{v / 1e6:.3f}M"
    if key == "hours":
        return f"{v:.4f}"
    if key == "exemplars":
        return f"{v:.0f}"
    return f"{v:.1f}"


def protocol_entries(entries: Sequence[Entry], suite: str, protocol: str) -> List[Entry]:
    return [e for e in entries if e.suite == suite and e.protocol == protocol]


def protocol_na(loaded: Loaded, suite: str, protocol: str) -> List[NotApplicable]:
    return [n for n in loaded.not_applicable if n.suite == suite and n.protocol == protocol]


def _entry_name(e: Entry, entries: Sequence[Entry]) -> str:
    return e.name if len({x.model for x in entries}) == 1 else f"{e.name} ({e.model})"


def recipe_label(spec: Dict[str, Any]) -> str:
    """Which recipe a run trained with (`RunSpec.recipe`): `shared`; under `reference`, the method's own
    (`reference`), its own from another benchmark (`own, other benchmark`) or the suite's (`suite`, authors
    who never ran it); `-` for a method that does not train. Records older than recipes trained as `shared`."""
    recipe = spec.get("recipe") or {"mode": "shared"}
    if recipe.get("source") == "none":
        return "-"
    if recipe.get("mode") == "shared":
        return "shared"
    return {"reference": "reference", "method": "own, other benchmark", "suite": "suite"}.get(recipe.get("source"), "?")


def main_table(entries: Sequence[Entry], not_applicable: Sequence[NotApplicable] = ()) -> str:
    """One protocol's main table: its headline metrics (bold, mean rank) and the cost columns; below, a row per
    method that declares it cannot run the protocol, its first cell saying why."""
    protocol = entries[0].protocol if entries else not_applicable[0].protocol
    present = {m for e in entries for r in e.runs for m in r["metrics"]}
    columns = [m for m in headline_of(protocol) if m in present] or ([] if entries else headline_of(protocol))
    one_session = all(len(r["raw"]["acc_matrix"]) == 2 for e in entries for r in e.runs)
    bold = {m: bold_entries(entries, metric_of(m), m) for m in columns}
    ranks = mean_ranks(entries, ranked_metrics(columns, one_session))
    table = []
    for i, e in enumerate(entries):
        line = [escape(e.name), escape(e.model), str(len(e.runs)), escape(recipe_label(e.runs[0]["spec"]))]
        for m in columns:
            text = cell_text(e.values(m))
            line.append(f"**{text}**" if i in bold[m] else text)
        for key, _ in COST_COLUMNS + [("inference_extras", "")]:
            line.append(_cost(key, [r["costs"][key] for r in e.runs if r["costs"].get(key) is not None]))
        line.append("-" if ranks[i] is None else f"{ranks[i]:.2f}")
        table.append(line)
    for n in not_applicable:
        cells = ([f"n/a: {escape(n.reason)}"] + ["n/a"] * (len(columns) - 1)) if columns else []
        name = escape(n.method) if columns else f"{escape(n.method)} (n/a: {escape(n.reason)})"
        table.append([name, escape(n.model), "0", "-"] + cells + ["-"] * (len(COST_COLUMNS) + 2))
    headers = (["method", "model", "seeds", "recipe"] + [escape(m) + (" ↓" if metric_of(m).lower_is_better else "") for m in columns]
               + [c for _, c in COST_COLUMNS] + ["extra at inference", "mean rank"])
    return tabulate(table, headers=headers, tablefmt="github", disable_numparse=True)


# ------------------------------------------------------------------ reported numbers


def reported_files(results: Path) -> List[Path]:
    """The files of reported numbers: those shipped with clipbench (`protocols/reported/`, each with
    its citation) and a results folder's own `<results>/reported/`."""
    import clipbench.protocols

    shipped = Path(clipbench.protocols.__file__).parent / "reported"
    return sorted(shipped.glob("*.yaml")) + sorted((results / "reported").glob("*.yaml"))


REPORTED_FORMAT = ("rows: {<paper's row label>: {method: <clipbench id>, settings: {<dotted key as in --set>: value}, "
                   "metrics: {<metric>: value}}}")


def load_reported(path: Path) -> Dict[str, Any]:
    """A file of reported numbers, checked. Format (YAML):

        suite: <suite>            protocol: <protocol>        model: <architecture, e.g. ViT-B-16>
        source: <citation>        scale: 100 (the paper reports percentages; default 1)
        metrics: [<metric id>, ...]                     # the columns
        rows:
          <paper's row label>:
            method: <clipbench method id>               # the reported number is shown beside this method only
            settings: {<dotted key as in --set>: value}  # and only beside runs whose specs match each one
            metrics: {<metric id>: value, ...}

    A malformed file stops the leaderboard with one line naming the file and what to fix.
    """
    doc = load_yaml(path)
    if not isinstance(doc, dict):
        raise ClipbenchError(f"{path}: expected a mapping with suite, protocol, model, source, metrics and rows")
    missing = [k for k in ("suite", "protocol", "model", "source", "metrics", "rows") if k not in doc]
    if missing:
        raise ClipbenchError(f"{path}: missing key(s) {', '.join(missing)}")
    columns = doc["metrics"]
    if not isinstance(columns, list) or not columns:
        raise ClipbenchError(f"{path}: metrics must be a list of metric ids, e.g. [mtil_transfer, mtil_avg]")
    for m in columns:
        if str(m).split(".")[0] not in METRICS:
            raise ClipbenchError(f"{path}: metrics: {unknown_name_error('metric', str(m), METRICS.names())}")
    rows = doc["rows"]
    if not isinstance(rows, dict) or not rows:
        raise ClipbenchError(f"{path}: rows must be a mapping; format: {REPORTED_FORMAT}")
    for label, row in rows.items():
        where = f"{path}: row '{label}'"
        if not isinstance(row, dict) or not isinstance(row.get("method"), str) or not isinstance(row.get("metrics"), dict):
            raise ClipbenchError(f"{where} needs method: and metrics: (format: {REPORTED_FORMAT})")
        settings = row.setdefault("settings", {}) or {}
        if not isinstance(settings, dict):
            raise ClipbenchError(f"{where}: settings must be a mapping of --set keys to values")
        row["settings"] = settings
        for key in settings:
            parts = str(key).split(".")
            if parts[0] == "methods" and (len(parts) < 3 or parts[1] != row["method"]):
                raise ClipbenchError(f"{where}: setting '{key}' must be methods.{row['method']}.<field>")
        extra = [m for m in row["metrics"] if m not in columns]
        if extra:
            raise ClipbenchError(f"{where}: metric(s) {', '.join(map(str, extra))} not in the file's metrics: {columns}")
    doc["scale"] = float(doc.get("scale", 1.0))
    return doc


def _same(ours: Any, reported: Any) -> bool:
    numbers = (int, float)
    if isinstance(ours, numbers) and isinstance(reported, numbers) and not isinstance(ours, bool) and not isinstance(reported, bool):
        return math.isclose(ours, reported, rel_tol=1e-9, abs_tol=1e-12)
    return ours == reported


def setting_mismatches(entry: Entry, settings: Dict[str, Any]) -> List[str]:
    """How `entry`'s spec departs from the reported row's settings (empty: it matches every one)."""
    out = []
    for key, value in settings.items():
        if key not in entry.settings:
            out.append(f"{key} is not in our spec (reported {value})")
        elif not _same(entry.settings[key], value):
            out.append(f"{key} is {entry.settings[key]} (reported {value})")
    return out


def reported_tables(docs: Sequence[Dict[str, Any]], entries: Sequence[Entry], suite: str, notes: Footnotes) -> List[str]:
    """Reported-beside-reproduced tables from the files of reported numbers (`load_reported`) of this suite:
    each reported row beside the entries of the method it names whose specs match every setting it lists;
    otherwise a dash and a footnote saying what is missing or differs."""
    out = []
    for doc in docs:
        if doc["suite"] != suite:
            continue
        protocol, model, scale, columns = doc["protocol"], doc["model"], doc["scale"], list(doc["metrics"])
        candidates = [e for e in entries if e.suite == suite and e.protocol == protocol and e.model == model]
        table = []
        for label, row in doc["rows"].items():
            reported = row["metrics"]
            mine = [e for e in candidates if e.method == row["method"]]
            matches = [e for e in mine if not setting_mismatches(e, row["settings"])]
            for e in matches:
                line = [escape(label), escape(e.name)]
                for m in columns:
                    vals = e.values(m)
                    ours = float(np.mean(vals)) * scale if vals else None
                    rep = reported.get(m)
                    line += ["-" if rep is None else f"{rep:.1f}", "-" if ours is None else f"{ours:.1f}",
                             f"{ours - rep:+.1f}" if ours is not None and rep is not None else "-"]
                table.append(line)
            if matches:
                continue
            if not mine:
                why = f"no runs of {row['method']} with {model} on {protocol} in these results"
            else:
                nearest = min(mine, key=lambda e: len(setting_mismatches(e, row['settings'])))
                why = (f"our runs of {row['method']} differ from the reported row '{label}': "
                       + "; ".join(setting_mismatches(nearest, row["settings"])))
            line = [escape(label), "-" + notes.mark(why)]
            for m in columns:
                rep = reported.get(m)
                line += ["-" if rep is None else f"{rep:.1f}", "-", "-"]
            table.append(line)
        headers = ["reported row", "ours"] + [f"{escape(m)} {k}" for m in columns for k in ("reported", "ours", "diff")]
        out.append(f"### Reproduced beside reported: {escape(protocol)}\n\nReported: {escape(doc['source'])}. "
                   f"Each reported row sits beside our runs of the clipbench method it names, with every setting it "
                   f"lists.\n\n" + tabulate(table, headers=headers, tablefmt="github", disable_numparse=True))
    return out


def provenance_footer(runs: List[Dict[str, Any]]) -> str:
    prov = [r["provenance"] for r in runs]
    commits = sorted({(p.get("started", ""), (p.get("git_commit") or "unknown")[:10]) for p in prov})
    versions = sorted({p.get("versions", {}).get("clipbench", "?") for p in prov})
    torch_v = sorted({p.get("versions", {}).get("torch", "?") for p in prov})
    hardware = sorted({f"{p.get('device', '?')} ({p.get('device_name', '?')})" for p in prov})
    started = min((p.get("started") or "" for p in prov), default="")
    ended = max((p.get("ended") or "" for p in prov), default="")
    dirty = any(p.get("git_dirty") for p in prov)
    first, last = (commits[0][1], commits[-1][1]) if commits else ("?", "?")
    return (f"Provenance: {len(runs)} run(s); clipbench {', '.join(versions)}; commits {first}..{last}"
            f"{' (some from a dirty tree)' if dirty else ''}; torch {', '.join(torch_v)}; "
            f"runs from {started} to {ended}; hardware: {', '.join(hardware)}.")


def corrupt_section(corrupt: Sequence[Tuple[str, str]]) -> str:
    """The records that could not be read, each named, so none disappears without a word."""
    lines = [f"- `{escape(path)}`: {escape(why)}" for path, why in corrupt]
    return ("## Records that could not be read\n\nLeft out of every table above; rerun them with `clipbench run` "
            "(a corrupt record counts as not complete) or remove them.\n\n" + "\n".join(lines) + "\n")


def _corrupt_of(corrupt: Sequence[Tuple[str, str]], protocols: Set[str], all_protocols: Set[str]) -> List[Tuple[str, str]]:
    """The corrupt records a suite's page lists: those under its protocols' folders, and those under
    no known protocol's folder (every page lists them)."""
    out = []
    for path, why in corrupt:
        parts = Path(path).parts
        folder = parts[1] if len(parts) > 2 else ""
        if folder in protocols or folder not in all_protocols:
            out.append((path, why))
    return out


# ------------------------------------------------------------------ pictures


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # no mathtext: a name like `$\frac{x$` from a record is shown as written, never parsed as TeX
    plt.rcParams.update({"svg.hashsalt": "clipbench", "font.size": 9, "text.parse_math": False})
    return plt


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, metadata={"Software": None})  # no version stamp: same data, same bytes
    _plt().close(fig)


def mean_matrix(runs: List[Dict[str, Any]]) -> np.ndarray:
    return np.mean([np.array(r["raw"]["acc_matrix"], dtype=float) for r in runs], axis=0)


def heatmap(matrix: np.ndarray, title: str, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * matrix.shape[1], 1.0 + 0.45 * matrix.shape[0]))
    im = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", color="w" if matrix[i, j] < 0.6 else "k", fontsize=7)
    ax.set_xlabel("test set of experience")
    ax.set_ylabel("after experience (0 = before training)")
    ax.set_xticks(range(matrix.shape[1]))
    ax.set_yticks(range(matrix.shape[0]))
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.05)
    fig.tight_layout()
    _save(fig, path)


def seen_accuracy(raw: Dict[str, Any]) -> List[float]:
    """Per row i >= 1: accuracy on the union of the test sets seen so far (row 0: on experience 0's)."""
    R, n = raw["acc_matrix"], raw["test_sizes"]
    out = [R[0][0]]
    for i in range(1, len(R)):
        out.append(sum(n[j] * R[i][j] for j in range(i)) / sum(n[:i]))
    return out


def retention_curve(raw: Dict[str, Any]) -> Optional[List[float]]:
    sets = [v for v in (raw.get("zeroshot") or {}).values() if v and v[0] > 0]
    if not sets:
        return None
    return [float(np.mean([v[i] / v[0] for v in sets])) for i in range(len(sets[0]))]


def curves(entries: Sequence[Entry], title: str, path: Path) -> None:
    plt = _plt()
    # tall enough for the legend of every row (one column up to 20 rows, then two)
    columns = 1 if len(entries) <= 20 else 2
    fig, (a, b) = plt.subplots(1, 2, figsize=(9 + 2 * (columns - 1), max(3.4, 0.16 * -(-len(entries) // columns) + 1.2)))
    colours = plt.get_cmap("tab20")(np.linspace(0, 1, max(len(entries), 2)))
    for k, e in enumerate(entries):
        style = dict(marker="os^D"[k % 4], ms=3, color=colours[k], linestyle=["-", "--", ":"][k % 3],
                     label=_entry_name(e, entries))
        a.plot(np.mean([seen_accuracy(r["raw"]) for r in e.runs], axis=0), **style)
        ret = [retention_curve(r["raw"]) for r in e.runs]
        if all(x is not None for x in ret):
            b.plot(np.mean(ret, axis=0), **style)
    a.set_title("target accuracy on classes seen so far", fontsize=9)
    b.set_title("zero-shot retention (after / before)", fontsize=9)
    for ax in (a, b):
        ax.set_xlabel("experience (0 = before training)")
        ax.grid(alpha=0.3)
    # the legend sits right of the retention panel; without held-out sets that panel is empty: a's lines name it
    handles, labels = (b if b.lines else a).get_legend_handles_labels()
    b.legend(handles, labels, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), ncol=columns)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)


# ------------------------------------------------------------------ writing

INTRO = ("Mean ± standard deviation over seeds (`seeds`: distinct seeds). A row averages only runs whose specs are "
         "identical except for the seed; runs of one method that differ in a setting or in the weights are separate "
         "rows labelled with what differs (`finetune [train.lr=0.05]`). Recipe: `shared` (the suite's, for every "
         "method), `reference` (the method's authors' own on this benchmark), `own, other benchmark` (its authors' "
         "recipe from a benchmark they ran), `suite` (the suite's: its authors never ran this one). Columns: each protocol's headline metrics "
         "(↓: lower is better), recomputed from the records' raw results with the current code. " + BOLD_RULE +
         " Mean rank over the headline metrics, a metric family counted once (1 = best). Costs: trainable "
         "parameters, memory a method keeps between experiences, peak memory, wall time in hours (GPU-hours on a "
         "GPU), and what inference needs beyond the model. Drops are in points.\n")


MANIFEST = ".clipbench-leaderboard.json"  # beside the pages: the files clipbench wrote there, and only those it removes


def _manifest(out: Path) -> Optional[Set[str]]:
    """The files (relative to `out`) an earlier `write` made there; None when it has no manifest (a folder
    clipbench has not written, or an earlier version did) or the manifest cannot be read."""
    try:
        doc = json.loads((out / MANIFEST).read_text())
        files = doc["files"]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if not isinstance(files, list):
        return None
    return {f for f in files if isinstance(f, str) and not Path(f).is_absolute() and ".." not in Path(f).parts}


def write(results: Path, out: Path, suite: Optional[str] = None) -> List[Path]:
    """Write every leaderboard file for the records under `results` into `out`; returns the files. Files an
    earlier write made there (its manifest) and this one does not are removed; nothing else in `out` is."""
    reported = [load_reported(path) for path in reported_files(results)]  # a malformed file stops us before any write
    loaded = load(results, suite)
    entries = loaded.entries
    frame = tidy(entries)
    out.mkdir(parents=True, exist_ok=True)
    written: List[Path] = []

    def put(path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)

    put(out / "leaderboard.json", json.dumps(json.loads(frame.to_json(orient="records", double_precision=10)),
                                             indent=1) + "\n")
    put(out / "leaderboard.csv", frame.to_csv(index=False, float_format="%.10g"))
    all_protocols = {e.protocol for e in entries}
    for suite_name in sorted({e.suite for e in entries} | {n.suite for n in loaded.not_applicable}):
        suite_entries = [e for e in entries if e.suite == suite_name]
        notes = Footnotes()
        parts = [f"# Leaderboard: {escape(suite_name)}\n", INTRO]
        protocols = sorted({e.protocol for e in suite_entries}
                           | {n.protocol for n in loaded.not_applicable if n.suite == suite_name})
        for protocol in protocols:
            proto = protocol_entries(suite_entries, suite_name, protocol)
            na = protocol_na(loaded, suite_name, protocol)
            if not proto:  # only methods that cannot run it: their reasons, no page or picture
                parts.append(f"## {escape(protocol)}\n\n{main_table(proto, na)}\n")
                continue
            page = f"{slug(suite_name)}/{slug(protocol)}.md"
            pic = f"{slug(suite_name)}/{slug(protocol)}_curves.png"
            curves(proto, f"{suite_name} / {protocol}", out / pic)
            written.append(out / pic)
            parts.append(f"## {escape(protocol)}\n\n{main_table(proto, na)}\n\n"
                         f"Every metric and each row's accuracy matrix: [{escape(protocol)}]({page}).\n\n"
                         f"![curves of target accuracy and zero-shot retention]({pic})\n")
            put(out / page, protocol_page(proto, out))
            written.extend(out / slug(suite_name) / slug(protocol) / f"{e.file_stem}.png" for e in proto)  # its heatmaps
        parts += reported_tables(reported, suite_entries, suite_name, notes)
        corrupt = _corrupt_of(loaded.corrupt, set(protocols), all_protocols)
        if corrupt:
            parts.append(corrupt_section(corrupt))
        if notes.texts:
            parts.append(notes.render() + "\n")
        parts.append(provenance_footer([r for e in suite_entries for r in e.runs]) + "\n")
        put(out / f"{slug(suite_name)}.md", "\n".join(parts))
    _prune(out, written, suite)
    return written


def _prune(out: Path, written: Sequence[Path], suite: Optional[str]) -> None:
    """Remove the pages and pictures an earlier write made in `out` (its manifest) that this one did not:
    those of runs, methods, protocols or suites no longer in the records (with `suite`, only that suite's).
    A file clipbench did not write (a user's NOTES.md, pictures) is never touched. Then the manifest is
    written: what remains of the earlier one, and this write's files."""
    made = {str(p.relative_to(out)) for p in written}
    before = _manifest(out) or set()
    gone = {f for f in before - made if suite is None or f == f"{slug(suite)}.md" or f.startswith(f"{slug(suite)}/")}
    for rel in sorted(gone):
        path = out / rel
        if path.is_file() and not path.is_symlink():
            path.unlink()
    atomic_write_json(out / MANIFEST, {"written_by": "clipbench leaderboard", "files": sorted((before - gone) | made)})


def protocol_page(entries: Sequence[Entry], out: Path) -> str:
    suite, protocol = entries[0].suite, entries[0].protocol
    metrics = sorted({m for e in entries for r in e.runs for m in r["metrics"]})
    table = [[escape(metric)] + [cell_text(e.values(metric)) for e in entries] for metric in metrics]
    headers = ["metric"] + [escape(_entry_name(e, entries)) for e in entries]
    parts = [f"# {escape(suite)} / {escape(protocol)}: every metric\n",
             "Recomputed from the records' raw results with the current code; mean ± standard deviation over seeds.\n",
             *batch_size_note(metrics),
             tabulate(table, headers=headers, tablefmt="github", disable_numparse=True), "",
             "## Accuracy matrices\n",
             "Row 0 is before any training, row i after experience i; column j is experience j's test set "
             "(mean over seeds).\n"]
    for e in entries:
        matrix = mean_matrix(e.runs)
        png = out / slug(suite) / slug(protocol) / f"{e.file_stem}.png"
        heatmap(matrix, f"{e.name} ({e.model}), {len(e.runs)} seed(s)", png)
        rel = f"{slug(protocol)}/{png.name}"
        rows_md = [[str(i)] + [f"{x:.3f}" for x in row] for i, row in enumerate(matrix)]
        parts.append(f"### {escape(e.name)} ({escape(e.model)})\n\n"
                     + tabulate(rows_md, headers=["after"] + [f"exp {j}" for j in range(matrix.shape[1])],
                                tablefmt="github", disable_numparse=True)
                     + f"\n\n![accuracy matrix of {escape(e.name)}]({rel})\n")
    return "\n".join(parts) + "\n"


def batch_size_note(metrics: Sequence[str]) -> List[str]:
    """A line saying which figures were measured at batch size 1, where some were (methods that infer the
    task from a whole test batch are measured at the protocol's evaluation batch and at batch size 1)."""
    if not any(str(m).endswith(BATCH1_SUFFIX) for m in metrics):
        return []
    return [f"Metrics ending in `{BATCH1_SUFFIX}` were measured with test batches of one image; the others, and the "
            "accuracy matrices below, with test batches of the protocol's evaluation batch size (`eval.batch_size`, "
            "each batch within one test set). Only methods that infer the task from a whole test batch have both.\n"]


def check(results: Path, out: Path, suite: Optional[str] = None) -> List[str]:
    """Regenerate into a temporary folder and list every difference with the files in `out`."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        write(results, fresh, suite)
        new = {str(p.relative_to(fresh)) for p in fresh.rglob("*") if p.is_file()} - {MANIFEST}
        # the files clipbench wrote in `out` (its manifest; a folder without one: every file), never a user's
        listed = _manifest(out)
        old = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} if out.is_dir() else set()
        old = (old & listed if listed is not None else old) - {MANIFEST}
        problems = [f"missing: {p}" for p in sorted(new - old)] + [f"not generated: {p}" for p in sorted(old - new)]
        problems += [f"differs: {p}" for p in sorted(new & old) if not filecmp.cmp(fresh / p, out / p, shallow=False)]
    return problems


def markdown(results: Path, suite: Optional[str] = None) -> str:
    """A plain markdown table per (suite, protocol) of the headline metrics, for a quick look in the terminal."""
    loaded = load(results, suite)
    out = []
    if not loaded.entries:
        out.append("No complete runs found.\n")
    pairs = {(e.suite, e.protocol) for e in loaded.entries} | {(n.suite, n.protocol) for n in loaded.not_applicable}
    for suite_name, protocol in sorted(pairs):
        out.append(f"### {escape(suite_name)} / {escape(protocol)}\n")
        out.append(main_table(protocol_entries(loaded.entries, suite_name, protocol),
                              protocol_na(loaded, suite_name, protocol)))
        out.append("")
    if loaded.corrupt:
        out.append(corrupt_section(loaded.corrupt))
    return "\n".join(out).rstrip("\n") + "\n"
