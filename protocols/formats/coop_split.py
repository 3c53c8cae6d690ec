"""`coop_split`: CoOp's fixed splits, one JSON file beside a dataset's image folder (`split_zhou_<Name>.json`).

The file (KaiyangZhou/CoOp at ff61507, `DATASETS.md` and `datasets/oxford_pets.py`, `OxfordPets.read_split`)
maps `train`, `val` and `test` each to a list of `[<image path relative to the image folder>, <label>,
<class name>]`. RAIL's X-TAIL reads the same files the same way (linghan1997/Regression-based-Analytic-
Incremental-Learning at eaac644, `scenario_datasets/utils.py`, `read_split`; the folders per dataset in
`scenario_datasets/<dataset>.py`), and so do the few-shot MTIL variants built on CoOp's data.

Spec keys: `split_file` (the JSON), `images` (the folder its paths are relative to: `101_ObjectCategories`
for Caltech101, `images` for DTD, `2750` for EuroSAT, the dataset folder itself for StanfordCars), and
`<split>_split` (which of the file's lists is our split; by default the one of the same name). Class
names are the file's, one per label (labels 0..C-1, one name each, over all three lists); a spec's
`names:` replaces them (the builder's rule for every format).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional

import torch

from clipbench.errors import ClipbenchError
from clipbench.streams import FileReader, ImageSources, LabelledImages

from . import Format, Labelled, Spec, register_format, require_dir, require_file, resolve

HOW = "the dataset's images and CoOp's split_zhou_<Name>.json beside them (CoOp's DATASETS.md)"
LISTS = ("train", "val", "test")


def _load(split_file: Path) -> Dict[str, list]:
    require_file(split_file, "CoOp split file", "download split_zhou_<Name>.json as CoOp's DATASETS.md says")
    try:
        doc = json.loads(split_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ClipbenchError(f"{split_file}: not a JSON split file ({err}); expected {{train|val|test: [[path, label, name], ...]}}") from None
    if not isinstance(doc, dict) or any(not isinstance(doc.get(k, []), list) for k in LISTS):
        raise ClipbenchError(f"{split_file}: expected {{train|val|test: [[path, label, name], ...]}}")
    return doc


def class_names(doc: Dict[str, list], where: Path) -> List[str]:
    """Label -> name over every list of the file; each label 0..C-1 named exactly once."""
    names: Dict[int, str] = {}
    for key in LISTS:
        for entry in doc.get(key, []):
            if not (isinstance(entry, list) and len(entry) == 3):
                raise ClipbenchError(f"{where}: entry {entry!r} of '{key}' is not [path, label, name]")
            label, name = int(entry[1]), str(entry[2])
            if names.setdefault(label, name) != name:
                raise ClipbenchError(f"{where}: label {label} is named both '{names[label]}' and '{name}'")
    if sorted(names) != list(range(len(names))):
        raise ClipbenchError(f"{where}: labels must be 0..C-1; found {sorted(names)[:5]}...")
    return [names[k] for k in range(len(names))]


def read(split_file: Path, images: Path, which: str) -> Labelled:
    """The images and labels of list `which` ('train', 'val' or 'test'), with the file's class names."""
    doc = _load(split_file)
    require_dir(images, "image folder of a CoOp split", "point `images` at the folder the split file's paths start from")
    if which not in LISTS:
        raise ClipbenchError(f"{split_file}: no list '{which}' (one of {', '.join(LISTS)})")
    names = class_names(doc, split_file)
    entries = doc.get(which, [])
    files = [images / str(path) for path, _, _ in entries]
    labels = torch.tensor([int(label) for _, label, _ in entries], dtype=torch.long)
    return LabelledImages(ImageSources(FileReader(), files), labels), names


def labelled(spec: Spec, split: str, data_root: Optional[str]) -> Labelled:
    return read(resolve(data_root, spec["split_file"]), resolve(data_root, spec["images"]),
                str(spec.get(f"{split}_split", split)))


register_format(Format("coop_split", HOW, ("split_file", "images"), labelled=labelled,
                       split_keys=("_split",)))
