"""Adapters for the dataset formats users have, each read in its real on-disk format.

| adapter | format |
|---|---|
| `cifar` | CIFAR-10/100 python pickles (`cifar-10-batches-py/`, `cifar-100-python/`), as torchvision downloads them |
| `image_folder` | one folder per class (`<root>/<class>/*.jpg`): ImageNet train, EuroSAT (`2750/`), most MTIL sets |
| `imagenet_val` | a flat image folder plus a class-index file (`<file> <index>` per line, or LOC_val_solution.csv) |
| `coco_crops` | COCO-2014 object crops from `instances_<split>2014.json` and the `<split>2014/` image folder |
| `karpathy_captions` | Flickr30k / COCO captions through the Karpathy-split JSON and an image folder |
| `csv` / `jsonl` | generic lists: image path with label, or image path with caption |
| `torchvision` | any torchvision classification dataset by class name (downloaded when `download: true`) |

Each loader decodes images once to uint8 at a requested size (shorter side resized, centre crop)
and raises one ClipbenchError naming the path it looked in and how to get the data when missing.
"""

from __future__ import annotations

import csv
import json
import pickle
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from clipbench.errors import ClipbenchError

from .data import CaptionedImages, LabelledImages

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm"}


def missing(what: str, path: Path, how: str) -> ClipbenchError:
    return ClipbenchError(f"{what} not found at {path}: {how}")


def to_uint8(img, size: int) -> np.ndarray:
    """PIL image -> uint8 [3, size, size]: RGB, shorter side resized to `size`, centre crop (CLIP's eval transform)."""
    from PIL import Image

    img = img.convert("RGB")
    w, h = img.size
    scale = size / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy()


def decode(paths: Sequence[Path], size: int, boxes: Optional[Sequence[Tuple[float, float, float, float]]] = None) -> torch.Tensor:
    """Decode (and optionally crop to x, y, w, h boxes) image files into uint8 [N, 3, size, size]."""
    from PIL import Image

    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)
    for i, path in enumerate(paths):
        with Image.open(path) as img:
            if boxes is not None:
                x, y, w, h = boxes[i]
                img = img.crop((int(x), int(y), int(np.ceil(x + w)), int(np.ceil(y + h))))
            out[i] = to_uint8(img, size)
    return torch.from_numpy(out)


def _require_dir(path: Path, what: str, how: str) -> Path:
    if not path.is_dir():
        raise missing(what, path, how)
    return path


# ------------------------------------------------------------------ CIFAR


def cifar(root: str | Path, split: str, variant: int = 100) -> Tuple[LabelledImages, List[str]]:
    """CIFAR-10/100 from torchvision's python-pickle layout; class names from its meta file."""
    folder = Path(root) / ("cifar-100-python" if variant == 100 else "cifar-10-batches-py")
    _require_dir(folder, f"CIFAR-{variant}", f"download it with torchvision (torchvision.datasets.CIFAR{variant}"
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
        data.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(entry[label_key])
    with open(folder / meta, "rb") as fh:
        names = [n.replace("_", " ") for n in pickle.load(fh, encoding="latin1")[names_key]]
    return LabelledImages(torch.from_numpy(np.concatenate(data)), torch.tensor(labels, dtype=torch.long)), names


# ------------------------------------------------------------------ folders


def image_folder(root: str | Path, size: int, classes: Optional[Sequence[str]] = None,
                 limit_per_class: Optional[int] = None) -> Tuple[LabelledImages, List[str]]:
    """`<root>/<class>/<image>`; classes sorted by folder name unless `classes` (a subset, in order) is given."""
    root = _require_dir(Path(root), "image folder", "point the protocol's `root` at a folder with one sub-folder per class")
    names = list(classes) if classes else sorted(p.name for p in root.iterdir() if p.is_dir())
    paths, labels = [], []
    for label, name in enumerate(names):
        folder = root / name
        if not folder.is_dir():
            raise missing(f"class folder '{name}'", folder, "check the class list against the dataset's folders")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit_per_class]
        paths += files
        labels += [label] * len(files)
    return LabelledImages(decode(paths, size), torch.tensor(labels, dtype=torch.long)), names


def imagenet_val(images: str | Path, index_file: str | Path, size: int, class_ids: Optional[Sequence[str]] = None,
                 ) -> Tuple[LabelledImages, List[str]]:
    """ImageNet's val layout: a flat folder of images and a file mapping each to its class.

    `index_file` is either `<file name> <class>` per line (class as an index or a WordNet id), or
    the Kaggle LOC_val_solution.csv (`ImageId,PredictionString` whose first token is the wnid).
    `class_ids` restricts to a subset of classes (e.g. tiered-ImageNet's test classes), in order.
    """
    images, index_file = Path(images), Path(index_file)
    _require_dir(images, "ImageNet val images", "extract ILSVRC2012_img_val.tar there")
    if not index_file.is_file():
        raise missing("ImageNet val class-index file", index_file, "give `index_file`: lines '<file> <class>' or LOC_val_solution.csv")
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
    ids = list(class_ids) if class_ids else everything
    position = {c: i for i, c in enumerate(ids)}
    keep = [(images / name, position[c]) for name, c in pairs if c in position]
    if not keep:
        raise ClipbenchError(f"{index_file}: no image belongs to the requested classes")
    return LabelledImages(decode([p for p, _ in keep], size), torch.tensor([l for _, l in keep])), imagenet_names(ids, everything)


