"""`imagenet_val`: ImageNet's val layout, a flat folder of images and a file mapping each to its class.

Spec keys: `images` (the folder), `index_file` (`<file name> <class>` per line, the class an index or
a WordNet id; or the Kaggle LOC_val_solution.csv, `ImageId,PredictionString` whose first token is the
wnid), `class_ids` / `class_ids_file` (a subset of classes, in order: e.g. tiered-ImageNet's test classes).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch

from clipbench.errors import ClipbenchError
from clipbench.streams import FileReader, ImageSources, LabelledImages

from . import Format, Labelled, Spec, class_ids, register_format, require_dir, require_file, resolve

HOW = "ILSVRC2012 val images and a class-index file (LOC_val_solution.csv)"


def read(images: Path, index_file: Path, ids: Optional[Sequence[str]] = None) -> Labelled:
    require_dir(images, "ImageNet val images", "extract ILSVRC2012_img_val.tar there")
    require_file(index_file, "ImageNet val class-index file", "give `index_file`: lines '<file> <class>' or LOC_val_solution.csv")
    pairs: List[Tuple[str, str]] = []
    with open(index_file) as fh:
        if index_file.suffix == ".csv":
            for row in csv.DictReader(fh):
                pairs.append((f"{row['ImageId']}.JPEG", row["PredictionString"].split()[0]))
        else:
            for line in fh:
                if line.strip():
                    name, label = line.split()[:2]
                    pairs.append((name, label))
    everything = sorted({c for _, c in pairs}, key=lambda c: (len(c), c))
    chosen = list(ids) if ids else everything
    position = {c: i for i, c in enumerate(chosen)}
    keep = [(images / name, position[c]) for name, c in pairs if c in position]
    if not keep:
        raise ClipbenchError(f"{index_file}: no image belongs to the requested classes")
    sources = ImageSources(FileReader(), [p for p, _ in keep])
    return LabelledImages(sources, torch.tensor([label for _, label in keep])), imagenet_names(chosen, everything)


def imagenet_names(ids: List[str], everything: List[str]) -> List[str]:
    """Readable names for WordNet ids: ImageNet-1k's class index is the sorted wnid list, and open_clip
    ships the 1000 names (CLIP's) in that order. Ids outside a full 1000-class index are kept as they are."""
    if len(everything) != 1000 or not all(c.startswith("n") for c in everything):
        return list(ids)
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    index = {c: i for i, c in enumerate(sorted(everything))}
    return [IMAGENET_CLASSNAMES[index[c]] for c in ids]


def labelled(spec: Spec, split: str, data_root: Optional[str]) -> Labelled:
    return read(resolve(data_root, spec["images"]), resolve(data_root, spec["index_file"]), class_ids(spec, data_root))


register_format(Format("imagenet_val", HOW, ("images", "index_file", "class_ids_file"), labelled=labelled,
                       keys=("class_ids",)))
