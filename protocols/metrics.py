"""Metrics: pure functions of a run record's raw results, each with a name, direction and version.

They read only `record["raw"]`, never run inside training, and so can be recomputed from files.
Notation: R is the accuracy matrix with T+1 rows and T columns; R[0][j] is the accuracy on
experience j's test set before any training and R[i][j] after training experiences 0..i-1.
Bump a metric's version whenever its formula changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

from clipbench.registry import Registry

Raw = Dict[str, Any]


@dataclass(frozen=True)
class Metric:
    """A registered metric. `compute(raw)` returns {id: value}: the headline id and optional per-set ids."""

    name: str
    direction: str  # "higher" or "lower" is better
    version: int
    compute: Callable[[Raw], Dict[str, float]]
    doc: str


METRICS: Registry[Metric] = Registry("metric", None)


def metric(name: str, direction: str = "higher", version: int = 1):
    """Register `fn(raw) -> float | dict | None` as a metric; its docstring is the formula."""

    def decorate(fn: Callable[[Raw], Any]) -> Callable[[Raw], Any]:
        def compute(raw: Raw) -> Dict[str, float]:
            value = fn(raw)
            if value is None:
                return {}
            return value if isinstance(value, dict) else {name: float(value)}

        METRICS.register(name, Metric(name, direction, version, compute, (fn.__doc__ or "").strip()))
        return fn

    return decorate


def _mean(xs: List[float]) -> Optional[float]:
    return sum(xs) / len(xs) if xs else None


def _matrix(raw: Raw) -> List[List[float]]:
    return raw["acc_matrix"]


@metric("last")
def last(raw: Raw) -> Optional[float]:
    """Mean of the final row: (1/T) * sum_j R[T][j]."""
    return _mean(_matrix(raw)[-1])


@metric("avg")
def average_incremental(raw: Raw) -> Optional[float]:
    """Average incremental accuracy: (1/T) * sum_{i=1..T} acc_i, where acc_i is the accuracy on the
    union of the test sets of experiences 0..i-1 after step i, i.e. sum_{j<i} n_j R[i][j] / sum_{j<i} n_j
    (n_j: test-set size of experience j)."""
    R, n = _matrix(raw), raw["test_sizes"]
    steps = [sum(n[j] * R[i][j] for j in range(i)) / sum(n[:i]) for i in range(1, len(R))]
    return _mean(steps)


@metric("bwt")
def backward_transfer(raw: Raw) -> Optional[float]:
    """Backward transfer (Lopez-Paz & Ranzato, 2017): (1/(T-1)) * sum_{j<T-1} (R[T][j] - R[j+1][j])."""
    R = _matrix(raw)
    T = len(R) - 1
    return _mean([R[T][j] - R[j + 1][j] for j in range(T - 1)])


@metric("forgetting", direction="lower")
def forgetting(raw: Raw) -> Optional[float]:
    """Average forgetting (Chaudhry et al., 2018): (1/(T-1)) * sum_{j<T-1} (max_{j+1<=i<T} R[i][j] - R[T][j])."""
    R = _matrix(raw)
    T = len(R) - 1
    return _mean([max(R[i][j] for i in range(j + 1, T)) - R[T][j] for j in range(T - 1)])


@metric("ut_acc")
def updated_task_accuracy(raw: Raw) -> Optional[float]:
    """The founding paper's UT-Acc: accuracy on the updated task after the last experience, over every
    test sample of the stream: sum_j n_j R[T][j] / sum_j n_j."""
    R, n = _matrix(raw), raw["test_sizes"]
    return sum(n[j] * R[-1][j] for j in range(len(n))) / sum(n)


@metric("a_acc")
def average_of_ut_and_zs(raw: Raw) -> Optional[float]:
    """The founding paper's A-Acc: (UT-Acc + ZS-Acc) / 2, ZS-Acc the mean zero-shot accuracy over the
    held-out sets after the last experience. Absent without held-out sets."""
    sets = raw.get("zeroshot") or {}
    if not sets:
        return None
    zs = sum(v[-1] for v in sets.values()) / len(sets)
    return (updated_task_accuracy(raw) + zs) / 2


@metric("mtil_transfer")
def mtil_transfer(raw: Raw) -> Optional[float]:
    """ZSCL's Transfer: for each task j >= 1, the mean of R[i][j] over the steps before it is learned
    (i = 1..j; row 0, the untouched model, is excluded as in ZSCL), then the mean over tasks."""
    R = _matrix(raw)
    T = len(R) - 1
    return _mean([_mean([R[i][j] for i in range(1, j + 1)]) for j in range(1, T)])


@metric("mtil_avg")
def mtil_avg(raw: Raw) -> Optional[float]:
    """ZSCL's Avg.: the mean of R[i][j] over every step i = 1..T and every task j."""
    R = _matrix(raw)
    return _mean([x for row in R[1:] for x in row])


