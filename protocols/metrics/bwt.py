"""`bwt`: backward transfer as Lopez-Paz & Ranzato (2017, GEM) define it."""

from __future__ import annotations

from typing import Optional

from clipbench.protocols.metrics import Raw, metric
from clipbench.protocols.metrics._common import matrix, mean


@metric("bwt", headline=True)
def backward_transfer(raw: Raw) -> Optional[float]:
    """Backward transfer (Lopez-Paz & Ranzato, 2017): (1/(T-1)) * sum_{j<T-1} (R[T][j] - R[j+1][j]),
    on clipbench's accuracy matrix (class-incremental rows score the classes seen so far). Absent with
    one experience. The founding paper's own BWT is `ut_bwt`."""
    R = matrix(raw)
    T = len(R) - 1
    return mean([R[T][j] - R[j + 1][j] for j in range(T - 1)])
