"""`csv` and `jsonl`: lists you write. A CSV with the header `image,label` (or `image,caption`), or JSON
lines `{"image": ..., "label"|"caption": ...}`.

Spec keys: `list` (or `<split>_list` per split). Image paths are relative to the list's folder.
Labels are class names; classes are sorted. Several rows with one image and different captions give
that image several captions.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

import torch

from clipbench.errors import ClipbenchError
from clipbench.streams import CaptionedImages, FileReader, ImageSources, LabelledImages

from . import Format, Labelled, Spec, missing, register_format, resolve

HOW = "a CSV/JSONL list you write (image,label or image,caption)"


def rows(path: Path) -> Iterable[Dict[str, Any]]:
    if path.suffix == ".jsonl":
        with open(path) as fh:
            for n, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as err:
                        raise ClipbenchError(f"{path}:{n}: not JSON: {err.msg}") from None
    else:
        with open(path, newline="") as fh:
            yield from csv.DictReader(fh)


def _read_rows(path: Path, kind: str):
    if not path.is_file():
        raise missing(f"{kind} list", path, "write a CSV with columns image,label (or image,caption) or the JSONL equivalent")
    found = list(rows(path))
    if not found or "image" not in found[0] or kind not in found[0]:
        raise ClipbenchError(f"{path}: needs the columns 'image' and '{kind}'")
    return found


def read_labels(path: Path) -> Labelled:
    found = _read_rows(path, "label")
    names = sorted({str(r["label"]) for r in found})
    sources = ImageSources(FileReader(), [path.parent / r["image"] for r in found])
    return LabelledImages(sources, torch.tensor([names.index(str(r["label"])) for r in found])), names


def read_captions(path: Path) -> CaptionedImages:
    found = _read_rows(path, "caption")
    order: Dict[str, int] = {}
    for r in found:
        order.setdefault(r["image"], len(order))
    sources = ImageSources(FileReader(), [path.parent / name for name in order])
    return CaptionedImages(sources, [r["caption"] for r in found], torch.tensor([order[r["image"]] for r in found]))


def _list(spec: Spec, split: Optional[str], data_root: Optional[str]) -> Path:
    key = f"{split}_list" if split and f"{split}_list" in spec else "list"
    return resolve(data_root, spec[key])


def labelled(spec: Spec, split: str, data_root: Optional[str]) -> Labelled:
    return read_labels(_list(spec, split, data_root))


def captioned(spec: Spec, data_root: Optional[str]) -> CaptionedImages:
    return read_captions(_list(spec, None, data_root))


def read_paths(spec: Spec, data_root: Optional[str]) -> List[Path]:
    """Every list the spec names and every image those lists name."""
    lists = [resolve(data_root, spec[k]) for k in spec if k == "list" or k.endswith("_list")]
    images = [path.parent / r["image"] for path in lists if path.is_file() for r in rows(path) if "image" in r]
    return lists + sorted(set(images))


for _name in ("csv", "jsonl"):
    register_format(Format(_name, HOW, ("list",), labelled=labelled, captioned=captioned, read_paths=read_paths,
                           split_keys=("_list",)))
