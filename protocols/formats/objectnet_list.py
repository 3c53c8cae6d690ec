"""`objectnet_list`: the LAMDA ObjectNet subset (200 of ObjectNet's 313 categories) from the authors' file lists
over the original ObjectNet images, for those who cannot download the processed archive.

The lists: the "filelist" (Google Drive) that zhoudw-zdw/PROOF's README (at 0bb2052, section Dataset) links beside
the ObjectNet archive, `train.txt` and `test.txt`, one image a line. The authors' script that turns them into the
archive's folders (LAMDA-CL/RevisitingCIL issue #2, comment of 2024-08-10) splits each line on `/`, takes the
second-to-last part as the category and the last as the file name, and copies the image from ObjectNet's `images`
folder into `<split>/<category>/`; the code then reads those folders with `ImageFolder` (see `lamda_folder`).
This format reads the same images where they lie: `<images>/<category>/<file>` (ObjectNet 1.0 unpacks to
`objectnet-1.0/images/<category>/<file>.png`), with `ImageFolder`'s labels: the categories of the split's list,
sorted by name. Both lists must name the same categories (two `ImageFolder`s over different class sets would
number them differently).

Spec keys: `images` (ObjectNet's `images` folder), `<split>_list` (the list of each split).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from clipbench.errors import ClipbenchError
from clipbench.streams import FileReader, ImageSources, LabelledImages

from . import Format, Labelled, Spec, register_format, require_dir, require_file, resolve

HOW = ("ObjectNet 1.0 (objectnet.dev) unpacked, and the authors' train.txt / test.txt: the 'filelist' link in "
       "zhoudw-zdw/PROOF's README (section Dataset); or use the processed archive with format lamda_folder")


def entries(path: Path) -> List[Tuple[str, str]]:
    """(category, file name) of every line of a list."""
    require_file(path, "ObjectNet file list", HOW)
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        parts = line.split("/")
        if len(parts) < 2 or not parts[-1] or not parts[-2]:
            raise ClipbenchError(f"{path}:{n}: '{line}' is not <...>/<category>/<file>")
        out.append((parts[-2], parts[-1]))
    return out


def read(images: Path, list_path: Path, other_list: Optional[Path] = None) -> Labelled:
    """The images a list names, labelled by its sorted categories; `other_list` (the other split's list, when
    there) must name the same categories."""
    require_dir(images, "ObjectNet images folder", HOW)
    found = entries(list_path)
    categories = sorted({c for c, _ in found})
    if other_list is not None and other_list.is_file():
        other = sorted({c for c, _ in entries(other_list)})
        if other != categories:
            extra = sorted(set(other) ^ set(categories))
            raise ClipbenchError(f"{list_path} and {other_list} name different categories (e.g. {extra[0]}); "
                                 "both lists must come from one split")
    label: Dict[str, int] = {c: i for i, c in enumerate(categories)}
    files = [images / c / f for c, f in found]
    labels = torch.tensor([label[c] for c, _ in found], dtype=torch.long)
    return LabelledImages(ImageSources(FileReader(), files), labels), categories


def _list(spec: Spec, split: str, data_root: Optional[str]) -> Path:
    key = f"{split}_list"
    if key not in spec:
        raise ClipbenchError(f"objectnet_list: the spec has no `{key}` (the list of split '{split}')")
    return resolve(data_root, spec[key])


def labelled(spec: Spec, split: str, data_root: Optional[str]) -> Labelled:
    others = [k for k in spec if k.endswith("_list") and k != f"{split}_list"]
    other = resolve(data_root, spec[others[0]]) if others else None
    return read(resolve(data_root, spec["images"]), _list(spec, split, data_root), other)


def read_paths(spec: Spec, data_root: Optional[str]) -> List[Path]:
    """The lists and the category folders they name."""
    lists = [resolve(data_root, spec[k]) for k in spec if k.endswith("_list")]
    images = resolve(data_root, spec["images"])
    categories = sorted({c for path in lists if path.is_file() for c, _ in entries(path)})
    return lists + [images / c for c in categories]


def write_small(spec: Spec, data_root: str, per_class: int = 2, seed: int = 0, n_classes: Optional[int] = None) -> Spec:
    """Tiny ObjectNet-layout data where `spec` reads it: `images/<category>/<file>.png` and both lists, whose
    lines carry a leading folder as the authors' lists may."""
    from ._tiny import image, n_classes_of

    rng = np.random.default_rng(seed)
    images = resolve(data_root, spec["images"])
    for split in ("train", "test"):
        lines = []
        for c in range(n_classes_of(spec, n_classes)):
            for k in range(per_class):
                name = f"{split}_{c}_{k}.png"
                image(rng, images / f"category_{c:03d}" / name)
                lines.append(f"images/category_{c:03d}/{name}")
        path = resolve(data_root, spec.get(f"{split}_list", f"{split}.txt"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
    return {}


register_format(Format("objectnet_list", HOW, ("images",), labelled=labelled, read_paths=read_paths,
                       split_keys=("_list",)))
