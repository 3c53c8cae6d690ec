"""`cifar`: CIFAR-10/100 python pickles (`cifar-10-batches-py/`, `cifar-100-python/`), as torchvision downloads them.

Spec keys: `root` (the folder holding the pickle folder), `variant` (10 or 100, default 100),
`download` (fetch through torchvision when missing), `raw_names` (true: the class names as the meta file and
torchvision's `classes` hold them, `aquarium_fish`, as the class-incremental references prompt them; default:
underscores become spaces, `aquarium fish`, as ZSCL's MTIL code does). The 32-px images stay raw pixels until the
runner decodes them: each is upsampled from a PIL image by the model's own transform, as
open_clip's `preprocess_val` does for a torchvision CIFAR dataset.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import List, Literal, Optional

import numpy as np
import torch

from clipbench.streams import ArrayReader, ImageSources, LabelledImages

from . import Format, Labelled, Spec, register_format, require_dir, resolve

HOW = "torchvision.datasets.CIFAR100(root, download=True) (or CIFAR10)"


def _folder(root: Path, variant: int) -> Path:
    return root / ("cifar-100-python" if variant == 100 else "cifar-10-batches-py")


def read(root: Path, split: str, variant: int = 100, raw_names: bool = False) -> Labelled:
    """(images as raw-pixel sources, labels) of `split` ('train' or 'test'), class names from the meta file."""
    folder = _folder(root, variant)
    require_dir(folder, f"CIFAR-{variant}", f"download it with torchvision (torchvision.datasets.CIFAR{variant}"
                f"(root='{root}', download=True)) or set the protocol's `root` to the folder that holds {folder.name}/")
    if variant == 100:
        files, label_key, meta, names_key = [split], "fine_labels", "meta", "fine_label_names"
    else:
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        label_key, meta, names_key = "labels", "batches.meta", "label_names"
    data, labels = [], []
    for name in files:
        with open(folder / name, "rb") as fh:
            entry = pickle.load(fh, encoding="latin1")
        data.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.extend(entry[label_key])
    with open(folder / meta, "rb") as fh:
        names: List[str] = [n if raw_names else n.replace("_", " ") for n in pickle.load(fh, encoding="latin1")[names_key]]
    pixels = np.ascontiguousarray(np.concatenate(data))  # [N, 32, 32, 3], as torchvision's CIFAR holds them
    sources = ImageSources(ArrayReader(pixels, str(folder / "+".join(files))), range(len(pixels)))
    return LabelledImages(sources, torch.tensor(labels, dtype=torch.long)), names


def labelled(spec: Spec, split: str, data_root: Optional[str]) -> Labelled:
    return read(resolve(data_root, spec["root"]), split, int(spec.get("variant", 100)), bool(spec.get("raw_names", False)))


def fetch(spec: Spec, data_root: Optional[str]) -> None:
    from . import download_with

    root, variant = resolve(data_root, spec["root"]), int(spec.get("variant", 100))
    if not _folder(root, variant).is_dir():
        import torchvision.datasets as tvd

        cls = tvd.CIFAR100 if variant == 100 else tvd.CIFAR10
        download_with(lambda: cls(root=str(root), train=True, download=True), root)


def read_paths(spec: Spec, data_root: Optional[str]) -> List[Path]:
    return [_folder(resolve(data_root, spec["root"]), int(spec.get("variant", 100)))]


register_format(Format("cifar", HOW, ("root",), labelled=labelled, fetch=fetch, read_paths=read_paths,
                       keys=("variant", "raw_names"), types={"variant": Literal[10, 100], "raw_names": bool}))
