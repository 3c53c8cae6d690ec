"""`zs_acc`: zero-shot accuracy on the held-out sets after the last experience."""

from __future__ import annotations

from typing import Dict

from clipbench.protocols.metrics import Raw, metric
from clipbench.protocols.metrics._common import per_set


@metric("zs_acc", family="zero_shot")
def zs_acc(raw: Raw) -> Dict[str, float]:
    """Zero-shot accuracy per held-out set after the last experience; `zs_acc` = mean over sets."""
    sets = raw.get("zeroshot") or {}
    return per_set({k: v[-1] for k, v in sets.items()}, "zs_acc")
