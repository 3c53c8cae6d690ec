"""Leaderboards from run records alone: markdown, CSV, JSON and pictures.

Records -> a tidy frame (one row per run and metric) -> mean, std and seed count per cell -> a
main table per suite (one section per protocol), a page per protocol with every metric and each
method's accuracy matrix, `leaderboard.csv` / `leaderboard.json`, PNG heatmaps and curves, and a
provenance footer. A cell mixes only runs of the same method, protocol and metric versions;
otherwise it shows a dash and a footnote. Reported numbers from papers (`reported/*.yaml` shipped
in `clipbench.protocols` and in the results folder) are shown beside ours with the difference.
"""

from __future__ import annotations

import filecmp
import json
import math
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pandas as pd
from tabulate import tabulate

from .store import ResultStore
from .yamlio import load_yaml

MAIN_METRICS = ["last", "avg", "bwt", "zs_retention", "zs_drop", "i2t_r1", "i2t_r1_drop", "t2i_r1", "t2i_r1_drop"]
COST_COLUMNS = [("trainable_params", "trainable params"), ("extra_memory_mb", "extra mem (MB)"),
                ("peak_mb", "peak mem (MB)"), ("hours", "wall (h)")]
LOWER_IS_BETTER = re.compile(r"(^forgetting(@|$)|_drop(\.|@|$))")  # @: a batch-size suffix (`zs_drop@bs1`)


def lower_is_better(metric: str) -> bool:
    return bool(LOWER_IS_BETTER.search(metric))


def escape(text: Any) -> str:
    """Markdown-safe text: a crafted name cannot open a link, emphasis, code or break a table."""
    out = str(text).replace("\\", "\\\\").replace("\r", " ").replace("\n", " ")
    for ch in "|`*_[]<>#!":
        out = out.replace(ch, "\\" + ch)
    return out


def slug(text: str) -> str:
    """A file-name-safe version of a name."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", str(text)).strip("._") or "x"


# ------------------------------------------------------------------ loading


def run_rows(store: ResultStore, suite: Optional[str] = None) -> List[Dict[str, Any]]:
    """One dict per complete record, with what the tables need."""
    rows = []
    for _, rec in store.iter_records():
        spec = rec.get("spec", {})
        if rec.get("status") != "complete" or (suite and spec.get("suite") != suite):
            continue
        prov, costs = rec.get("provenance", {}), rec.get("costs", {})
        on_gpu = str(prov.get("device", "cpu")).startswith("cuda")
        rows.append({
            "suite": spec["suite"], "protocol": spec["protocol"], "method": spec["method"],
            "model": spec["model"]["arch"], "seed": spec["seed"],
            "method_version": spec.get("method_version"), "protocol_version": spec.get("protocol_version"),
            "metric_versions": rec.get("metric_versions", {}), "metrics": rec.get("metrics", {}),
            "raw": rec.get("raw", {}), "costs": {
                "trainable_params": costs.get("trainable_params"),
                "extra_memory_mb": costs.get("extra_memory_mb"),
                "peak_mb": costs.get("peak_gpu_mb") if on_gpu else costs.get("peak_rss_mb", costs.get("process_peak_rss_mb")),
                "hours": (costs.get("wall_seconds") or 0) / 3600.0,
            },
            "provenance": prov,
        })
    return sorted(rows, key=lambda r: (r["suite"], r["protocol"], r["method"], r["model"], r["seed"]))


@dataclass
class Cell:
    mean: Optional[float]
    std: Optional[float]
    n: int
    note: Optional[str] = None  # why the cell is a dash


def _cell(values: List[float], versions: List[Tuple]) -> Cell:
    if len(set(versions)) > 1:
        shown = ", ".join("/".join(str(x) for x in v) for v in sorted(set(versions), key=str))
        return Cell(None, None, len(values), f"runs of different versions (method/protocol/metric {shown}) are not averaged")
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return Cell(None, None, 0, "no value")
    std = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
    return Cell(float(np.mean(vals)), std, len(vals))


def tidy(rows: List[Dict[str, Any]]) -> pd.DataFrame:
    """The tidy table: suite, protocol, method, model, metric, mean, std, n_seeds, comparable, note."""
    groups: Dict[Tuple, List[Dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["suite"], r["protocol"], r["method"], r["model"]), []).append(r)
    out = []
    for key, runs in sorted(groups.items()):
        metrics = sorted({m for r in runs for m in r["metrics"]})
        for metric in metrics:
            base = metric.split(".")[0]
            cell = _cell([r["metrics"].get(metric) for r in runs],
                         [(r["method_version"], r["protocol_version"], r["metric_versions"].get(base)) for r in runs])
            out.append(dict(zip(("suite", "protocol", "method", "model"), key), metric=metric, mean=cell.mean,
                            std=cell.std, n_seeds=cell.n, comparable=cell.note is None, note=cell.note))
    return pd.DataFrame(out, columns=["suite", "protocol", "method", "model", "metric", "mean", "std", "n_seeds",
                                      "comparable", "note"])


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


def comparable_mean(cell: pd.DataFrame) -> Optional[float]:
    """A tidy-table cell's mean, or None when the cell is absent or its runs are not comparable."""
    return float(cell["mean"].iloc[0]) if len(cell) and cell["comparable"].iloc[0] else None


