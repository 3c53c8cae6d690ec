"""The leaderboard as a static site, written beside the markdown every time (`clipbench leaderboard`).

One folder, no server and no network: `index.html` (the suites and their protocols), one page per suite (every
row of every protocol in one table: sortable by any column, filtered by protocol, method family, recipe and
kind, the reported rows of papers beside the reproduced ones, the n/a rows with their reason), and one page
per row (its accuracy matrix as a heatmap and a table, the protocol's curves, every metric, costs, each
seed's provenance and the command that reproduces it). `site.css` and `site.js` are shared by every page;
the pictures are the ones the leaderboard draws anyway. Filters and sort live in the URL's fragment
(`mini.html#protocol=mini_fashion_mst&sort=avg&dir=desc`), so a view can be linked to.

Everything from a record is escaped (`html.escape`); the pages are functions of the records alone (no clock,
no machine state), so `leaderboard --check` can compare them byte for byte.
"""

from __future__ import annotations

import html
import shlex
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from clipbench.protocols.metrics import metric_of

from .entries import Entry, Loaded, NotApplicable, slug
from .stats import bold_entries, headline_of, mean_ranks, ranked_metrics
from .tables import protocol_entries, protocol_na, recipe_label

# The method families the filters offer. A method of a user's may say its own with a `family` class attribute.
FAMILIES: Dict[str, str] = {
    **dict.fromkeys(["zeroshot", "continual_clip", "finetune", "joint"], "reference rows"),
    **dict.fromkeys(["lwf", "lwf_zscl", "vr_lwf", "lwf_vr", "geodl", "zscl"], "distillation"),
    **dict.fromkeys(["imm", "ewc", "wise_ft", "wise_ft_zscl", "wc_zscl", "magmax", "rkr"], "weight space"),
    **dict.fromkeys(["er", "agem", "icarl", "icarl_zscl"], "replay"),
    **dict.fromkeys(["moe_adapters", "moe_adapters_cil", "diki", "rail_primal", "rail_dual", "keeplora", "gift"],
                    "adapters and analytic (MTIL)"),
    **dict.fromkeys(["simplecil", "proof", "rapf", "clap4clip", "mg_clip", "engine", "bofa", "attriclip", "l2p",
                     "dualprompt", "coda_prompt", "clg_cbm", "area", "lada"], "CLIP-based CIL"),
}
COSTS: List[Tuple[str, str]] = [("trainable_params", "trainable params (M)"), ("extra_memory_mb", "extra mem (MB)"),
                                ("exemplars", "exemplars"), ("peak_mb", "peak mem (MB)"), ("hours", "wall (h)")]
# `clipbench run` options that say where or how a run executed, not what it computed: left out of the command
_HOW = {"--results": 1, "--quiet": 0, "--threads": 1, "--workers": 1, "--cache-dir": 1, "--log": 1, "--device": 1,
        "--executor": 1, "--address": 1, "--wait": 0, "--cpus": 1, "--gpus": 1, "--mem-gb": 1, "--time-min": 1,
        "--partition": 1, "--shard": 1, "--dry-run": 0, "--json": 0}
_WHAT = {"--all", "--method", "--protocol", "--seeds"}  # given again from the record's spec


def family_of(method: str) -> str:
    """The method's family for the filters: its class's `family`, else the shipped table, else `other`."""
    try:
        from clipbench.methods.base import METHODS

        own = getattr(METHODS.get(method), "family", None)
    except Exception:  # a method this checkout does not have: its records still show
        own = None
    return str(own or FAMILIES.get(method, "other"))


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _argv_settings(argv: Sequence[str]) -> List[str]:
    """The options of a recorded `clipbench run` command line that chose what it computed (`--suite`,
    `--set`, `--config`, `--include`), in their order; where and how it ran, and the selection, are dropped."""
    out: List[str] = []
    args = list(argv[2:]) if len(argv) > 1 and argv[1] == "run" else []
    i = 0
    while i < len(args):
        tok = args[i]
        flag = tok.split("=", 1)[0]
        if flag in _HOW:
            i += 1 + (_HOW[flag] if "=" not in tok else 0)
            continue
        if flag in _WHAT or flag in ("--suite",):
            i += 1
            while i < len(args) and not args[i].startswith("--"):
                i += 1
            continue
        out.append(tok)
        i += 1
    return out


