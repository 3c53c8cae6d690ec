"""`tinyimagenet`: Tiny ImageNet as `tiny-imagenet-200.zip` (cs231n.stanford.edu) unpacks.

    <root>/wnids.txt                          the 200 WordNet ids, one a line: a class's label is its line
    <root>/words.txt                          <wnid>\t<names, comma-separated> for all of WordNet
    <root>/train/<wnid>/images/*.JPEG          500 training images per class
    <root>/val/images/*.JPEG                  10,000 validation images
    <root>/val/val_annotations.txt            <file>\t<wnid>\t<box> per validation image

Labels as continuum's `TinyImageNet200.get_data` gives them (Continvvm/continuum at 43ba009,
`continuum/datasets/imagenet.py`), which MoE-Adapters4CL and Continual-CLIP load: the line of the class's
wnid in `wnids.txt` (not sorted), train images per class folder, the `val` split (the test split's labels
were never released) through `val_annotations.txt`. Our `test` split is that `val`. Departure:
continuum lists a class's training files from `train/<wnid>/<wnid>_boxes.txt`; this lists
`train/<wnid>/images/` (the same 500 files in the download), in name order.

Spec keys: `root`, `names_by_wnid` (a mapping wnid -> class name, e.g. the CLIP names MoE-Adapters4CL
ships in `cil/dataset_reqs/tinyimagenet_classes.txt`; every wnid of `wnids.txt` must be named), else
the first name `words.txt` gives each wnid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import torch

from clipbench.errors import ClipbenchError
from clipbench.streams import FileReader, ImageSources, LabelledImages

from . import IMAGE_SUFFIXES, Format, Labelled, Spec, register_format, require_dir, require_file, resolve

HOW = "unzip tiny-imagenet-200.zip (http://cs231n.stanford.edu/tiny-imagenet-200.zip) there"


def wnids(root: Path) -> List[str]:
    path = require_file(root / "wnids.txt", "Tiny ImageNet class list", HOW)
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def names(root: Path, ids: List[str], names_by_wnid: Optional[Dict[str, str]] = None) -> List[str]:
    """A name per class: `names_by_wnid`'s, else the first of words.txt's synonyms."""
    if names_by_wnid:
        unnamed = [w for w in ids if w not in names_by_wnid]
        if unnamed:
            raise ClipbenchError(f"names_by_wnid names no class for {len(unnamed)} wnid(s) of wnids.txt, e.g. {unnamed[0]}")
        return [str(names_by_wnid[w]) for w in ids]
    words: Dict[str, str] = {}
    for line in require_file(root / "words.txt", "Tiny ImageNet words.txt", HOW).read_text().splitlines():
        if "\t" in line:
            wnid, text = line.split("\t", 1)
            words[wnid.strip()] = text.split(",")[0].strip()
    return [words.get(w, w) for w in ids]


def read(root: Path, split: str, names_by_wnid: Optional[Dict[str, str]] = None) -> Labelled:
    """`split` 'train' (train/<wnid>/images) or 'test' / 'val' (val/ with val_annotations.txt)."""
    require_dir(root, "Tiny ImageNet", HOW)
    ids = wnids(root)
    label = {w: i for i, w in enumerate(ids)}
    files: List[Path] = []
    labels: List[int] = []
    if split == "train":
        for w in ids:
            folder = require_dir(root / "train" / w / "images", f"Tiny ImageNet training images of {w}", HOW)
            found = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            files += found
            labels += [label[w]] * len(found)
    elif split in ("test", "val"):
        annotations = require_file(root / "val" / "val_annotations.txt", "Tiny ImageNet val annotations", HOW)
        for line in annotations.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 2 and parts[1] in label:  # continuum keeps only wnids of wnids.txt
                files.append(root / "val" / "images" / parts[0])
                labels.append(label[parts[1]])
    else:
        raise ClipbenchError(f"Tiny ImageNet has splits train and test (its val), not '{split}'")
    sources = ImageSources(FileReader(), files)
    return LabelledImages(sources, torch.tensor(labels, dtype=torch.long)), names(root, ids, names_by_wnid)


def labelled(spec: Spec, split: str, data_root: Optional[str]) -> Labelled:
    return read(resolve(data_root, spec["root"]), split, spec.get("names_by_wnid"))


register_format(Format("tinyimagenet", HOW, ("root",), labelled=labelled, keys=("names_by_wnid",)))
