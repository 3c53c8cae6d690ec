"""`ut_bwt`: the founding paper's BWT, as its code computes it (divided by T, every class scored)."""

from __future__ import annotations

from typing import Optional

from clipbench.protocols.metrics import Raw, metric
from clipbench.protocols.metrics._common import matrix, phase_matrix


@metric("ut_bwt")
def founding_paper_bwt(raw: Raw) -> Optional[float]:
    """The founding paper's BWT (Ding et al., 2022; logged as `ut_bwt`), as yxding95/CL-CLIP (commit 877a69f)
    computes it in `methods/base.py`, `Base.get_acc_bwt`, after the last phase: with PM the phase matrix
    (see `ut_acc`; every class of the stream scored in every phase),
    BWT = (1/T) * sum_{i<T-1} (PM[T-1][i] - PM[i][i]): the T-entry array holds 0 for the last phase,
    so the sum is divided by T, not T-1 as Lopez-Paz's `bwt`. Absent with one session (the reference
    computes it only in multi-session training) and for records without `raw["class_acc_all"]`.
    """
    T = len(matrix(raw)) - 1
    pm = phase_matrix(raw) if T > 1 else None
    if pm is None:
        return None
    return sum(pm[T - 1][i] - pm[i][i] for i in range(T - 1)) / T
