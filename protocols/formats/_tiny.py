"""Helpers of the tiny-data writers of the class-incremental CLIP formats (see `_small`): a noise image, a class count."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
from PIL import Image

from clipbench.errors import ClipbenchError

Spec = Dict[str, Any]


def image(rng: np.random.Generator, path: Path, size: int = 40) -> None:
    """A random-noise image (JPEG or PNG by suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)).save(path)


def n_classes_of(spec: Spec, n_classes: Optional[int] = None) -> int:
    """How many classes tiny data for `spec` holds: as many as it names, else `n_classes`."""
    if "names" in spec:
        return len(spec["names"])
    if "names_by_wnid" in spec:
        return len(spec["names_by_wnid"])
    if n_classes is None:
        raise ClipbenchError("tiny data: the spec names no classes; pass n_classes")
    return int(n_classes)
