"""Retrieval recall@K both ways after the last experience (`i2t_r1` ...) and its drop (`i2t_r1_drop` ...).

One definition registers twelve ids: for each of i2t/t2i and K in 1, 5, 10, the recall and its
`_drop` twin, one family (they rank alike: row 0 is shared by every method of a protocol).
"""

from __future__ import annotations

from typing import Dict

from clipbench.protocols.metrics import Raw, metric
from clipbench.protocols.metrics._common import per_set

HEADLINE = ("i2t_r1", "t2i_r1")


def _register(key: str) -> None:
    def after(raw: Raw) -> Dict[str, float]:
        sets = raw.get("retrieval") or {}
        return per_set({k: v[key][-1] for k, v in sets.items() if key in v}, key)

    def drop(raw: Raw) -> Dict[str, float]:
        sets = raw.get("retrieval") or {}
        return per_set({k: 100.0 * (v[key][0] - v[key][-1]) for k, v in sets.items() if key in v}, f"{key}_drop")

    direction, k = key.split("_r")
    what = "image-to-text" if direction == "i2t" else "text-to-image"
    after.__doc__ = (f"{what} recall@{k} after the last experience (mean over retrieval sets, and per set); an item "
                     "counts as retrieved when a right match is in the top K, ties counting against the model.")
    drop.__doc__ = f"{what} recall@{k} lost, in points: 100 * (before - after last); mean over sets, and per set."
    metric(key, headline=key in HEADLINE, family=key)(after)
    metric(f"{key}_drop", direction="lower", family=key)(drop)


for _key in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"):
    _register(_key)
