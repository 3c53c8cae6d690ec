"""Tiny data in the real on-disk layout of the class-incremental CLIP formats (`lamda_folder`, `objectnet_list`,
`imagenet_r_split`, `subset_list`), for smoke runs of the suites that read them (`clip_cil`, `clip_cil_rapf`).

`write_small(spec, data_root)` writes, where the dataset spec `spec` reads them, a few random-noise images per class
of every class the spec names, and any list files, and returns the spec overrides the data needs (the pinned git
blob ids of the authors' lists cannot match a tiny list: they are switched off).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Optional

from clipbench.errors import ClipbenchError

Spec = Dict[str, Any]


def writers() -> Dict[str, Callable[..., Spec]]:
    """Format name -> its `write_small(spec, data_root, per_class=2, seed=0, n_classes=None) -> overrides`."""
    from . import imagenet_r_split, lamda_folder, objectnet_list, subset_list

    return {"lamda_folder": lamda_folder.write_small, "objectnet_list": objectnet_list.write_small,
            "imagenet_r_split": imagenet_r_split.write_small, "subset_list": subset_list.write_small}


def write_small(spec: Spec, data_root: str | Path, per_class: int = 2, seed: int = 0,
                n_classes: Optional[int] = None) -> Spec:
    """Tiny data for `spec` under `data_root` through its format's writer; the spec overrides it needs."""
    table = writers()
    if spec.get("adapter") not in table:
        raise ClipbenchError(f"no tiny-data writer for format '{spec.get('adapter')}' (have {', '.join(table)})")
    return table[spec["adapter"]](spec, str(data_root), per_class=per_class, seed=seed, n_classes=n_classes)
