"""`a_acc`: the founding paper's A-Acc, the mean of UT-Acc and zero-shot accuracy."""

from __future__ import annotations

from typing import Optional

from clipbench.protocols.metrics import Raw, metric
from clipbench.protocols.metrics._common import final_zero_shot
from clipbench.protocols.metrics.ut_acc import updated_task_accuracy


@metric("a_acc", version=2)
def average_of_ut_and_zs(raw: Raw) -> Optional[float]:
    """The founding paper's A-Acc, as yxding95/CL-CLIP (commit 877a69f) logs it in `methods/ft.py`
    (`a_acc` = (zs_acc + acc) / 2 after the last phase): (UT-Acc + ZS-Acc) / 2, with UT-Acc as `ut_acc`
    and ZS-Acc the zero-shot accuracy on the held-out set after the last experience (`Base.test` with
    `is_zs=True`: correct over all images). Departure: with several held-out sets, ZS-Acc is the mean
    over sets (the reference has one). Absent without held-out sets or without `ut_acc`.
    Version 1 used the sample-weighted UT-Acc."""
    ut, zs = updated_task_accuracy(raw), final_zero_shot(raw)
    return None if ut is None or zs is None else (ut + zs) / 2
