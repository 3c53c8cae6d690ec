"""Metrics: pure functions of a run record's raw results, one registered function per metric.

Each metric lives in its own module here and registers itself with `@metric`, beside its
declarations: its direction (is higher or lower better), its version (bump it whenever its formula
changes), whether it is a headline metric (shown and ranked in the main table of a protocol that
names no headline metrics of its own), its family (metrics that measure one thing and so rank
alike, such as `i2t_r1` and its `_drop` twin: a mean rank counts a family once) and the protocol
kinds it applies to (default: every kind). Modules are discovered on first use, like methods (a new
file in this folder is enough); a separate package adds metrics through the entry point group
`clipbench.metrics`.

A protocol reports the metrics its file lists under `metrics:`, or by default every metric declared
for its kind (`default_metrics`); `check_metric_names` validates such a list.

Metrics read only `record["raw"]`, never run inside training, and so are recomputed from files (the
leaderboard recomputes them with the current code). Notation: R is the accuracy matrix with T+1 rows
and T columns; R[0][j] is the accuracy on experience j's test set before any training and R[i][j]
after training experiences 0..i-1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from clipbench.errors import ClipbenchError, unknown_name_error
from clipbench.registry import Registry
from clipbench.streams import KINDS

Raw = Dict[str, Any]
DIRECTIONS = ("higher", "lower")


@dataclass(frozen=True)
class Metric:
    """A registered metric. `compute(raw)` returns {id: value}: its own id and optional per-set ids
    (`zs_retention.emoji`); an empty dict when the record lacks what the formula needs."""

    name: str
    direction: str  # "higher" or "lower" is better
    version: int
    compute: Callable[[Raw], Dict[str, float]]
    doc: str
    headline: bool = False
    family: str = ""  # metrics of one family rank alike; default: the metric's own name
    one_session_family: str = ""  # its family when every run has one experience (e.g. `avg` equals `last` there)
    kinds: Tuple[str, ...] = KINDS  # the protocol kinds that report it unless their file lists their own metrics

    @property
    def lower_is_better(self) -> bool:
        return self.direction == "lower"

    def family_in(self, one_session: bool) -> str:
        """The family this metric counts in, in a protocol with one experience or more."""
        return (self.one_session_family if one_session else "") or self.family or self.name


METRICS: Registry[Metric] = Registry("metric", "clipbench.protocols.metrics", entry_point_group="clipbench.metrics")


def metric(name: str, direction: str = "higher", version: int = 1, headline: bool = False,
           family: Optional[str] = None, one_session_family: Optional[str] = None, kinds: Sequence[str] = KINDS):
    """Register `fn(raw) -> float | dict | None` as a metric; its docstring is the formula."""
    if direction not in DIRECTIONS:
        raise ClipbenchError(f"metric '{name}': direction must be one of {', '.join(DIRECTIONS)}, got '{direction}'")
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise ClipbenchError(f"metric '{name}': kinds must be some of {', '.join(KINDS)}, got {list(kinds)}")

    def decorate(fn: Callable[[Raw], Any]) -> Callable[[Raw], Any]:
        def compute(raw: Raw) -> Dict[str, float]:
            value = fn(raw)
            if value is None:
                return {}
            return value if isinstance(value, dict) else {name: float(value)}

        METRICS.register(name, Metric(name, direction, version, compute, (fn.__doc__ or "").strip(), headline,
                                      family or name, one_session_family or "", tuple(kinds)))
        return fn

    return decorate


def metric_of(metric_id: str) -> Metric:
    """The registered metric behind an id, per-set ids included (`zs_retention.emoji` -> zs_retention)."""
    return METRICS.get(metric_id.split(BATCH1_SUFFIX)[0].split(".")[0])


def headline_metrics() -> List[str]:
    """The metrics declared headline, for protocols that name none of their own."""
    return [n for n in METRICS.names() if METRICS.get(n).headline]


# Metrics measured at evaluation batch size 1 carry this suffix (`last@bs1`), beside those at the protocol's batch.
BATCH1_SUFFIX = "@bs1"


def default_metrics(kind: str) -> Tuple[str, ...]:
    """The metrics a protocol of `kind` reports when its file lists none: every one declared for that kind."""
    return tuple(n for n in METRICS.names() if kind in METRICS.get(n).kinds)


def check_metric_names(value: Any, where: str, key: str = "metrics") -> Tuple[str, ...]:
    """A list of registered metric names from a file, or one line naming `where`, `key` and a did-you-mean."""
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ClipbenchError(f"{where}: {key} must be a list of metric names, e.g. [last, avg, zs_retention] "
                             "(`clipbench list metrics` names them)")
    for name in value:
        if name not in METRICS:
            raise ClipbenchError(f"{where}: {key}: {unknown_name_error('metric', name, METRICS.names())}")
    return tuple(value)


def compute_metrics(raw: Raw, names: Optional[Sequence[str]] = None) -> Dict[str, Dict[str, float]]:
    """The metrics `names` (default: every registered one) on `raw`: {"values": {id: value}, "versions":
    {metric name: version}}.

    Where `raw` also holds rows measured at evaluation batch size 1 (`raw["batch1"]`: its own accuracy
    matrix and held-out figures, for methods that infer the task from a whole test batch), every metric
    again from those, suffixed `@bs1` (per-class figures were measured at the protocol's batch only)."""
    values: Dict[str, float] = {}
    versions: Dict[str, int] = {}
    for name in METRICS.names() if names is None else names:
        m = METRICS.get(name)
        values.update(m.compute(raw))
        versions[name] = m.version
    if raw.get("batch1"):
        at1 = compute_metrics({**raw, **raw["batch1"], "batch1": None, "class_acc_all": None}, names)
        for part, found in (("values", values), ("versions", versions)):
            found.update({f"{k}{BATCH1_SUFFIX}": v for k, v in at1[part].items()})
    return {"values": values, "versions": versions}
