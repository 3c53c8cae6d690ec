"""`coco_crops`: object crops of COCO-2014, from `<root>/annotations/instances_<split>2014.json` and `<root>/<split>2014/`.

Spec keys: `root`, `train_split` / `test_split` (COCO's split name for each of ours, e.g. train and
val), `min_area` (smallest box in pixels, default 1024), `<split>_limit` (the first N boxes by
annotation id). Classes are the 80 categories in COCO's category-id order; crowd boxes are skipped.
Each crop is the box (x, y, w, h) widened to whole pixels, then prepared by the model's transform.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from clipbench.streams import FileReader, ImageSources, LabelledImages

from ..values import PositiveInt
from . import Format, Labelled, Spec, missing, register_format, resolve

HOW = "COCO-2014 images and annotations_trainval2014.zip from cocodataset.org"


def read(root: Path, split: str, min_area: float = 32 * 32, limit: Optional[int] = None) -> Labelled:
    ann = root / "annotations" / f"instances_{split}2014.json"
    if not ann.is_file():
        raise missing("COCO-2014 instances annotations", ann,
                      "download annotations_trainval2014.zip and the images from cocodataset.org into this folder")
    doc = json.loads(ann.read_text())
    categories = sorted(doc["categories"], key=lambda c: c["id"])
    label_of = {c["id"]: i for i, c in enumerate(categories)}
    files = {im["id"]: root / f"{split}2014" / im["file_name"] for im in doc["images"]}
    chosen = [a for a in sorted(doc["annotations"], key=lambda a: a["id"])
              if not a.get("iscrowd") and a["bbox"][2] * a["bbox"][3] >= min_area][:limit]
    sources = ImageSources(FileReader(), [(files[a["image_id"]], tuple(a["bbox"])) for a in chosen])
    labels = torch.tensor([label_of[a["category_id"]] for a in chosen], dtype=torch.long)
    return LabelledImages(sources, labels), [c["name"] for c in categories]


def labelled(spec: Spec, split: str, data_root: Optional[str]) -> Labelled:
    return read(resolve(data_root, spec["root"]), spec.get(f"{split}_split", split), float(spec.get("min_area", 1024)),
                spec.get(f"{split}_limit"))


register_format(Format("coco_crops", HOW, ("root",), labelled=labelled, keys=("min_area",),
                       split_keys=("_split", "_limit"), types={"min_area": float, "_split": str, "_limit": PositiveInt}))