def reproduce_command(entry: Entry, seeds: Optional[Sequence[int]] = None) -> str:
    """The command that reruns the row's runs (all seeds, or `seeds`): the recorded commit checked out, then
    `clipbench run` with the row's suite, method, protocol and seeds and the recorded command's settings; on
    the CPU also the recorded torch threads (a few methods' last digits depend on them, and a grid's worker
    processes run with one each whatever the command line said)."""
    run = entry.runs[0]
    prov = run["provenance"]
    seeds = list(seeds) if seeds is not None else [r["seed"] for r in entry.runs]
    threads = prov.get("torch_threads") if str(prov.get("device", "")).startswith("cpu") else None
    words = ["clipbench", "run", "--suite", entry.suite, "--method", entry.method, "--protocol", entry.protocol,
             "--seeds", *[str(s) for s in seeds]] + (["--threads", str(threads)] if threads else []) \
        + _argv_settings([str(a) for a in prov.get("argv") or []])
    command = " ".join(shlex.quote(w) for w in words)
    commit = prov.get("git_commit")
    return (f"git checkout {shlex.quote(str(commit))} && " if commit else "") + command


# ------------------------------------------------------------------ cells


def _mean_std(vals: Sequence[float]) -> Tuple[Optional[float], Optional[float]]:
    if not vals:
        return None, None
    return float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else None


def _num_cell(value: Optional[float], text: str, cls: str = "") -> str:
    attr = "" if value is None else f' data-v="{value:.10g}"'
    return f'<td class="num{(" " + cls) if cls else ""}"{attr}>{esc(text)}</td>'


def _metric_text(mean: Optional[float], std: Optional[float]) -> str:
    if mean is None:
        return "-"
    return f"{mean:.3f}" + (f" ± {std:.3f}" if std is not None else "")


def _cost_value(entry: Entry, key: str) -> Optional[float]:
    vals = [r["costs"][key] for r in entry.runs if r["costs"].get(key) is not None]
    return _scaled(key, float(np.mean(vals))) if vals else None


def _cost_text(key: str, v: Optional[float]) -> str:
    if v is None:
        return "-"
    return {"trainable_params": f"{v:.3f}", "hours": f"{v:.4f}", "exemplars": f"{v:.0f}"}.get(key, f"{v:.1f}")


def _extras(entry: Entry) -> str:
    vals = [r["costs"].get("inference_extras") for r in entry.runs if r["costs"].get("inference_extras") is not None]
    return "; ".join(sorted({v or "none" for v in vals})) if vals else "-"


# ------------------------------------------------------------------ pages


def _page(title: str, root: str, body: str) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{esc(title)}</title>\n<link rel=\"stylesheet\" href=\"{root}site.css\">\n"
            f"<script src=\"{root}site.js\" defer></script>\n</head>\n<body>\n"
            f"<nav><a href=\"{root}index.html\">clipbench leaderboards</a></nav>\n<main>\n{body}</main>\n</body>\n</html>\n")


def _detail_path(entry: Entry) -> str:
    return f"{slug(entry.suite)}/{slug(entry.protocol)}/{entry.file_stem}.html"


def _columns(suite_entries: Sequence[Entry], protocols: Sequence[str], reported: Sequence[Dict[str, Any]]) -> List[str]:
    """The suite table's metric columns: each protocol's headline metrics, then the reported files' metrics."""
    present = {m for e in suite_entries for r in e.runs for m in r["metrics"]}
    cols: List[str] = []
    for p in protocols:
        for m in headline_of(p):
            if m in present and m not in cols:
                cols.append(m)
    for doc in reported:
        for m in doc["metrics"]:
            if str(m) not in cols:
                cols.append(str(m))
    return cols


def _select(name: str, label: str, values: Iterable[str]) -> str:
    options = "".join(f'<option value="{esc(v)}">{esc(v)}</option>' for v in sorted(set(values)))
    return (f'<label>{esc(label)} <select id="f-{name}" data-filter="{name}">'
            f'<option value="">all</option>{options}</select></label>\n')


