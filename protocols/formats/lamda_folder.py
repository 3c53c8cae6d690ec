"""`lamda_folder`: the processed archives of the LAMDA CLIP class-incremental benchmarks (PROOF, C3Box, ENGINE):
one folder per split, each one sub-folder per class, read as torchvision's `ImageFolder` reads them.

    <root>/train/<class>/...      # any depth below the class folder: a UCF-101 archive of frames reads the same
    <root>/test/<class>/...

zhoudw-zdw/PROOF at 0bb2052, `utils/data.py` (`iImageNetR`, `objectnet`, `CUB`, `Food101`, `Aircraft`, `UCF101`,
`StanfordCars`, `SUN`: `datasets.ImageFolder(train_dir)` / `ImageFolder(test_dir)` over `<dataset>/train` and
`<dataset>/test`; LAMDA-CL/C3Box at 1378ab2 writes `[DATA-PATH]/val/` for the test folder: `test_dir: val` then).
The archives are the authors' (Google Drive / OneDrive links in PROOF's README); no file list of them is published
except ObjectNet's (format `objectnet_list`).

What `ImageFolder` does, and so this format (torchvision 0.29, `datasets/folder.py`, `find_classes` and
`make_dataset`): classes are the sub-folders of the split folder, sorted by name; a class's label is its place in
that order (the LAMDA code then looks its name up at that index in `utils/labels.json`, so a protocol gives those
names as `names:`); its images are every file below the class folder, symlinks followed, whose name ends (any
case) in one of .jpg .jpeg .png .ppm .bmp .pgm .tif .tiff .webp, walked folder by folder in sorted order and by
sorted name within a folder. Labels are assigned per split folder, as the two `ImageFolder`s do.

Spec keys: `root`, `<split>_dir` (the split's folder under `root`; `train` and `test` by default).
With `names:` in the spec, the class-folder count must equal the number of names.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

from clipbench.errors import ClipbenchError
from clipbench.streams import FileReader, ImageSources, LabelledImages

from . import Format, Labelled, Spec, register_format, require_dir, resolve

HOW = ("unpack the authors' processed archive there (<dataset>/train/<class>/..., <dataset>/test/<class>/...): "
       "Google Drive / OneDrive links in zhoudw-zdw/PROOF's README, section Dataset")
EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision IMG_EXTENSIONS
DEFAULT_DIRS = {"train": "train", "test": "test"}


def read(folder: Path) -> Labelled:
    """(images, labels) of one split folder and its class names (the sorted sub-folder names)."""
    require_dir(folder, "split folder of a LAMDA archive", HOW)
    classes = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())
    if not classes:
        raise ClipbenchError(f"{folder}: no class folders; {HOW}")
    files: List[Path] = []
    labels: List[int] = []
    for label, name in enumerate(classes):
        for dirpath, _, fnames in sorted(os.walk(folder / name, followlinks=True)):
            for fname in sorted(fnames):
                if fname.lower().endswith(EXTENSIONS):
                    files.append(Path(dirpath) / fname)
                    labels.append(label)
    return LabelledImages(ImageSources(FileReader(), files), torch.tensor(labels, dtype=torch.long)), classes


def split_folder(spec: Spec, split: str, data_root: Optional[str]) -> Path:
    return resolve(data_root, spec["root"]) / str(spec.get(f"{split}_dir", DEFAULT_DIRS.get(split, split)))


def labelled(spec: Spec, split: str, data_root: Optional[str]) -> Labelled:
    folder = split_folder(spec, split, data_root)
    data, classes = read(folder)
    if "names" in spec and len(spec["names"]) != len(classes):
        raise ClipbenchError(f"{folder}: {len(classes)} class folders, but the protocol names {len(spec['names'])} "
                             "classes: is this the archive the protocol is for?")
    return data, classes


def read_paths(spec: Spec, data_root: Optional[str]) -> List[Path]:
    return [split_folder(spec, split, data_root) for split in DEFAULT_DIRS]


def write_small(spec: Spec, data_root: str, per_class: int = 2, seed: int = 0, n_classes: Optional[int] = None) -> Spec:
    """A tiny archive in this layout where `spec` reads it: one folder per class (`names:` count, else
    `n_classes`), `per_class` images per class and split, the first class nested one folder deeper (frames of a
    video, as UCF-101's frames may be). Returns the spec overrides the data needs (none)."""
    from ._tiny import image, n_classes_of

    rng = np.random.default_rng(seed)
    for split in DEFAULT_DIRS:
        folder = split_folder(spec, split, data_root)
        for c in range(n_classes_of(spec, n_classes)):
            sub = folder / f"class_{c:03d}" / ("v_01" if c == 0 else "")
            for k in range(per_class):
                image(rng, sub / f"{split}_{k}.jpg")
    return {}


register_format(Format("lamda_folder", HOW, ("root",), labelled=labelled, read_paths=read_paths, split_keys=("_dir",)))
