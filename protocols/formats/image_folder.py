"""`image_folder`: one sub-folder of images per class (`<root>/<class>/*.jpg`): ImageNet train, EuroSAT (`2750/`),
most MTIL sets.

Spec keys: `root` (or `<split>_root` per split), `class_ids` / `class_ids_file` (a subset of folder
names, in order; default every class folder, sorted), `limit_per_class` (the first N files of each class in
name order), and with `download: true` plus `torchvision: <class>`, the torchvision class that fetches it.

A class folder is a sub-folder that holds at least one image directly and whose name does not start with
`.` (`class_folders`): `clipbench new protocol` and runs share this one rule, so an empty folder, a hidden one
(`.git`, `.ipynb_checkpoints`) or a results folder kept inside the image folder is never a class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional, Sequence

import torch

from clipbench.errors import ClipbenchError
from clipbench.streams import FileReader, ImageSources, LabelledImages

from ..values import PositiveInt
from . import (IMAGE_SUFFIXES, Format, Labelled, Spec, class_ids, download_with, register_format, require_dir,
               resolve)

HOW = "one sub-folder of images per class"


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def images_in(folder: Path) -> List[Path]:
    """The images directly inside `folder`, in name order (hidden files, such as macOS `._x.png`, left out)."""
    return sorted(p for p in folder.iterdir() if is_image(p))


def class_folders(root: Path) -> List[str]:
    """The class folders of an ImageFolder, sorted by name: sub-folders not hidden (a name starting with `.`)
    that hold at least one image directly."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                  and any(is_image(f) for f in p.iterdir()))


def read(root: Path, classes: Optional[Sequence[str]] = None, limit_per_class: Optional[int] = None) -> Labelled:
    """`<root>/<class>/<image>`; classes sorted by folder name unless `classes` (a subset, in order) is given."""
    require_dir(root, "image folder", "point the protocol's `root` at a folder with one sub-folder per class")
    names: List[str] = list(classes) if classes else class_folders(root)
    files, labels = [], []
    for label, name in enumerate(names):
        folder = root / name
        if not folder.is_dir():
            raise ClipbenchError(f"class folder '{name}' not found at {folder}: check the class list (class_ids) "
                                 "against the dataset's folders")
        found = images_in(folder)[:limit_per_class]
        files += found
        labels += [label] * len(found)
    return LabelledImages(ImageSources(FileReader(), files), torch.tensor(labels, dtype=torch.long)), names


def labelled(spec: Spec, split: str, data_root: Optional[str]) -> Labelled:
    return read(resolve(data_root, spec.get(f"{split}_root", spec["root"])), class_ids(spec, data_root),
                spec.get("limit_per_class"))


def read_paths(spec: Spec, data_root: Optional[str]) -> List[Path]:
    """What the data fingerprint covers: the class folders of each root (not other folders kept beside them,
    such as a results folder) and the class-id list."""
    out: List[Path] = []
    for key in [k for k in spec if k == "root" or k.endswith("_root")]:
        root = resolve(data_root, spec[key])
        try:
            names = class_ids(spec, data_root) or (class_folders(root) if root.is_dir() else [])
        except ClipbenchError:
            names = []
        out += [root / name for name in names] or [root]
    if "class_ids_file" in spec:
        out.append(resolve(data_root, spec["class_ids_file"]))
    return out


def fetch(spec: Spec, data_root: Optional[str]) -> None:
    """torchvision's own download for sets it knows (EuroSAT: `<data_root>/eurosat/2750`)."""
    folder = resolve(data_root, spec["root"])
    if spec.get("torchvision") and not folder.is_dir():
        import torchvision.datasets as tvd

        cls = getattr(tvd, spec["torchvision"])
        download_with(lambda: cls(root=str(folder.parent.parent), download=True), folder)


register_format(Format("image_folder", HOW, ("root", "class_ids_file"), labelled=labelled, fetch=fetch, read_paths=read_paths,
                       keys=("class_ids", "limit_per_class", "torchvision"), split_keys=("_root",),
                       types={"class_ids": List[Any], "limit_per_class": PositiveInt, "torchvision": str},
                       folder_suffixes=frozenset(IMAGE_SUFFIXES)))
