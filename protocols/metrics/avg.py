"""`avg`: average incremental accuracy (Rebuffi et al., 2017), the class-incremental literature's headline."""

from __future__ import annotations

from typing import Optional

from clipbench.protocols.metrics import Raw, metric
from clipbench.protocols.metrics._common import matrix, mean


@metric("avg", headline=True, one_session_family="last")
def average_incremental(raw: Raw) -> Optional[float]:
    """Average incremental accuracy: (1/T) * sum_{i=1..T} acc_i, where acc_i is the accuracy on the
    union of the test sets of experiences 0..i-1 after step i, i.e. sum_{j<i} n_j R[i][j] / sum_{j<i} n_j
    (n_j: test-set size of experience j). With one experience it equals `last`."""
    R, n = matrix(raw), raw.get("test_sizes")
    if not n:
        return None
    return mean([sum(n[j] * R[i][j] for j in range(i)) / sum(n[:i]) for i in range(1, len(R))])
