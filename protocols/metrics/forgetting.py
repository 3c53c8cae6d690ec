"""`forgetting`: average forgetting (Chaudhry et al., 2018)."""

from __future__ import annotations

from typing import Optional

from clipbench.protocols.metrics import Raw, metric
from clipbench.protocols.metrics._common import matrix, mean


@metric("forgetting", direction="lower")
def forgetting(raw: Raw) -> Optional[float]:
    """Average forgetting (Chaudhry et al., 2018): (1/(T-1)) * sum_{j<T-1} (max_{j+1<=i<T} R[i][j] - R[T][j])."""
    R = matrix(raw)
    T = len(R) - 1
    return mean([max(R[i][j] for i in range(j + 1, T)) - R[T][j] for j in range(T - 1)])