def imagenet_names(ids: List[str], everything: List[str]) -> List[str]:
    """Readable names for WordNet ids: ImageNet-1k's class index is the sorted wnid list, and open_clip
    ships the 1000 names (CLIP's) in that order. Ids outside a full 1000-class index are kept as they are."""
    if len(everything) != 1000 or not all(c.startswith("n") for c in everything):
        return list(ids)
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    index = {c: i for i, c in enumerate(sorted(everything))}
    return [IMAGENET_CLASSNAMES[index[c]] for c in ids]


# ------------------------------------------------------------------ COCO


def coco_crops(root: str | Path, split: str, size: int, min_area: float = 32 * 32,
               limit: Optional[int] = None) -> Tuple[LabelledImages, List[str]]:
    """Object crops of COCO-2014: `<root>/annotations/instances_<split>2014.json` and `<root>/<split>2014/`.

    Classes are the 80 categories in COCO's category-id order; crowd boxes and boxes smaller than
    `min_area` pixels are skipped.
    """
    root = Path(root)
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
    images = decode([files[a["image_id"]] for a in chosen], size, [tuple(a["bbox"]) for a in chosen])
    labels = torch.tensor([label_of[a["category_id"]] for a in chosen], dtype=torch.long)
    return LabelledImages(images, labels), [c["name"] for c in categories]


# ------------------------------------------------------------------ captions


def karpathy_captions(split_json: str | Path, image_root: str | Path, split: str, size: int,
                      limit: Optional[int] = None) -> CaptionedImages:
    """Flickr30k or COCO captions from the Karpathy-split JSON (dataset_flickr30k.json, dataset_coco.json).

    Each image keeps all its sentences (five as a rule); COCO entries carry a `filepath` sub-folder.
    """
    split_json, image_root = Path(split_json), Path(image_root)
    if not split_json.is_file():
        raise missing("Karpathy split file", split_json, "download caption_datasets.zip (Karpathy's splits) and "
                      "point `split_json` at dataset_flickr30k.json or dataset_coco.json")
    _require_dir(image_root, "caption images", "extract the Flickr30k or COCO images there")
    entries = [e for e in json.loads(split_json.read_text())["images"] if e["split"] == split][:limit]
    paths = [image_root / e.get("filepath", "") / e["filename"] for e in entries]
    captions, owner = [], []
    for i, e in enumerate(entries):
        for sentence in e["sentences"]:
            captions.append(sentence["raw"].strip())
            owner.append(i)
    return CaptionedImages(decode(paths, size), captions, torch.tensor(owner, dtype=torch.long))


# ------------------------------------------------------------------ generic lists


def _rows(path: Path) -> Iterable[Dict[str, Any]]:
    if path.suffix == ".jsonl":
        with open(path) as fh:
            for n, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as err:
                        raise ClipbenchError(f"{path}:{n}: not JSON: {err.msg}") from None
    else:
        with open(path, newline="") as fh:
            yield from csv.DictReader(fh)


def listed(path: str | Path, size: int, kind: str = "label") -> Tuple[Any, Optional[List[str]]]:
    """A CSV (header `image,label` or `image,caption`) or JSONL (`{"image": ..., "label"|"caption": ...}`) list.

    Image paths are relative to the list's folder. Labels are class names; classes are sorted.
    Several rows with one image and different captions give that image several captions.
    """
    path = Path(path)
    if not path.is_file():
        raise missing(f"{kind} list", path, "write a CSV with columns image,label (or image,caption) or the JSONL equivalent")
    rows = list(_rows(path))
    if not rows or "image" not in rows[0] or kind not in rows[0]:
        raise ClipbenchError(f"{path}: needs the columns 'image' and '{kind}'")
    if kind == "label":
        names = sorted({str(r["label"]) for r in rows})
        images = decode([path.parent / r["image"] for r in rows], size)
        return LabelledImages(images, torch.tensor([names.index(str(r["label"])) for r in rows])), names
    order: Dict[str, int] = {}
    for r in rows:
        order.setdefault(r["image"], len(order))
    images = decode([path.parent / name for name in order], size)
    return CaptionedImages(images, [r["caption"] for r in rows], torch.tensor([order[r["image"]] for r in rows])), None


# ------------------------------------------------------------------ torchvision


def torchvision_dataset(name: str, root: str | Path, split: str, size: int, download: bool = False,
                        limit: Optional[int] = None) -> Tuple[LabelledImages, List[str]]:
    """A torchvision classification dataset by class name (e.g. 'DTD', 'Flowers102', 'FGVCAircraft').

    Downloads only when `download` is true; otherwise the data must already be in torchvision's layout under `root`.
    """
    import inspect

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
        raise missing(f"torchvision {name}", Path(root), f"{str(err).strip()} (set download: true to fetch it)") from None
    n = len(ds) if limit is None else min(limit, len(ds))
    images = np.empty((n, 3, size, size), dtype=np.uint8)
    labels = []
    for i in range(n):
        img, label = ds[i]
        images[i] = to_uint8(img, size)
        labels.append(int(label))
    names = [str(c).replace("_", " ") for c in getattr(ds, "classes", [])] or [str(i) for i in range(max(labels) + 1)]
    return LabelledImages(torch.from_numpy(images), torch.tensor(labels, dtype=torch.long)), names