def cell_text(cell: pd.DataFrame, notes: Footnotes) -> str:
    """One tidy-table cell as text: a dash when absent, a dash and a footnote when its runs are not
    comparable, else mean ± std."""
    if not len(cell):
        return "-"
    row = cell.iloc[0]
    if not row["comparable"]:
        return "-" + notes.mark(row["note"])
    return fmt(row["mean"], None if pd.isna(row["std"]) else row["std"])


def ranks(values: Dict[str, Optional[float]], lower: bool) -> Dict[str, float]:
    """Rank 1 = best; ties share the mean rank; missing values get none."""
    present = {k: v for k, v in values.items() if v is not None}
    order = pd.Series(present).rank(ascending=lower, method="average") if present else pd.Series(dtype=float)
    return order.to_dict()


def main_table(frame: pd.DataFrame, rows: List[Dict[str, Any]], suite: str, protocol: str, notes: Footnotes) -> str:
    part = frame[(frame.suite == suite) & (frame.protocol == protocol)]
    entries = sorted({(m, mo) for m, mo in zip(part.method, part.model)})
    metrics = [m for m in MAIN_METRICS if m in set(part.metric)]
    cells = {(e, m): part[(part.method == e[0]) & (part.model == e[1]) & (part.metric == m)] for e in entries for m in metrics}
    best = {}
    rank_sum: Dict[Tuple, List[float]] = {e: [] for e in entries}
    for m in metrics:
        means = {e: comparable_mean(cells[(e, m)]) for e in entries}
        valid = [v for v in means.values() if v is not None]
        if valid:
            best[m] = min(valid) if lower_is_better(m) else max(valid)
        for e, r in ranks(means, lower_is_better(m)).items():
            rank_sum[e].append(r)
    table = []
    for e in entries:
        runs = [r for r in rows if (r["suite"], r["protocol"], r["method"], r["model"]) == (suite, protocol) + e]
        n = len(runs)
        line = [escape(e[0]), escape(e[1]), n]
        for m in metrics:
            c = cells[(e, m)]
            text = cell_text(c, notes)
            mean = comparable_mean(c)
            is_best = mean is not None and best.get(m) is not None and np.isclose(mean, best[m])
            line.append(f"**{text}**" if is_best else text)
        for key, _ in COST_COLUMNS:
            vals = [r["costs"][key] for r in runs if r["costs"].get(key) is not None]
            line.append(_cost(key, vals))
        line.append(f"{np.mean(rank_sum[e]):.2f}" if rank_sum[e] else "-")
        table.append(line)
    headers = ["method", "model", "seeds"] + [escape(m) for m in metrics] + [c for _, c in COST_COLUMNS] + ["mean rank"]
    return tabulate(table, headers=headers, tablefmt="github", disable_numparse=True)


def _cost(key: str, vals: List[float]) -> str:
    if not vals:
        return "-"
    v = float(np.mean(vals))
    if key == "trainable_params":
        return f"{v / 1e6:.3f}M"
    if key == "hours":
        return f"{v:.4f}"
    return f"{v:.1f}"


def reported_files(results: Path) -> List[Path]:
    """The files of reported numbers: those shipped with clipbench (`protocols/reported/`, each with
    its citation) and a results folder's own `<results>/reported/`."""
    import clipbench.protocols

    shipped = Path(clipbench.protocols.__file__).parent / "reported"
    return sorted(shipped.glob("*.yaml")) + sorted((results / "reported").glob("*.yaml"))


def reported_tables(results: Path, frame: pd.DataFrame, suite: str) -> List[str]:
    """Reported-beside-reproduced tables from the `reported_files` of this suite.

    File format: {suite, protocol, model, source (citation), metrics: [..], scale (100 if the paper
    reports percentages), rows: {method: {metric: value}}}.
    """
    out = []
    for path in reported_files(results):
        doc = load_yaml(path) or {}
        if doc.get("suite") != suite:
            continue
        scale = float(doc.get("scale", 1.0))
        metrics = list(doc.get("metrics", []))
        table = []
        for method, values in (doc.get("rows") or {}).items():
            line = [escape(method)]
            for m in metrics:
                rep = values.get(m)
                mine = comparable_mean(frame[(frame.suite == suite) & (frame.protocol == doc["protocol"])
                                             & (frame.method == method) & (frame.model == doc.get("model"))
                                             & (frame.metric == m)])
                mine = None if mine is None else mine * scale
                diff = f"{mine - rep:+.1f}" if mine is not None and rep is not None else "-"
                line += ["-" if rep is None else f"{rep:.1f}", "-" if mine is None else f"{mine:.1f}", diff]
            table.append(line)
        headers = ["method"] + [f"{escape(m)} {k}" for m in metrics for k in ("reported", "ours", "diff")]
        out.append(f"### Reproduced beside reported: {escape(doc['protocol'])}\n\nReported: {escape(doc.get('source', ''))}\n\n"
                   + tabulate(table, headers=headers, tablefmt="github", disable_numparse=True))
    return out