@metric("mtil_last")
def mtil_last(raw: Raw) -> Optional[float]:
    """ZSCL's Last: the mean over tasks of the final row, (1/T) * sum_j R[T][j]."""
    return _mean(_matrix(raw)[-1])


def _per_set(values: Dict[str, float], name: str) -> Dict[str, float]:
    """The headline `name` (mean over sets) plus `name.<set>` for each set."""
    if not values:
        return {}
    out = {name: sum(values.values()) / len(values)}
    out.update({f"{name}.{k}": v for k, v in sorted(values.items())})
    return out


@metric("zs_retention")
def zs_retention(raw: Raw) -> Dict[str, float]:
    """Zero-shot retention per held-out set: acc_after_last / acc_before; headline = mean over sets.
    A set whose before-accuracy is 0 is left out (the ratio is undefined)."""
    sets = raw.get("zeroshot") or {}
    return _per_set({k: v[-1] / v[0] for k, v in sets.items() if v[0] > 0}, "zs_retention")


@metric("zs_drop", direction="lower")
def zs_drop(raw: Raw) -> Dict[str, float]:
    """Zero-shot accuracy lost per held-out set, in points: 100 * (acc_before - acc_after_last); headline = mean."""
    sets = raw.get("zeroshot") or {}
    return _per_set({k: 100.0 * (v[0] - v[-1]) for k, v in sets.items()}, "zs_drop")


@metric("zs_acc")
def zs_acc(raw: Raw) -> Dict[str, float]:
    """Zero-shot accuracy per held-out set after the last experience; headline = mean over sets."""
    sets = raw.get("zeroshot") or {}
    return _per_set({k: v[-1] for k, v in sets.items()}, "zs_acc")


def _recall_metric(key: str) -> None:
    def after(raw: Raw) -> Dict[str, float]:
        sets = raw.get("retrieval") or {}
        return _per_set({k: v[key][-1] for k, v in sets.items() if key in v}, key)

    def drop(raw: Raw) -> Dict[str, float]:
        sets = raw.get("retrieval") or {}
        return _per_set({k: 100.0 * (v[key][0] - v[key][-1]) for k, v in sets.items() if key in v}, f"{key}_drop")

    direction, k = key.split("_r")
    what = "image-to-text" if direction == "i2t" else "text-to-image"
    after.__doc__ = f"{what} recall@{k} after the last experience (mean over retrieval sets, and per set)."
    drop.__doc__ = f"{what} recall@{k} lost, in points: 100 * (before - after last); mean over sets, and per set."
    metric(key)(after)
    metric(f"{key}_drop", direction="lower")(drop)


for _key in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"):
    _recall_metric(_key)


def compute_metrics(raw: Raw) -> Dict[str, Dict[str, float]]:
    """Every registered metric on `raw`: ({id: value}, {metric name: version})."""
    values: Dict[str, float] = {}
    versions: Dict[str, int] = {}
    for name in METRICS.names():
        m = METRICS.get(name)
        values.update(m.compute(raw))
        versions[name] = m.version
    return {"values": values, "versions": versions}