def suite_page(suite: str, loaded: Loaded, reported: Sequence[Dict[str, Any]]) -> str:
    """One suite's table: every row of every protocol, reported rows beside them, n/a rows with why."""
    entries = [e for e in loaded.entries if e.suite == suite]
    protocols = sorted({e.protocol for e in entries} | {n.protocol for n in loaded.not_applicable if n.suite == suite})
    docs = [d for d in reported if d["suite"] == suite]
    columns = _columns(entries, protocols, docs)
    head = (["protocol", "method", "family", "recipe", "kind", "model", "seeds"] + columns
            + [c for _, c in COSTS] + ["extra at inference", "mean rank"])
    numeric = {"seeds", *columns, *(c for _, c in COSTS), "mean rank"}
    rows: List[str] = []
    has_na = any(n.suite == suite for n in loaded.not_applicable)
    for protocol in protocols:
        proto = protocol_entries(entries, suite, protocol)
        own_cols = [m for m in headline_of(protocol) if any(m in r["metrics"] for e in proto for r in e.runs)]
        one_session = all(len(r["raw"]["acc_matrix"]) == 2 for e in proto for r in e.runs)
        bold = {m: bold_entries(proto, metric_of(m), m) for m in own_cols}
        ranks = mean_ranks(proto, ranked_metrics(own_cols, one_session)) if proto else []
        for i, e in enumerate(proto):
            recipe = recipe_label(e.runs[0]["spec"])
            cells = [f"<td>{esc(protocol)}</td>",
                     f'<td><a href="{esc(_detail_path(e))}">{esc(e.name)}</a></td>',
                     f"<td>{esc(family_of(e.method))}</td>", f"<td>{esc(recipe)}</td>", "<td>reproduced</td>",
                     f"<td>{esc(e.model)}</td>", _num_cell(len(e.runs), str(len(e.runs)))]
            for m in columns:
                mean, std = _mean_std(e.values(m))
                cells.append(_num_cell(mean, _metric_text(mean, std), "best" if i in bold.get(m, ()) else ""))
            for key, _ in COSTS:
                v = _cost_value(e, key)
                cells.append(_num_cell(v, _cost_text(key, v)))
            cells.append(f'<td class="extras">{esc(_extras(e))}</td>')
            rank = ranks[i] if i < len(ranks) else None
            cells.append(_num_cell(rank, "-" if rank is None else f"{rank:.2f}"))
            title = esc(reproduce_command(e))
            rows.append(f'<tr data-protocol="{esc(protocol)}" data-family="{esc(family_of(e.method))}" '
                        f'data-recipe="{esc(recipe)}" data-kind="reproduced" title="{title}">' + "".join(cells) + "</tr>")
        for n in protocol_na(loaded, suite, protocol):
            rows.append(_na_row(n, len(columns)))
    for doc in docs:
        scale = float(doc.get("scale", 1.0)) or 1.0
        for label, row in doc["rows"].items():
            cells = [f"<td>{esc(doc['protocol'])}</td>", f"<td>{esc(label)} <span class=\"tag\">reported</span></td>",
                     f"<td>{esc(family_of(row['method']))}</td>", "<td>reported</td>", "<td>reported</td>",
                     f"<td>{esc(doc['model'])}</td>", _num_cell(None, "-")]
            for m in columns:
                v = row["metrics"].get(m)
                v = None if v is None else float(v) / scale
                cells.append(_num_cell(v, "-" if v is None else f"{v:.3f}"))
            cells += [_num_cell(None, "-") for _ in COSTS] + ["<td>-</td>", _num_cell(None, "-")]
            rows.append(f'<tr class="reported" data-protocol="{esc(doc["protocol"])}" '
                        f'data-family="{esc(family_of(row["method"]))}" data-recipe="reported" data-kind="reported" '
                        f'title="{esc(doc["source"])}">' + "".join(cells) + "</tr>")
    ths = "".join(f'<th data-type="{"num" if h in numeric else "text"}" data-col="{esc(h)}">{esc(h)}</th>' for h in head)
    kinds = ["reproduced"] + (["reported"] if docs else []) + (["n/a"] if has_na else [])
    recipes = [recipe_label(e.runs[0]["spec"]) for e in entries] + (["reported"] if docs else [])
    families = [family_of(e.method) for e in entries] + [family_of(r["method"]) for d in docs for r in d["rows"].values()]
    body = (f"<h1>Leaderboard: {esc(suite)}</h1>\n"
            "<p>Mean ± standard deviation over seeds, recomputed from the run records. Click a column to sort, "
            "a method for its accuracy matrix, curves, costs, provenance and the command that reproduces it. "
            "<b>Bold</b>: not significantly worse than the protocol's best (Welch's t-test, one-sided, 0.05). "
            "Reported rows are papers' numbers on the clipbench scale, marked <span class=\"tag\">reported</span>; "
            "they sit beside our runs of the method they name but were not run here.</p>\n"
            '<form class="filters" onsubmit="return false">\n'
            + _select("protocol", "protocol", protocols) + _select("family", "family", families)
            + _select("recipe", "recipe", recipes) + _select("kind", "kind", kinds)
            + '<label>search <input id="f-q" type="search" data-filter="q"></label>\n</form>\n'
            f'<p id="shown"></p>\n<table class="board" id="board">\n<thead><tr>{ths}</tr></thead>\n<tbody>\n'
            + "\n".join(rows) + "\n</tbody>\n</table>\n")
    return _page(f"clipbench: {suite}", "", body)