def provenance_footer(rows: List[Dict[str, Any]]) -> str:
    prov = [r["provenance"] for r in rows]
    commits = sorted({(p.get("started", ""), (p.get("git_commit") or "unknown")[:10]) for p in prov})
    versions = sorted({p.get("versions", {}).get("clipbench", "?") for p in prov})
    torch_v = sorted({p.get("versions", {}).get("torch", "?") for p in prov})
    hardware = sorted({f"{p.get('device', '?')} ({p.get('device_name', '?')})" for p in prov})
    started = min((p.get("started") or "" for p in prov), default="")
    ended = max((p.get("ended") or "" for p in prov), default="")
    dirty = any(p.get("git_dirty") for p in prov)
    first, last = (commits[0][1], commits[-1][1]) if commits else ("?", "?")
    return (f"Provenance: {len(rows)} run(s); clipbench {', '.join(versions)}; commits {first}..{last}"
            f"{' (some from a dirty tree)' if dirty else ''}; torch {', '.join(torch_v)}; "
            f"runs from {started} to {ended}; hardware: {', '.join(hardware)}.")


# ------------------------------------------------------------------ pictures


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.hashsalt": "clipbench", "font.size": 9})
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


def curves(groups: Dict[Tuple[str, str], List[Dict[str, Any]]], title: str, path: Path) -> None:
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    colours = plt.get_cmap("tab20")(np.linspace(0, 1, max(len(groups), 2)))
    for k, ((method, model), runs) in enumerate(sorted(groups.items())):
        label = method if len({m for _, m in groups}) == 1 else f"{method} ({model})"
        style = dict(marker="os^D"[k % 4], ms=3, color=colours[k], linestyle=["-", "--", ":"][k % 3], label=label)
        a.plot(np.mean([seen_accuracy(r["raw"]) for r in runs], axis=0), **style)
        ret = [retention_curve(r["raw"]) for r in runs]
        if all(x is not None for x in ret):
            b.plot(np.mean(ret, axis=0), **style)
    a.set_title("target accuracy on classes seen so far", fontsize=9)
    b.set_title("zero-shot retention (after / before)", fontsize=9)
    for ax in (a, b):
        ax.set_xlabel("experience (0 = before training)")
        ax.grid(alpha=0.3)
    b.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)


# ------------------------------------------------------------------ writing


def write(results: Path, out: Path, suite: Optional[str] = None) -> List[Path]:
    """Write every leaderboard file for the records under `results` into `out`; returns the files."""
    store = ResultStore(results)
    rows = run_rows(store, suite)
    frame = tidy(rows)
    out.mkdir(parents=True, exist_ok=True)
    written: List[Path] = []

    def put(path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)

    records_json = json.loads(frame.drop(columns=["comparable", "note"]).to_json(orient="records", double_precision=10))
    for rec, (_, row) in zip(records_json, frame.iterrows()):
        rec["comparable"], rec["note"] = bool(row["comparable"]), row["note"]
    put(out / "leaderboard.json", json.dumps(records_json, indent=1) + "\n")
    put(out / "leaderboard.csv", frame.to_csv(index=False, float_format="%.10g"))
    for suite_name in sorted({r["suite"] for r in rows}):
        suite_rows = [r for r in rows if r["suite"] == suite_name]
        notes = Footnotes()
        parts = [f"# Leaderboard: {escape(suite_name)}\n",
                 "Mean ± standard deviation over seeds (seed count in `seeds`); best of each column in bold; "
                 "mean rank over the accuracy columns (1 = best). Costs: trainable parameters, memory a method keeps "
                 "between experiences, peak memory, wall time in hours (GPU-hours on a GPU). Drops are in points.\n"]
        for protocol in sorted({r["protocol"] for r in suite_rows}):
            proto_rows = [r for r in suite_rows if r["protocol"] == protocol]
            page = f"{slug(suite_name)}/{slug(protocol)}.md"
            pic = f"{slug(suite_name)}/{slug(protocol)}_curves.png"
            groups: Dict[Tuple[str, str], List[Dict[str, Any]]] = {}
            for r in proto_rows:
                groups.setdefault((r["method"], r["model"]), []).append(r)
            curves(groups, f"{suite_name} / {protocol}", out / pic)
            written.append(out / pic)
            parts.append(f"## {escape(protocol)}\n\n{main_table(frame, rows, suite_name, protocol, notes)}\n\n"
                         f"Every metric and each method's accuracy matrix: [{escape(protocol)}]({page}).\n\n"
                         f"![curves of target accuracy and zero-shot retention]({pic})\n")
            put(out / page, protocol_page(frame, groups, suite_name, protocol, out))
            written.extend(sorted((out / slug(suite_name) / slug(protocol)).glob("*.png")))
        parts += reported_tables(results, frame, suite_name)
        if notes.texts:
            parts.append(notes.render() + "\n")
        parts.append(provenance_footer(suite_rows) + "\n")
        put(out / f"{slug(suite_name)}.md", "\n".join(parts))
    return written


