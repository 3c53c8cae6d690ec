"""`mtil_last`: ZSCL's Last on MTIL (the same formula as `last`)."""

from __future__ import annotations

from typing import Optional

from clipbench.protocols.metrics import Raw, metric
from clipbench.protocols.metrics._common import matrix, mean


@metric("mtil_last", family="last")
def mtil_last(raw: Raw) -> Optional[float]:
    """ZSCL's Last (Thunderbeee/ZSCL, `mtil/results.ipynb`, `statistics`): the mean over tasks of the
    final row, (1/T) * sum_j R[T][j]."""
    return mean(matrix(raw)[-1])
