"""`zs_drop`: zero-shot accuracy lost on the held-out sets, in points."""

from __future__ import annotations

from typing import Dict

from clipbench.protocols.metrics import Raw, metric
from clipbench.protocols.metrics._common import per_set


@metric("zs_drop", direction="lower", family="zero_shot")
def zs_drop(raw: Raw) -> Dict[str, float]:
    """Zero-shot accuracy lost per held-out set, in points: 100 * (acc_before - acc_after_last);
    `zs_drop` = mean over sets."""
    sets = raw.get("zeroshot") or {}
    return per_set({k: 100.0 * (v[0] - v[-1]) for k, v in sets.items()}, "zs_drop")
