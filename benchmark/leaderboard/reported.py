"""Reported numbers from papers (`reported/*.yaml`): loading, checking, and the reported-beside-reproduced tables."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np
from tabulate import tabulate
from clipbench.protocols.metrics import METRICS

from ..errors import ClipbenchError, unknown_name_error
from ..yamlio import load_yaml
from .entries import Entry, escape
from .tables import Footnotes


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
