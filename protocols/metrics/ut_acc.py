"""`ut_acc`: the founding paper's UT-Acc (accuracy on the updated task), as its code computes it."""

from __future__ import annotations

from typing import Optional

from clipbench.protocols.metrics import Raw, metric
from clipbench.protocols.metrics._common import matrix, mean, phase_matrix


@metric("ut_acc", version=2, one_session_family="last")
def updated_task_accuracy(raw: Raw) -> Optional[float]:
    """The founding paper's UT-Acc (Ding et al., 2022), as yxding95/CL-CLIP (commit 877a69f) computes it.

    One session (T = 1; `methods/ft.py`, OST branch, the `acc` of `methods/base.py` `Base.test`): correct
    test images over all test images, every class scored, i.e. R[1][0].
    Several sessions (`methods/base.py`, `Base.get_acc_bwt` after the last phase): with PM the phase
    matrix (PM[p][i]: the mean over phase i's classes of the per-class accuracy after phase p, every
    class of the stream scored), UT-Acc = (1/T) * sum_{i<T} PM[T-1][i]: per class, then per phase,
    then over phases. Needs `raw["class_acc_all"]`; records from before clipbench stored it give no value.
    Version 1 was sample-weighted over the final row of R, which is not the paper's code.
    """
    R = matrix(raw)
    T = len(R) - 1
    if T == 1:
        return R[1][0]
    pm = phase_matrix(raw)
    return None if pm is None else mean(pm[T - 1][:T])
