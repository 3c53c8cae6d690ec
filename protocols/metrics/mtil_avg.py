"""`mtil_avg`: ZSCL's Avg. on MTIL."""

from __future__ import annotations

from typing import Optional

from clipbench.protocols.metrics import Raw, metric
from clipbench.protocols.metrics._common import matrix, mean


@metric("mtil_avg", one_session_family="last")
def mtil_avg(raw: Raw) -> Optional[float]:
    """ZSCL's Avg. (Thunderbeee/ZSCL, `mtil/results.ipynb`, `statistics`): the mean of R[i][j] over every
    step i = 1..T and every task j."""
    R = matrix(raw)
    return mean([x for row in R[1:] for x in row])
