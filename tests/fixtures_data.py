"""Small files in the exact on-disk formats users have (CIFAR pickles, COCO instances, Karpathy JSON...)."""

from __future__ import annotations

import csv
import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = [(220, 30, 30), (30, 190, 40), (40, 60, 230), (235, 220, 40)]


def save_image(path: Path, colour, size=(40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def write_cifar100(root: Path, per_split=(8, 4)) -> None:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for split, n in zip(("train", "test"), per_split):
        labels = [i % 4 for i in range(n)]
        data = np.stack([np.full((3, 32, 32), COLOURS[l][0] // (1 + k % 2), np.uint8).reshape(-1) for k, l in enumerate(labels)])
        with open(folder / split, "wb") as fh:
            pickle.dump({"data": data, "fine_labels": labels, "coarse_labels": [0] * n, "filenames": [f"{k}.png" for k in range(n)]}, fh)
    with open(folder / "meta", "wb") as fh:
        pickle.dump({"fine_label_names": ["apple", "aquarium_fish", "baby", "bear"], "coarse_label_names": ["x"]}, fh)


def write_image_folder(root: Path, classes=("cat", "dog"), per_class=3) -> None:
    for c, name in enumerate(classes):
        for k in range(per_class):
            save_image(root / name / f"{k}.jpg", COLOURS[c])


def write_imagenet_val(root: Path) -> None:
    rows = [("ILSVRC2012_val_00000001", "n01440764"), ("ILSVRC2012_val_00000002", "n01443537"),
            ("ILSVRC2012_val_00000003", "n01440764")]
    for k, (name, _) in enumerate(rows):
        save_image(root / "val" / f"{name}.JPEG", COLOURS[k % 2])
    with open(root / "LOC_val_solution.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["ImageId", "PredictionString"])
        for name, wnid in rows:
            w.writerow([name, f"{wnid} 10 10 30 30"])
    (root / "wnids.txt").write_text("n01443537\nn01440764\n")


def write_coco(root: Path, split="val") -> None:
    images = [{"id": 1, "file_name": f"COCO_{split}2014_000000000001.jpg", "width": 80, "height": 60},
              {"id": 2, "file_name": f"COCO_{split}2014_000000000002.jpg", "width": 80, "height": 60}]
    for k, im in enumerate(images):
        img = Image.new("RGB", (80, 60), (255, 255, 255))
        img.paste(Image.new("RGB", (40, 30), COLOURS[k]), (10, 10))
        (root / f"{split}2014").mkdir(parents=True, exist_ok=True)
        img.save(root / f"{split}2014" / im["file_name"])
    annotations = [
        {"id": 10, "image_id": 1, "category_id": 18, "bbox": [10, 10, 40, 30], "area": 1200, "iscrowd": 0},
        {"id": 11, "image_id": 2, "category_id": 1, "bbox": [10, 10, 40, 30], "area": 1200, "iscrowd": 0},
        {"id": 12, "image_id": 2, "category_id": 1, "bbox": [0, 0, 5, 5], "area": 25, "iscrowd": 0},  # too small
        {"id": 13, "image_id": 1, "category_id": 1, "bbox": [0, 0, 60, 50], "area": 3000, "iscrowd": 1},  # crowd
    ]
    categories = [{"id": 18, "name": "dog", "supercategory": "animal"}, {"id": 1, "name": "person", "supercategory": "person"}]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"instances_{split}2014.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories}))


def write_karpathy(root: Path, n_test=4, with_filepath=True) -> Path:
    entries = []
    for k in range(n_test + 2):
        sub = "val2014" if with_filepath else ""
        name = f"img{k}.jpg"
        save_image(root / sub / name, COLOURS[k % 4])
        entry = {"filename": name, "split": "test" if k < n_test else "train", "imgid": k,
                 "sentences": [{"raw": f"picture number {k} ."}, {"raw": f"another caption of image {k}"}]}
        if with_filepath:
            entry["filepath"] = sub
        entries.append(entry)
    path = root / "dataset.json"
    path.write_text(json.dumps({"images": entries, "dataset": "coco"}))
    return path


def write_lists(root: Path) -> None:
    for k in range(4):
        save_image(root / "imgs" / f"{k}.png", COLOURS[k])
    with open(root / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "label"])
        for k in range(4):
            w.writerow([f"imgs/{k}.png", ["red", "green"][k % 2]])
    with open(root / "captions.jsonl", "w") as fh:
        for k in range(4):
            fh.write(json.dumps({"image": f"imgs/{k}.png", "caption": f"colour swatch {k}"}) + "\n")
        fh.write(json.dumps({"image": "imgs/0.png", "caption": "a second caption for swatch 0"}) + "\n")
