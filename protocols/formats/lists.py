"""`csv` and `jsonl`: lists you write. A CSV with the header `image,label` (or `image,caption`), or JSON
lines `{"image": ..., "label"|"caption": ...}`.

Spec keys: `list` (or `<split>_list` per split). Image paths are relative to the list's folder.
Labels are class names; classes are sorted. Several rows with one image and different captions give
that image several captions. Lists are UTF-8 (a byte-order mark is allowed); every row needs an image and a
label or caption.
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
    """The rows of a list as mappings; a byte that is not UTF-8 is one line naming the file, line and fix."""
    try:
        with open(path, encoding="utf-8-sig", newline="" if path.suffix != ".jsonl" else None) as fh:
            if path.suffix == ".jsonl":
                for n, line in enumerate(fh, 1):
                    if line.strip():
                        try:
                            yield json.loads(line)
                        except json.JSONDecodeError as err:
                            raise ClipbenchError(f"{path}:{n}: not JSON: {err.msg}") from None
            else:
                yield from csv.DictReader(fh)
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise ClipbenchError(f"{path}:{line}: byte 0x{err.object[err.start]:02x} is not UTF-8: save the file as UTF-8 "
                             "(e.g. iconv -f latin1 -t utf-8)") from None


def read_rows(path: Path, kind: str) -> List[Dict[str, Any]]:
    """The rows of a list of images with a `kind` ("label" or "caption") each, checked: the columns are there
    and no row lacks an image or its label or caption (one line naming the file and row)."""
    if not path.is_file():
        raise missing(f"{kind} list", path, "write a CSV with columns image,label (or image,caption) or the JSONL equivalent")
    found = list(rows(path))
    if not found or "image" not in found[0] or kind not in found[0]:
        raise ClipbenchError(f"{path}: needs the header image,{kind} and at least one row")
    for n, row in enumerate(found, 2 if path.suffix != ".jsonl" else 1):
        for key in ("image", kind):
            if row.get(key) is None or not str(row[key]).strip():
                raise ClipbenchError(f"{path}: row {n} has no {key}; give every row an image and a {kind}, or drop it")
    return found



def read_labels(path: Path) -> Labelled:
    found = read_rows(path, "label")
    names = sorted({str(r["label"]) for r in found})
    sources = ImageSources(FileReader(), [path.parent / r["image"] for r in found])
    return LabelledImages(sources, torch.tensor([names.index(str(r["label"])) for r in found])), names


def read_captions(path: Path) -> CaptionedImages:
    found = read_rows(path, "caption")
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
    return _lists(spec, data_root) + _images(spec, data_root)


def _lists(spec: Spec, data_root: Optional[str]) -> List[Path]:
    return [resolve(data_root, spec[k]) for k in spec if k == "list" or k.endswith("_list")]


def _images(spec: Spec, data_root: Optional[str]) -> List[Path]:
    images = [path.parent / r["image"] for path in _lists(spec, data_root) if path.is_file() for r in rows(path)
              if r.get("image")]
    return sorted(set(images))


def unreadable(spec: Spec, data_root: Optional[str]) -> Optional[str]:
    """For `--dry-run`: the images the spec's lists name that are not there (how many, and the first)."""
    absent = [p for p in _images(spec, data_root) if not p.is_file()]
    if not absent:
        return None
    return (f"{len(absent)} image(s) it lists not found, e.g. {absent[0]} (image paths are relative to the "
            "list's folder)")


for _name in ("csv", "jsonl"):
    register_format(Format(_name, HOW, ("list",), labelled=labelled, captioned=captioned, read_paths=read_paths,
                           split_keys=("_list",), unreadable=unreadable))
