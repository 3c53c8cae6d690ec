"""`torchvision`: any torchvision classification dataset by class name (e.g. DTD, Flowers102, FGVCAircraft).

Spec keys: `name` (the torchvision class), `root`, `<split>_split` (torchvision's split name for each
of ours, e.g. trainval), `<split>_limit` (first N), `download` (fetch when missing; otherwise the data
must already be in torchvision's layout under `root`). Images are taken from the dataset as the PIL
images it returns (no transform), then prepared by the model's own transform, as open_clip's
evaluation of a torchvision dataset does.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from clipbench.errors import ClipbenchError
from clipbench.streams import ImageReader, ImageSources, LabelledImages

from ..values import PositiveInt
from . import Format, Labelled, Spec, missing, register_format, resolve

HOW = "torchvision downloads it when the spec says download: true"
# the folder each dataset keeps under its root (what it reads: the data fingerprint covers only that)
FOLDERS = {"FGVCAircraft": "fgvc-aircraft-2013b", "Caltech101": "caltech101", "DTD": "dtd", "Flowers102": "flowers-102",
           "Food101": "food-101", "MNIST": "MNIST", "FashionMNIST": "FashionMNIST", "OxfordIIITPet": "oxford-iiit-pet",
           "StanfordCars": "stanford_cars", "SUN397": "SUN397", "EuroSAT": "eurosat", "CIFAR10": "cifar-10-batches-py",
           "CIFAR100": "cifar-100-python"}


class DatasetReader(ImageReader):
    """Items index a torchvision dataset built without transforms; opening one returns its PIL image."""

    def __init__(self, dataset: Any, name: str):
        self.dataset, self.name = dataset, name

    def open(self, item: Any):
        return self.dataset[int(item)][0]

    def describe(self, item: Any) -> str:
        files = getattr(self.dataset, "_image_files", None) or getattr(self.dataset, "imgs", None)
        if files is not None:
            entry = files[int(item)]
            return str(entry[0] if isinstance(entry, tuple) else entry)
        return f"{self.name}[{item}] under {getattr(self.dataset, 'root', '?')}"

    def signature(self, items: Sequence[Any], digest: Any) -> None:
        """The dataset class, its folder's fingerprint (every file's path, size and time), and the items."""
        from ..fingerprint import path_fingerprint

        root = Path(str(getattr(self.dataset, "root", ".")))
        folder = root / FOLDERS[self.name] if self.name in FOLDERS and (root / FOLDERS[self.name]).exists() else root
        digest.update(f"{self.name}|{folder.absolute()}|{path_fingerprint(folder)}|{getattr(self.dataset, '_split', '')}"
                      f"|{getattr(self.dataset, 'train', '')}\n".encode())
        digest.update(np.asarray(list(items), dtype=np.int64).tobytes())


def _labels(ds: Any) -> List[int]:
    """Each sample's label, from the dataset's own lists when it keeps them (no image is decoded)."""
    for attr in ("targets", "_labels", "labels", "y"):
        values = getattr(ds, attr, None)
        if values is not None and len(values) == len(ds):
            return [int(v) for v in values]
    samples = getattr(ds, "_samples", None) or getattr(ds, "samples", None)
    if samples is not None and len(samples) == len(ds):
        return [int(s[1]) for s in samples]
    return [int(ds[i][1]) for i in range(len(ds))]


def read(name: str, root: Path, split: str, download: bool = False, limit: Optional[int] = None) -> Labelled:
    import torchvision.datasets as tvd

    cls = getattr(tvd, name, None)
    if cls is None:
        raise ClipbenchError(f"torchvision has no dataset '{name}'")
    params = inspect.signature(cls).parameters
    kwargs: Dict[str, Any] = {"root": str(root), "download": download}
    if "split" in params:
        kwargs["split"] = split
    elif "train" in params:
        kwargs["train"] = split == "train"
    try:
        ds = cls(**kwargs)
    except (RuntimeError, FileNotFoundError) as err:
        raise missing(f"torchvision {name}", root, f"{str(err).strip()} (set download: true to fetch it)") from None
    labels = _labels(ds)
    n = len(labels) if limit is None else min(int(limit), len(labels))
    # Caltech101 keeps its folder names as `categories` (it has no `classes`)
    found = getattr(ds, "classes", None) or getattr(ds, "categories", None) or []
    names = [str(c).replace("_", " ") for c in found] or [str(i) for i in range(max(labels) + 1)]
    sources = ImageSources(DatasetReader(ds, name), range(n))
    return LabelledImages(sources, torch.tensor(labels[:n], dtype=torch.long)), names


def labelled(spec: Spec, split: str, data_root: Optional[str]) -> Labelled:
    return read(spec["name"], resolve(data_root, spec["root"]), spec.get(f"{split}_split", split),
                bool(spec.get("download", False)), spec.get(f"{split}_limit"))


def read_paths(spec: Spec, data_root: Optional[str]) -> List[Path]:
    root = resolve(data_root, spec["root"])
    return [root / FOLDERS[spec["name"]]] if spec.get("name") in FOLDERS else [root]


register_format(Format("torchvision", HOW, ("root",), labelled=labelled, read_paths=read_paths, keys=("name",),
                       split_keys=("_split", "_limit"), types={"name": str, "_split": str, "_limit": PositiveInt}))
