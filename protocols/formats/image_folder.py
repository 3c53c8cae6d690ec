"""`image_folder`: one sub-folder of images per class (`<root>/<class>/*.jpg`): ImageNet train, EuroSAT (`2750/`),
most MTIL sets.

Spec keys: `root` (or `<split>_root` per split), `class_ids` / `class_ids_file` (a subset of folder
names, in order; default every folder, sorted), `limit_per_class` (the first N files of each class in
name order), and with `download: true` plus `torchvision: <class>`, the torchvision class that fetches it.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

import torch

from clipbench.streams import FileReader, ImageSources, LabelledImages

from . import (IMAGE_SUFFIXES, Format, Labelled, Spec, class_ids, download_with, missing, register_format, require_dir,
               resolve)

HOW = "one sub-folder of images per class"


def read(root: Path, classes: Optional[Sequence[str]] = None, limit_per_class: Optional[int] = None) -> Labelled:
    """`<root>/<class>/<image>`; classes sorted by folder name unless `classes` (a subset, in order) is given."""
    require_dir(root, "image folder", "point the protocol's `root` at a folder with one sub-folder per class")
    names: List[str] = list(classes) if classes else sorted(p.name for p in root.iterdir() if p.is_dir())
    files, labels = [], []
    for label, name in enumerate(names):
        folder = root / name
        if not folder.is_dir():
            raise missing(f"class folder '{name}'", folder, "check the class list against the dataset's folders")
        found = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit_per_class]
        files += found
        labels += [label] * len(found)
    return LabelledImages(ImageSources(FileReader(), files), torch.tensor(labels, dtype=torch.long)), names


def labelled(spec: Spec, split: str, data_root: Optional[str]) -> Labelled:
    return read(resolve(data_root, spec.get(f"{split}_root", spec["root"])), class_ids(spec, data_root),
                spec.get("limit_per_class"))


def fetch(spec: Spec, data_root: Optional[str]) -> None:
    """torchvision's own download for sets it knows (EuroSAT: `<data_root>/eurosat/2750`)."""
    folder = resolve(data_root, spec["root"])
    if spec.get("torchvision") and not folder.is_dir():
        import torchvision.datasets as tvd

        cls = getattr(tvd, spec["torchvision"])
        download_with(lambda: cls(root=str(folder.parent.parent), download=True), folder)


register_format(Format("image_folder", HOW, ("root", "class_ids_file"), labelled=labelled, fetch=fetch,
                       keys=("class_ids", "limit_per_class", "torchvision"), split_keys=("_root",),
                       folder_suffixes=frozenset(IMAGE_SUFFIXES)))
