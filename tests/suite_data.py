"""A small `data_root` holding every dataset the `paper`, `mtil` and `cil_cifar100` suites read, each in its
real on-disk format: COCO-2014 instances and images, Karpathy's caption JSON (COCO and Flickr30k), ImageNet's
val folder with LOC_val_solution.csv and tiered-ImageNet's wnid list, EuroSAT's ImageFolder, MNIST's idx files
(torchvision's layout), CIFAR-100's python pickles and a CSV of image-caption pairs. Images are random-noise
JPEGs and PNGs of varied sizes, a few per class: enough for every metric, small enough for ViT-B-32 on a CPU.
"""

from __future__ import annotations

import csv
import json
import pickle
import struct
from pathlib import Path
from typing import List, Tuple

import numpy as np
from PIL import Image

EUROSAT_FOLDERS = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture",
                   "PermanentCrop", "Residential", "River", "SeaLake"]
CIFAR_CLASSES = [87, 0, 52, 58]  # the first four of the iCaRL order cifar100_*steps use
WNIDS = ["n01440764", "n01443537"]


def _image(rng: np.random.Generator, path: Path, size: Tuple[int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _coco(rng, root: Path) -> None:
    """Two categories (COCO ids 1 person, 18 dog); per split two images holding one box of each, plus a crowd
    box and a box under min_area that the adapter skips."""
    for split in ("train", "val"):
        images, annotations = [], []
        for k in range(2):
            name = f"COCO_{split}2014_{k + 1:012d}.jpg"
            _image(rng, root / f"{split}2014" / name, (96, 80))
            images.append({"id": k + 1, "file_name": name, "width": 96, "height": 80})
            base = 10 * (k + 1)
            annotations += [
                {"id": base, "image_id": k + 1, "category_id": 18, "bbox": [2, 3, 40.5, 33.2], "area": 1300, "iscrowd": 0},
                {"id": base + 1, "image_id": k + 1, "category_id": 1, "bbox": [44, 10, 48, 60], "area": 2800, "iscrowd": 0},
                {"id": base + 2, "image_id": k + 1, "category_id": 1, "bbox": [0, 0, 8, 8], "area": 64, "iscrowd": 0},
                {"id": base + 3, "image_id": k + 1, "category_id": 18, "bbox": [0, 0, 90, 70], "area": 6300, "iscrowd": 1},
            ]
        categories = [{"id": 1, "name": "person", "supercategory": "person"},
                      {"id": 18, "name": "dog", "supercategory": "animal"}]
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"instances_{split}2014.json").write_text(
            json.dumps({"images": images, "annotations": annotations, "categories": categories}))


def _karpathy(rng, json_path: Path, image_root: Path, n_test: int, sub: str, dataset: str) -> None:
    """Karpathy's split file: `n_test` test images (two sentences each) and one train image."""
    entries = []
    for k in range(n_test + 1):
        name = f"{dataset}_{k:06d}.jpg"
        _image(rng, image_root / sub / name, (64 + 8 * k, 48))
        entry = {"filename": name, "imgid": k, "split": "test" if k < n_test else "train",
                 "sentences": [{"raw": f"a picture with pattern {k} ."}, {"raw": f"noise number {k}"}]}
        if sub:
            entry["filepath"] = sub
        entries.append(entry)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({"images": entries, "dataset": dataset}))


def _imagenet(rng, root: Path) -> None:
    """Four val images of two classes, LOC_val_solution.csv, and the tiered-ImageNet test-class list."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "LOC_val_solution.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["ImageId", "PredictionString"])
        for k in range(4):
            name = f"ILSVRC2012_val_{k + 1:08d}"
            _image(rng, root / "val" / f"{name}.JPEG", (70, 50))
            writer.writerow([name, f"{WNIDS[k % 2]} 1 2 30 40"])
    (root / "tiered_imagenet_test_wnids.txt").write_text("\n".join(WNIDS) + "\n")


def _eurosat(rng, root: Path, per_class: int = 3) -> None:
    for name in EUROSAT_FOLDERS:
        for k in range(per_class):
            _image(rng, root / name / f"{name}_{k + 1}.jpg", (64, 64))


def _mnist(rng, raw: Path) -> None:
    """torchvision's MNIST layout: uncompressed idx files under MNIST/raw."""
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", 20), ("t10k", 10)):
        labels = np.arange(n, dtype=np.uint8) % 10
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.tobytes())


def _cifar100(rng, folder: Path) -> None:
    """CIFAR-100's pickles: 100 fine label names; images of four classes only (two train, one test each)."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, per_class in (("train", 2), ("test", 1)):
        labels = [c for c in CIFAR_CLASSES for _ in range(per_class)]
        data = rng.integers(0, 256, (len(labels), 3 * 32 * 32), dtype=np.uint8)
        with open(folder / split, "wb") as fh:
            pickle.dump({"data": data, "fine_labels": labels, "coarse_labels": [0] * len(labels),
                         "filenames": [f"img_{k}.png" for k in range(len(labels))]}, fh)
    with open(folder / "meta", "wb") as fh:
        pickle.dump({"fine_label_names": [f"class_{k}" for k in range(100)], "coarse_label_names": ["x"] * 20}, fh)


def _pairs_csv(rng, folder: Path, n: int = 6) -> None:
    rows: List[Tuple[str, str]] = []
    for k in range(n):
        _image(rng, folder / "images" / f"{k}.png", (40 + 4 * k, 40))
        rows.append((f"images/{k}.png", f"an outside picture, number {k}"))
    with open(folder / "pairs.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "caption"])
        writer.writerows(rows)


def write_suite_data(root: Path, seed: int = 0) -> Path:
    """Every dataset of the three suites under `root` (their protocols' paths); returns `root`."""
    rng = np.random.default_rng(seed)
    _coco(rng, root / "coco")
    _karpathy(rng, root / "coco" / "dataset_coco.json", root / "coco", 5, "val2014", "coco")
    _karpathy(rng, root / "flickr30k" / "dataset_flickr30k.json", root / "flickr30k" / "flickr30k-images", 4, "", "flickr")
    _imagenet(rng, root / "imagenet")
    _pairs_csv(rng, root / "laion_subset")
    _eurosat(rng, root / "eurosat" / "2750")
    _mnist(rng, root / "mtil" / "MNIST" / "raw")
    _cifar100(rng, root / "cifar100" / "cifar-100-python")
    return root
