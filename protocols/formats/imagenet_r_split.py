"""`imagenet_r_split`: ImageNet-R (Hendrycks et al., 2021; 200 ImageNet classes, 30,000 renditions) cut into train
and test by a committed split file, over the original archive (`imagenet-r.tar` unpacks to `imagenet-r/<wnid>/`).

The file: linlany/RAPF at 81d41df, `imgr_split/imgr_train_test_split.txt` (git blob 0fd1a573...; its README,
section datasets: a line `train`, then `<wnid>/<file>` lines, a line `test`, then its lines: 24,000 / 6,001 images).
MG-CLIP's README (linlany/MindtheGap at f40bfce) points to the same file. Their code reads the two folders made from
it with continuum's `ImageFolderDataset` (`continual_clip/datasets.py`, `ImageNet_R.get_data`: `<root>/train` and
`<root>/test`), that is torchvision's `ImageFolder`: a class's label is its wnid's place among the sorted wnids of
the split (the same 200 in both), which is the line order of their `dataset_reqs/imagenet_R_classes.txt`.

Spec keys: `root` (the unpacked `imagenet-r` folder), `split_file`, `split_blob` (the file's git blob id, checked
before reading; null skips), `names_by_wnid` (wnid -> class name; every wnid of the split must be named), and
`<split>_section` (which section of the file is our split; by default the one of the same name).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from clipbench.errors import ClipbenchError
from clipbench.streams import FileReader, ImageSources, LabelledImages

from . import Format, Labelled, Spec, register_format, require_dir, require_file, resolve
from ._pinned import check_blob

HOW = ("imagenet-r.tar (https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar) unpacked, and "
       "imgr_train_test_split.txt from https://github.com/linlany/RAPF (imgr_split/, commit 81d41df)")
SECTIONS = ("train", "test")


def sections(path: Path) -> Dict[str, List[str]]:
    """The file's sections: {'train': [wnid/file, ...], 'test': [...]}."""
    require_file(path, "ImageNet-R split file", HOW)
    out: Dict[str, List[str]] = {}
    current: Optional[str] = None
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if line in SECTIONS:
            current = line
            out.setdefault(current, [])
        elif current is None or "/" not in line:
            raise ClipbenchError(f"{path}:{n}: expected a section line (train/test) before '{line}', then <wnid>/<file> lines")
        else:
            out[current].append(line)
    return out


def read(root: Path, split_file: Path, section: str, names_by_wnid: Optional[Dict[str, str]] = None,
         split_blob: Optional[str] = None) -> Labelled:
    """The images of one section, labelled by the sorted wnids of that section; names from `names_by_wnid`."""
    require_dir(root, "ImageNet-R folder", HOW)
    check_blob(split_file, split_blob, "the protocol's split_blob: RAPF's imgr_train_test_split.txt")
    found = sections(split_file)
    if section not in found:
        raise ClipbenchError(f"{split_file}: no section '{section}' (found {', '.join(found) or 'none'})")
    lines = found[section]
    wnids = sorted({line.split("/")[0] for line in lines})
    label = {w: i for i, w in enumerate(wnids)}
    files = [root / line for line in lines]
    labels = torch.tensor([label[line.split("/")[0]] for line in lines], dtype=torch.long)
    if names_by_wnid:
        unnamed = [w for w in wnids if w not in names_by_wnid]
        if unnamed:
            raise ClipbenchError(f"names_by_wnid names no class for {len(unnamed)} wnid(s) of {split_file}, e.g. {unnamed[0]}")
        names = [str(names_by_wnid[w]) for w in wnids]
    else:
        names = wnids
    return LabelledImages(ImageSources(FileReader(), files), labels), names


def labelled(spec: Spec, split: str, data_root: Optional[str]) -> Labelled:
    return read(resolve(data_root, spec["root"]), resolve(data_root, spec["split_file"]),
                str(spec.get(f"{split}_section", split)), spec.get("names_by_wnid"), spec.get("split_blob"))


def write_small(spec: Spec, data_root: str, per_class: int = 2, seed: int = 0, n_classes: Optional[int] = None) -> Spec:
    """A tiny ImageNet-R: `<root>/<wnid>/<rendition>_<k>.jpg` for every wnid of `names_by_wnid` (else
    `n_classes` made-up ones) and a split file in RAPF's format; the blob pin is switched off."""
    from ._tiny import image, n_classes_of

    rng = np.random.default_rng(seed)
    root = resolve(data_root, spec["root"])
    wnids = sorted(spec.get("names_by_wnid") or [f"n{c:08d}" for c in range(n_classes_of(spec, n_classes))])
    lines: Dict[str, List[str]] = {s: [] for s in SECTIONS}
    for w in wnids:
        for k in range(2 * per_class):
            name = f"{w}/{'art' if k % 2 else 'cartoon'}_{k}.jpg"
            image(rng, root / name)
            lines[SECTIONS[k % 2]].append(name)
    path = resolve(data_root, spec["split_file"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{s}\n" + "".join(f"{line}\n" for line in lines[s]) for s in SECTIONS))
    return {"split_blob": None}


register_format(Format("imagenet_r_split", HOW, ("root", "split_file"), labelled=labelled,
                       keys=("split_blob", "names_by_wnid"), split_keys=("_section",)))
