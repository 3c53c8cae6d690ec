"""`mtil_transfer`: ZSCL's Transfer on MTIL."""

from __future__ import annotations

from typing import Optional

from clipbench.protocols.metrics import Raw, metric
from clipbench.protocols.metrics._common import matrix, mean


@metric("mtil_transfer")
def mtil_transfer(raw: Raw) -> Optional[float]:
    """ZSCL's Transfer (Thunderbeee/ZSCL, `mtil/results.ipynb`, `statistics`): for each task j >= 1, the
    mean of R[i][j] over the steps before it is learned (i = 1..j; row 0, the untouched model, is
    excluded as in ZSCL), then the mean over tasks."""
    R = matrix(raw)
    T = len(R) - 1
    return mean([mean([R[i][j] for i in range(1, j + 1)]) for j in range(1, T)])
