"""`last`: mean accuracy over every experience's test set after the last experience."""

from __future__ import annotations

from typing import Optional

from clipbench.protocols.metrics import Raw, metric
from clipbench.protocols.metrics._common import matrix, mean


@metric("last", headline=True)
def last(raw: Raw) -> Optional[float]:
    """Mean of the final row: (1/T) * sum_j R[T][j]."""
    return mean(matrix(raw)[-1])