def _na_row(n: NotApplicable, n_metrics: int) -> str:
    cells = [f"<td>{esc(n.protocol)}</td>", f"<td>{esc(n.method)}</td>", f"<td>{esc(family_of(n.method))}</td>",
             "<td>-</td>", "<td>n/a</td>", f"<td>{esc(n.model)}</td>", _num_cell(0, "0"),
             f'<td class="na" colspan="{n_metrics + len(COSTS) + 2}">n/a: {esc(n.reason)}</td>']
    return (f'<tr class="na" data-protocol="{esc(n.protocol)}" data-family="{esc(family_of(n.method))}" '
            f'data-recipe="-" data-kind="n/a">' + "".join(cells) + "</tr>")


def _heat_table(matrix: np.ndarray) -> str:
    head = "".join(f"<th>exp {j}</th>" for j in range(matrix.shape[1]))
    rows = []
    for i, row in enumerate(matrix):
        cells = "".join(f'<td class="heat" style="background:hsl({120 * float(x):.0f},60%,{85 - 35 * float(x):.0f}%)">'
                        f"{x:.3f}</td>" for x in row)
        rows.append(f"<tr><th>{i}</th>{cells}</tr>")
    return f'<table class="matrix"><thead><tr><th>after</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def detail_page(entry: Entry) -> str:
    """One row: accuracy matrix, curves, every metric per seed, costs, provenance, the commands."""
    from .figures import mean_matrix

    metrics = sorted({m for r in entry.runs for m in r["metrics"]})
    seeds = [r["seed"] for r in entry.runs]
    metric_rows = []
    for m in metrics:
        mean, std = _mean_std(entry.values(m))
        per_seed = "".join(f"<td class=\"num\">{esc(_fmt(r['metrics'].get(m)))}</td>" for r in entry.runs)
        metric_rows.append(f"<tr><td>{esc(m)}</td><td class=\"num\">{esc(_metric_text(mean, std))}</td>{per_seed}</tr>")
    seed_heads = "".join(f"<th>seed {esc(s)}</th>" for s in seeds)
    cost_rows = "".join(f"<tr><td>{esc(label)}</td>" + "".join(
        f"<td class=\"num\">{esc(_cost_text(key, _scaled(key, r['costs'].get(key))))}</td>" for r in entry.runs) + "</tr>"
        for key, label in COSTS)
    prov_rows = []
    for r in entry.runs:
        p = r["provenance"]
        versions = p.get("versions") or {}
        prov_rows.append("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in (
            r["seed"], str(p.get("git_commit") or "unknown")[:12] + (" (dirty)" if p.get("git_dirty") else ""),
            versions.get("clipbench", "?"), versions.get("torch", "?"), f"{p.get('device', '?')} ({p.get('device_name', '?')})",
            p.get("started", ""), p.get("ended", ""))) + "</tr>")
    commands = "".join(f"<li><code>{esc(reproduce_command(entry, [s]))}</code></li>" for s in seeds)
    body = (f"<h1>{esc(entry.name)} <small>{esc(entry.suite)} / {esc(entry.protocol)} / {esc(entry.model)}</small></h1>\n"
            f'<p><a href="../../{esc(slug(entry.suite))}.html#protocol={esc(entry.protocol)}">back to the table</a> · '
            f"family: {esc(family_of(entry.method))} · recipe: {esc(recipe_label(entry.runs[0]['spec']))} · "
            f"{len(entry.runs)} seed(s) · extra at inference: {esc(_extras(entry))}</p>\n"
            "<h2>Reproduce</h2>\n<p>Every seed of this row:</p>\n"
            f"<pre><code>{esc(reproduce_command(entry))}</code></pre>\n<p>One seed at a time:</p>\n<ul>{commands}</ul>\n"
            "<h2>Accuracy matrix</h2>\n<p>Row 0 is before any training, row i after experience i; column j is "
            "experience j's test set (mean over seeds).</p>\n"
            f'<img src="{esc(entry.file_stem)}.png" alt="accuracy matrix of {esc(entry.name)}">\n'
            + _heat_table(mean_matrix(entry.runs)) + "\n"
            f"<h2>Curves</h2>\n<img src=\"../{esc(slug(entry.protocol))}_curves.png\" "
            f"alt=\"target accuracy and zero-shot retention of every method on {esc(entry.protocol)}\">\n"
            f"<h2>Every metric</h2>\n<table><thead><tr><th>metric</th><th>mean ± std</th>{seed_heads}</tr></thead>"
            f"<tbody>{''.join(metric_rows)}</tbody></table>\n"
            f"<h2>Costs</h2>\n<table><thead><tr><th>cost</th>{seed_heads}</tr></thead><tbody>{cost_rows}</tbody></table>\n"
            "<h2>Provenance</h2>\n<table><thead><tr><th>seed</th><th>commit</th><th>clipbench</th><th>torch</th>"
            f"<th>device</th><th>started</th><th>ended</th></tr></thead><tbody>{''.join(prov_rows)}</tbody></table>\n")
    return _page(f"clipbench: {entry.name} on {entry.protocol}", "../../", body)


