"""`flowers102`: Oxford 102 Flowers in torchvision's layout, `<root>/flowers-102/` with `jpg/image_%05d.jpg`,
`imagelabels.mat` (labels 1-102) and `setid.mat` (`trnid`, `valid`, `tstid`), read as
`torchvision.datasets.Flowers102` reads it: the same images, labels (label - 1), splits and class names
(its `classes`, underscores as spaces, as the `torchvision` format names them).

Unlike torchvision's class, it does not compare the two .mat files with their published md5 sums (the data
fingerprint covers every file), so files written in the same layout, the smoke test's, are read too.
Spec keys: `root`, `<split>_split` (train, val or test; default the split's own name).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import torch

from clipbench.streams import FileReader, ImageSources, LabelledImages

from . import Format, Labelled, Spec, register_format, require_dir, require_file, resolve

HOW = ("Oxford 102 Flowers in torchvision's layout (102flowers.tgz unpacked to flowers-102/jpg, imagelabels.mat, "
       "setid.mat): torchvision.datasets.Flowers102(root, download=True) writes it")
SPLITS = {"train": "trnid", "val": "valid", "test": "tstid"}


def read(root: Path, split: str) -> Labelled:
    from scipy.io import loadmat
    from torchvision.datasets import Flowers102

    base = require_dir(root / "flowers-102", "Oxford 102 Flowers", HOW)
    ids = loadmat(require_file(base / "setid.mat", "Flowers102 split file", HOW), squeeze_me=True)[SPLITS[split]]
    labels = loadmat(require_file(base / "imagelabels.mat", "Flowers102 label file", HOW), squeeze_me=True)["labels"]
    by_id = dict(enumerate((torch.as_tensor(labels).reshape(-1) - 1).tolist(), 1))
    ids = torch.as_tensor(ids).reshape(-1).tolist()
    files = [base / "jpg" / f"image_{int(i):05d}.jpg" for i in ids]
    names = [str(c).replace("_", " ") for c in Flowers102.classes]
    return LabelledImages(ImageSources(FileReader(), files), torch.tensor([by_id[int(i)] for i in ids])), names


def labelled(spec: Spec, split: str, data_root: Optional[str]) -> Labelled:
    return read(resolve(data_root, spec["root"]), spec.get(f"{split}_split", split))


def read_paths(spec: Spec, data_root: Optional[str]) -> List[Path]:
    return [resolve(data_root, spec["root"]) / "flowers-102"]


register_format(Format("flowers102", HOW, ("root",), labelled=labelled, read_paths=read_paths, split_keys=("_split",)))
