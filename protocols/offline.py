"""Loaders for the real data that ships in packages (see docs/suites.md, "The offline `mini` suite").

Each loader returns pre-decoded uint8 images at a requested size and fails with one error naming
the package that provides the data when it is missing. Decoded sets are memoised per process.

| data | package | default location |
|---|---|---|
| Fashion-MNIST | Debian `dataset-fashion-mnist` | /usr/share/datasets/fashion-mnist |
| Tux Paint stamps + descriptions | Debian `tuxpaint-stamps-default` | /usr/share/tuxpaint/stamps |
| emoji images + names | npm `emoji-datasource-google` 16.0.0 | <assets>/emoji-datasource-google |

`<assets>` is `$CLIPBENCH_ASSETS`, else the `.assets` folder of the checkout (`make setup` fills it).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch

from clipbench.mini_model import to_square_rgb
from clipbench.errors import ClipbenchError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
TUXPAINT_DIR = Path("/usr/share/tuxpaint/stamps")
FASHION_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]


def assets_dir() -> Path:
    env = os.environ.get("CLIPBENCH_ASSETS")
    return Path(env) if env else Path(__file__).resolve().parent.parent / ".assets"


def missing(what: str, path: Path, how: str) -> ClipbenchError:
    return ClipbenchError(f"{what} not found at {path}: {how}")


# ---------------------------------------------------------------- decoding


def decode_files(paths: List[Path], size: int) -> torch.Tensor:
    from PIL import Image

    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)
    for i, p in enumerate(paths):
        with Image.open(p) as img:
            out[i] = to_square_rgb(img, size)
    return torch.from_numpy(out)


def gray_to_rgb(images: np.ndarray, invert: bool = False) -> torch.Tensor:
    """uint8 [N, H, W] -> uint8 [N, 3, H, W] (resized later, in batches, for the model)."""
    x = 255 - images if invert else images
    return torch.from_numpy(np.ascontiguousarray(np.repeat(x[:, None], 3, axis=1)))


def stable_fraction(key: str) -> float:
    """A number in [0, 1) fixed by `key`: splits that never move when files are added elsewhere."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


# ---------------------------------------------------------------- Fashion-MNIST (idx format)


def read_idx(path: Path) -> np.ndarray:
    """An idx file (gzip): magic (0, 0, dtype, ndim), big-endian dims, then the data."""
    with gzip.open(path, "rb") as fh:
        zero, dtype, ndim = struct.unpack(">HBB", fh.read(4))
        if zero != 0 or dtype != 0x08:
            raise ClipbenchError(f"{path} is not a uint8 idx file")
        dims = struct.unpack(">" + "I" * ndim, fh.read(4 * ndim))
        return np.frombuffer(fh.read(), dtype=np.uint8).reshape(dims)


@lru_cache(maxsize=4)
def fashion_mnist(split: str, root: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels [N]) of split 'train' or 't10k'."""
    folder = Path(root) if root else FASHION_DIR
    images, labels = folder / f"{split}-images-idx3-ubyte.gz", folder / f"{split}-labels-idx1-ubyte.gz"
    if not images.is_file() or not labels.is_file():
        raise missing("Fashion-MNIST", folder, "install the Debian package dataset-fashion-mnist "
                      "(apt-get install dataset-fashion-mnist; make setup does this)")
    return read_idx(images), read_idx(labels).astype(np.int64)


# ---------------------------------------------------------------- emoji (npm emoji-datasource-google)


@dataclass(frozen=True)
class Emoji:
    name: str
    subcategory: str
    path: Path


@lru_cache(maxsize=2)
def emoji_list(root: Optional[str] = None) -> Tuple[Emoji, ...]:
    """Every emoji that has a Google image: lowercased name, subcategory, image path."""
    folder = Path(root) if root else assets_dir() / "emoji-datasource-google"
    meta = folder / "emoji.json"
    if not meta.is_file():
        raise missing("emoji images", folder, "run `make setup` (it unpacks the npm package "
                      "emoji-datasource-google@16.0.0 there), or set CLIPBENCH_ASSETS to a folder holding it")
    items = []
    for e in json.loads(meta.read_text()):
        path = folder / "img" / "google" / "64" / e["image"]
        if e.get("has_img_google") and path.is_file() and e.get("name"):
            items.append(Emoji(e["name"].lower(), e["subcategory"], path))
    return tuple(sorted(items, key=lambda e: e.path.name))


# ---------------------------------------------------------------- Tux Paint stamps


@dataclass(frozen=True)
class Stamp:
    caption: str
    category: str
    path: Path
    key: str  # path relative to the stamps folder: stable wherever the folder lives


@lru_cache(maxsize=2)
def tuxpaint_stamps(root: Optional[str] = None) -> Tuple[Stamp, ...]:
    """Every PNG stamp with an English description (first line of the .txt beside it)."""
    folder = Path(root) if root else TUXPAINT_DIR
    if not folder.is_dir():
        raise missing("Tux Paint stamps", folder, "install the Debian package tuxpaint-stamps-default "
                      "(apt-get install tuxpaint-stamps-default; make setup does this)")
    stamps = []
    for png in sorted(folder.rglob("*.png")):
        txt = png.with_suffix(".txt")
        if not txt.is_file():
            continue
        lines = txt.read_text(errors="replace").strip().splitlines()
        caption = lines[0].strip() if lines else ""
        if caption and "=" not in caption[:12]:
            rel = png.relative_to(folder)
            stamps.append(Stamp(caption, rel.parts[0], png, str(rel)))
    return tuple(stamps)