def protocol_page(frame: pd.DataFrame, groups: Dict[Tuple[str, str], List[Dict[str, Any]]], suite: str, protocol: str,
                  out: Path) -> str:
    part = frame[(frame.suite == suite) & (frame.protocol == protocol)]
    entries = sorted(groups)
    notes = Footnotes()
    table = []
    for metric in sorted(set(part.metric)):
        line = [escape(metric)]
        for e in entries:
            line.append(cell_text(part[(part.method == e[0]) & (part.model == e[1]) & (part.metric == metric)], notes))
        table.append(line)
    headers = ["metric"] + [escape(m) if len({mo for _, mo in entries}) == 1 else f"{escape(m)} ({escape(mo)})" for m, mo in entries]
    parts = [f"# {escape(suite)} / {escape(protocol)}: every metric\n", *batch_size_note(part),
             tabulate(table, headers=headers, tablefmt="github", disable_numparse=True), "",
             "## Accuracy matrices\n",
             "Row 0 is before any training, row i after experience i; column j is experience j's test set "
             "(mean over seeds).\n"]
    for method, model in entries:
        runs = groups[(method, model)]
        matrix = mean_matrix(runs)
        png = out / slug(suite) / slug(protocol) / f"{slug(method)}__{slug(model)}.png"
        heatmap(matrix, f"{method} ({model}), {len(runs)} seed(s)", png)
        rel = f"{slug(protocol)}/{png.name}"
        rows_md = [[str(i)] + [f"{x:.3f}" for x in row] for i, row in enumerate(matrix)]
        parts.append(f"### {escape(method)} ({escape(model)})\n\n"
                     + tabulate(rows_md, headers=["after"] + [f"exp {j}" for j in range(matrix.shape[1])],
                                tablefmt="github", disable_numparse=True)
                     + f"\n\n![accuracy matrix of {escape(method)}]({rel})\n")
    if notes.texts:
        parts.append(notes.render())
    return "\n".join(parts) + "\n"


def batch_size_note(part: pd.DataFrame) -> List[str]:
    """A line saying which figures were measured at batch size 1, where some were (methods that infer the
    task from a whole test batch are measured at the protocol's evaluation batch and at batch size 1)."""
    from .runner import BATCH1_SUFFIX

    if not part.metric.str.endswith(BATCH1_SUFFIX).any():
        return []
    return [f"Metrics ending in `{BATCH1_SUFFIX}` were measured with test batches of one image; the others, and the "
            "accuracy matrices below, with test batches of the protocol's evaluation batch size (`eval.batch_size`, "
            "each batch within one test set). Only methods that infer the task from a whole test batch have both.\n"]


def check(results: Path, out: Path, suite: Optional[str] = None) -> List[str]:
    """Regenerate into a temporary folder and list every difference with the files in `out`."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        write(results, fresh, suite)
        new = {str(p.relative_to(fresh)) for p in fresh.rglob("*") if p.is_file()}
        old = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} if out.is_dir() else set()
        problems = [f"missing: {p}" for p in sorted(new - old)] + [f"not generated: {p}" for p in sorted(old - new)]
        problems += [f"differs: {p}" for p in sorted(new & old) if not filecmp.cmp(fresh / p, out / p, shallow=False)]
    return problems


def markdown(store: ResultStore, suite: Optional[str] = None) -> str:
    """A plain markdown table per (suite, protocol) of the main metrics, for a quick look in the terminal."""
    rows = run_rows(store, suite)
    if not rows:
        return "No complete runs found.\n"
    frame, notes, out = tidy(rows), Footnotes(), []
    for suite_name, protocol in sorted({(r["suite"], r["protocol"]) for r in rows}):
        out.append(f"### {escape(suite_name)} / {escape(protocol)}\n")
        out.append(main_table(frame, rows, suite_name, protocol, notes))
        out.append("")
    if notes.texts:
        out.append(notes.render())
    return "\n".join(out) + "\n"
