"""`last_all`: accuracy over every test image of the classes seen, after the final step: the class-incremental
"Last" of PyCIL, C3Box and continuum."""

from __future__ import annotations

from typing import Optional

from clipbench.protocols.metrics import Raw, metric
from clipbench.protocols.metrics._common import matrix


@metric("last_all", headline=False)
def last_over_all_images(raw: Raw) -> Optional[float]:
    """After the last step T: sum_j n_j R[T][j] / sum_j n_j (n_j: test-set size of experience j), the top-1 over
    the union of all test sets, every image counted once: the last value of the "CNN top1 curve" that
    LAMDA-CL/C3Box's trainer.py logs (`_train`; C3Box at 1378ab2, zhoudw-zdw/PROOF at 0bb2052), whose mean over
    steps is `avg`. `last` instead averages the experiences' accuracies, each experience weighing the same: the two
    agree when every experience has as many test images (CIFAR-100) and differ otherwise (ImageNet-R, CUB,
    ObjectNet: classes of unequal size). Departure: C3Box rounds each step's value to 2 decimals before `avg`
    averages them; clipbench does not (a difference below 0.005 points)."""
    R, n = matrix(raw), raw.get("test_sizes")
    if not n or len(R) < 2 or not sum(n):
        return None
    return sum(n[j] * R[-1][j] for j in range(len(n))) / sum(n)
