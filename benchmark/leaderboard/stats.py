"""Which metrics a protocol reports and ranks, and the significance test that sets a cell in bold."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, List, Optional, Sequence, Set, Tuple

import numpy as np
import pandas as pd
from clipbench.protocols.metrics import Metric, headline_metrics, metric_of

from ..errors import ClipbenchError

if TYPE_CHECKING:  # annotations only: entries imports this module
    from .entries import Entry


BOLD_LEVEL = 0.05  # one-sided Welch's t-test: bold unless significantly worse than the column's best


BOLD_RULE = (f"**Bold**: not significantly worse than the column's best mean (Welch's t-test, one-sided, "
             f"level {BOLD_LEVEL}); only rows with 2 or more seeds are tested, so with fewer nothing is bold.")


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
