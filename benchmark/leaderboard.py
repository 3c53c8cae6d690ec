"""A plain markdown leaderboard from run records: mean +- std over seeds per method and model."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import pandas as pd
from tabulate import tabulate

from .store import ResultStore

HEADLINE = ["last", "avg", "bwt", "zs_retention", "zs_drop", "i2t_r1", "t2i_r1"]


def tidy(store: ResultStore, suite: Optional[str] = None) -> pd.DataFrame:
    """One row per (complete record, metric id)."""
    rows: List[Dict[str, Any]] = []
    for _, rec in store.iter_records():
        if rec.get("status") != "complete" or (suite and rec["spec"]["suite"] != suite):
            continue
        spec = rec["spec"]
        for metric, value in rec["metrics"].items():
            rows.append({"suite": spec["suite"], "protocol": spec["protocol"], "method": spec["method"],
                         "model": spec["model"]["arch"], "seed": spec["seed"], "metric": metric, "value": value})
    return pd.DataFrame(rows, columns=["suite", "protocol", "method", "model", "seed", "metric", "value"])


def _escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(store: ResultStore, suite: Optional[str] = None) -> str:
    """A markdown table per (suite, protocol) of the headline metrics, mean +- std (n seeds)."""
    frame = tidy(store, suite)
    if frame.empty:
        return "No complete runs found.\n"
    out = []
    for (suite_name, protocol), part in frame.groupby(["suite", "protocol"], sort=True):
        part = part[part.metric.isin(HEADLINE)]
        stats = part.groupby(["method", "model", "metric"]).value.agg(["mean", "std", "count"]).reset_index()
        cols = [m for m in HEADLINE if m in set(stats.metric)]
        table = []
        for (method, model), g in stats.groupby(["method", "model"], sort=True):
            cells = {r.metric: f"{r['mean']:.3f} ± {0.0 if pd.isna(r['std']) else r['std']:.3f}" for _, r in g.iterrows()}
            n = int(g["count"].max())
            table.append([_escape(method), _escape(model), n] + [cells.get(c, "-") for c in cols])
        out.append(f"### {_escape(suite_name)} / {_escape(protocol)}\n")
        out.append(tabulate(table, headers=["method", "model", "seeds"] + cols, tablefmt="github"))
        out.append("")
    return "\n".join(out) + "\n"
