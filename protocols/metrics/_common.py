"""Helpers shared by the metric modules (a leading underscore: not a metric, not discovered)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

Raw = Dict[str, Any]


def mean(xs: List[float]) -> Optional[float]:
    """The mean, or None for no values."""
    return sum(xs) / len(xs) if xs else None


def matrix(raw: Raw) -> List[List[float]]:
    """The accuracy matrix R (row 0 before training)."""
    return raw["acc_matrix"]


def per_set(values: Dict[str, float], name: str) -> Dict[str, float]:
    """The metric `name` (mean over sets) plus `name.<set>` for each set."""
    if not values:
        return {}
    out = {name: sum(values.values()) / len(values)}
    out.update({f"{name}.{k}": v for k, v in sorted(values.items())})
    return out


def final_zero_shot(raw: Raw) -> Optional[float]:
    """Mean zero-shot accuracy over the held-out sets after the last experience (None without sets)."""
    sets = raw.get("zeroshot") or {}
    return mean([v[-1] for v in sets.values()])


def phase_matrix(raw: Raw) -> Optional[List[List[float]]]:
    """The founding paper's phase matrix, transcribed from yxding95/CL-CLIP (commit 877a69f),
    `methods/base.py`, `Base.get_acc_bwt`: PM[p][i] is the mean, over the classes of phase i, of the
    per-class accuracy measured after training phase p, every class of the stream scored (`Base.test`
    scores all class names). Phases are the experiences; their classes come from
    `raw["experience_classes"]` (the reference cuts the class list into equal contiguous chunks, which
    is the same thing for equal experiences in class order). Rows come from `raw["class_acc_all"]`.

    None when the record lacks per-class rows (records from before clipbench stored them) or a class
    has no test image (the reference would divide by zero).
    """
    rows, R = raw.get("class_acc_all"), raw.get("acc_matrix") or []
    phases = raw.get("experience_classes") or []
    T = len(R) - 1
    if not rows or len(rows) != len(R) or len(phases) != T:
        return None
    out = []
    for p in range(1, T + 1):
        if rows[p] is None:
            return None
        accs = [[rows[p][c] for c in classes] for classes in phases]
        if any(a is None for phase in accs for a in phase):
            return None
        out.append([sum(phase) / len(phase) for phase in accs])
    return out
