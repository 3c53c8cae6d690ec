"""`karpathy_captions`: Flickr30k or COCO captions through the Karpathy-split JSON (dataset_flickr30k.json,
dataset_coco.json).

Spec keys: `split_json`, `image_root`, `split` (default test), `limit` (first N images), `folds`
(recall scored on this many equal folds, averaged: COCO 5k as 5 x 1k). Each image keeps all its
sentences (five as a rule); COCO entries carry a `filepath` sub-folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from clipbench.streams import CaptionedImages, FileReader, ImageSources

from ..values import PositiveInt
from . import Format, Spec, register_format, require_dir, require_file, resolve

HOW = "Karpathy's caption_datasets.zip plus the Flickr30k or COCO images"


def read(split_json: Path, image_root: Path, split: str, limit: Optional[int] = None) -> CaptionedImages:
    require_file(split_json, "Karpathy split file", "download caption_datasets.zip (Karpathy's splits) and "
                 "point `split_json` at dataset_flickr30k.json or dataset_coco.json")
    require_dir(image_root, "caption images", "extract the Flickr30k or COCO images there")
    entries = [e for e in json.loads(split_json.read_text())["images"] if e["split"] == split][:limit]
    paths = [image_root / e.get("filepath", "") / e["filename"] for e in entries]
    captions, owner = [], []
    for i, e in enumerate(entries):
        for sentence in e["sentences"]:
            captions.append(sentence["raw"].strip())
            owner.append(i)
    return CaptionedImages(ImageSources(FileReader(), paths), captions, torch.tensor(owner, dtype=torch.long))


def captioned(spec: Spec, data_root: Optional[str]) -> CaptionedImages:
    return read(resolve(data_root, spec["split_json"]), resolve(data_root, spec["image_root"]), spec.get("split", "test"),
                spec.get("limit"))


register_format(Format("karpathy_captions", HOW, ("split_json", "image_root"), captioned=captioned,
                       keys=("limit",), types={"limit": PositiveInt}))
