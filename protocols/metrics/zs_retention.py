"""`zs_retention`: the share of zero-shot accuracy kept on the held-out sets."""

from __future__ import annotations

from typing import Dict

from clipbench.protocols.metrics import Raw, metric
from clipbench.protocols.metrics._common import per_set


@metric("zs_retention", headline=True, family="zero_shot")
def zs_retention(raw: Raw) -> Dict[str, float]:
    """Zero-shot retention per held-out set: acc_after_last / acc_before; `zs_retention` = mean over sets.
    A set whose before-accuracy is 0 is left out (the ratio is undefined)."""
    sets = raw.get("zeroshot") or {}
    return per_set({k: v[-1] / v[0] for k, v in sets.items() if v[0] > 0}, "zs_retention")
