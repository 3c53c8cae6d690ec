"""The markdown tables: a protocol's main table, its page of every metric and accuracy matrix, provenance and
the corrupt-records section, and the terminal's quick look (`markdown`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
from tabulate import tabulate
from clipbench.protocols.metrics import BATCH1_SUFFIX, metric_of

from .entries import Entry, Loaded, NotApplicable, _entry_name, escape, load, slug
from .figures import heatmap, mean_matrix
from .stats import BOLD_RULE, bold_entries, headline_of, mean_ranks, ranked_metrics


COST_COLUMNS = [("trainable_params", "trainable params"), ("extra_memory_mb", "extra mem (MB)"),
                ("exemplars", "exemplars"), ("peak_mb", "peak mem (MB)"), ("hours", "wall (h)")]


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


INTRO = ("Mean ± standard deviation over seeds (`seeds`: distinct seeds). A row averages only runs whose specs are "
         "identical except for the seed; runs of one method that differ in a setting or in the weights are separate "
         "rows labelled with what differs (`finetune [train.lr=0.05]`). Recipe: `shared` (the suite's, for every "
         "method), `reference` (the method's authors' own on this benchmark), `own, other benchmark` (its authors' "
         "recipe from a benchmark they ran), `suite` (the suite's: its authors never ran this one). Columns: each protocol's headline metrics "
         "(↓: lower is better), recomputed from the records' raw results with the current code. " + BOLD_RULE +
         " Mean rank over the headline metrics, a metric family counted once (1 = best). Costs: trainable "
         "parameters, memory a method keeps between experiences, peak memory, wall time in hours (GPU-hours on a "
         "GPU), and what inference needs beyond the model. Drops are in points.\n")


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
