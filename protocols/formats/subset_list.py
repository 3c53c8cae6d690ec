"""`subset_list`: a class subset of a dataset given by list files of `<path> <label>` lines, as continuum's
`ImageNet100(data_subset=...)` reads them: ImageNet-100 in RAPF and MG-CLIP.

linlany/RAPF at 81d41df, `continual_clip/datasets.py` (`get_dataset`, dataset `imagenet100`): the training list is
`class_orders/train_100.txt` (git blob e2133270...) and the test list `class_orders/val_100.txt` (git blob
af17445f..., 5,000 lines, 50 images of each of 100 classes: `val/<wnid>/ILSVRC2012_val_<n>.JPEG <label>`); the
same two files are in linlany/MindtheGap at f40bfce. continuum's `ImageNet100._parse_subset` (Continvvm/continuum)
takes each line's path relative to the ImageNet folder (train/ and val/ with one folder per wnid) and its label
as written. Class names come from elsewhere (`names:`; for ImageNet-100, `dataset_reqs/imagenet100_classes.txt`,
one per label).

Spec keys: `root` (the folder the listed paths start from), `<split>_list` (the list of each split),
`<split>_blob` (its git blob id, checked before reading; null skips).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

from clipbench.errors import ClipbenchError
from clipbench.streams import FileReader, ImageSources, LabelledImages

from . import Format, Labelled, Spec, register_format, require_dir, require_file, resolve
from ._pinned import check_blob

HOW = ("ImageNet (ILSVRC 2012) with train/<wnid>/ and val/<wnid>/ folders, and the subset lists train_100.txt "
       "and val_100.txt from https://github.com/linlany/RAPF (class_orders/, commit 81d41df)")


def read(root: Path, list_path: Path, blob: Optional[str] = None) -> Labelled:
    """The images a list names (relative to `root`) with its labels; class names are `label <k>` (use `names:`)."""
    require_dir(root, "image folder of a subset list", HOW)
    require_file(list_path, "subset list", HOW)
    check_blob(list_path, blob, "the protocol's pinned subset list")
    files: List[Path] = []
    labels: List[int] = []
    for n, line in enumerate(list_path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise ClipbenchError(f"{list_path}:{n}: '{line.strip()}' is not '<path> <label>'")
        files.append(root / parts[0])
        labels.append(int(parts[1]))
    if not labels:
        raise ClipbenchError(f"{list_path}: no '<path> <label>' lines")
    if min(labels) < 0:
        raise ClipbenchError(f"{list_path}: labels must be 0 or more")
    names = [f"label {k}" for k in range(max(labels) + 1)]
    return LabelledImages(ImageSources(FileReader(), files), torch.tensor(labels, dtype=torch.long)), names


def labelled(spec: Spec, split: str, data_root: Optional[str]) -> Labelled:
    key = f"{split}_list"
    if key not in spec:
        raise ClipbenchError(f"subset_list: the spec has no `{key}` (the list of split '{split}')")
    return read(resolve(data_root, spec["root"]), resolve(data_root, spec[key]), spec.get(f"{split}_blob"))


def read_paths(spec: Spec, data_root: Optional[str]) -> List[Path]:
    """The lists and the folders holding the images they name (their first two path parts: split and class)."""
    root = resolve(data_root, spec["root"])
    lists = [resolve(data_root, spec[k]) for k in spec if k.endswith("_list")]
    folders = sorted({"/".join(line.split()[0].split("/")[:2]) for path in lists if path.is_file()
                      for line in path.read_text().splitlines() if line.strip()})
    return lists + [root / f for f in folders]


def write_small(spec: Spec, data_root: str, per_class: int = 2, seed: int = 0, n_classes: Optional[int] = None) -> Spec:
    """Tiny data in continuum's subset layout: `<root>/{train,val}/<wnid>/<file>.JPEG` and both lists (label k
    for the k-th made-up wnid); the blob pins are switched off."""
    from ._tiny import image, n_classes_of

    rng = np.random.default_rng(seed)
    root = resolve(data_root, spec["root"])
    overrides = {}
    for split, folder in (("train", "train"), ("test", "val")):
        lines = []
        for c in range(n_classes_of(spec, n_classes)):
            for k in range(per_class):
                rel = f"{folder}/n{c:08d}/{folder}_{c}_{k}.JPEG"
                image(rng, root / rel)
                lines.append(f"{rel} {c}")
        path = resolve(data_root, spec.get(f"{split}_list", f"{folder}_100.txt"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
        overrides[f"{split}_blob"] = None
    return overrides


register_format(Format("subset_list", HOW, ("root",), labelled=labelled, read_paths=read_paths,
                       split_keys=("_list", "_blob")))