def _fmt(v: Any) -> str:
    return "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))


def _scaled(key: str, v: Any) -> Optional[float]:
    if v is None:
        return None
    return float(v) / 1e6 if key == "trainable_params" else float(v)


def index_page(loaded: Loaded, suites: Sequence[str], others: Sequence[str] = ()) -> str:
    parts = ["<h1>clipbench leaderboards</h1>\n<p>Continual learning of CLIP models: every method of each suite, "
             "from run records alone. Each suite's page holds one sortable, filterable table.</p>\n"]
    for suite in suites:
        entries = [e for e in loaded.entries if e.suite == suite]
        protocols = sorted({e.protocol for e in entries} | {n.protocol for n in loaded.not_applicable if n.suite == suite})
        items = []
        for p in protocols:
            rows = [e for e in entries if e.protocol == p]
            na = [n for n in loaded.not_applicable if n.suite == suite and n.protocol == p]
            items.append(f'<li><a href="{esc(slug(suite))}.html#protocol={esc(p)}">{esc(p)}</a>: {len(rows)} row(s), '
                         f"{sum(len(e.runs) for e in rows)} run(s)" + (f", {len(na)} n/a" if na else "")
                         + f' · <a href="{esc(slug(suite))}/{esc(slug(p))}.md">markdown</a></li>')
        parts.append(f'<h2><a href="{esc(slug(suite))}.html">{esc(suite)}</a></h2>\n<ul>{"".join(items)}</ul>\n')
    for page in others:  # suites an earlier write put here (`leaderboard --suite` rewrote only one)
        if page not in {slug(s) for s in suites}:
            parts.append(f'<h2><a href="{esc(page)}.html">{esc(page)}</a></h2>\n')
    return _page("clipbench leaderboards", "", "".join(parts))


def write_site(out: Path, loaded: Loaded, reported: Sequence[Dict[str, Any]], put: Callable[[Path, str], None],
               others: Sequence[str] = ()) -> None:
    """Write the site into `out` (the leaderboard folder) through `put(path, text)`; `others`: pages of suites
    written there before that the index keeps linking."""
    suites = sorted({e.suite for e in loaded.entries} | {n.suite for n in loaded.not_applicable})
    put(out / "site.css", _asset("site.css"))
    put(out / "site.js", _asset("site.js"))
    put(out / "index.html", index_page(loaded, suites, others))
    for suite in suites:
        put(out / f"{slug(suite)}.html", suite_page(suite, loaded, reported))
    for e in loaded.entries:
        put(out / _detail_path(e), detail_page(e))


def _asset(name: str) -> str:
    return (Path(__file__).parent / "site_assets" / name).read_text()


__all__ = ["write_site", "reproduce_command", "family_of", "FAMILIES", "suite_page", "detail_page", "index_page"]
