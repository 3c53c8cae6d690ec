"""Small data in every on-disk format the shipped protocols read, written where their dataset specs point.

`write_smoke_data(protocols, data_root)` walks every dataset spec of the protocols' params (targets, MTIL's
datasets, held-out zero-shot and retrieval sets, reference sets) and asks the writer registered for its
format (`adapter`; for `torchvision`, the dataset's `name`) to write a few random-noise images per class in
that format's real layout under `data_root`: CIFAR's pickles, class folders, ImageNet's val layout, COCO's
instances JSON, Karpathy's caption JSON, CSV lists, CoOp's split JSONs, Tiny ImageNet as its zip unpacks,
Conceptual Captions as ZSCL's gather_cc.py leaves it, Oxford Flowers' .mat files, and torchvision's layouts
of FGVC-Aircraft, Caltech101, DTD, Food-101, MNIST, Oxford-IIIT Pet, Stanford Cars and SUN397.

Where a protocol fixes the class count (CIFAR-100's 100 names, TinyImageNet's 200 wnids, EuroSAT's and MNIST's
10 names) every class gets images, so the protocols run whole on this data as well as cut short
(`clipbench smoke`); elsewhere three classes do. `clipbench smoke` and the tests use it. A new format adds
its writer with `@register_smoke_writer("<adapter>")` (a torchvision dataset: `@register_torchvision_writer`).
"""

from __future__ import annotations

import csv
import json
import pickle
import struct
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from clipbench.errors import ClipbenchError

from .formats import Spec, _dataset_specs_in, resolve

Writer = Callable[[Spec, Path, np.random.Generator], None]  # (spec, data_root, rng): write the spec's files
SMOKE_WRITERS: Dict[str, Writer] = {}
TORCHVISION_WRITERS: Dict[str, Callable[[Path, Spec, np.random.Generator], None]] = {}  # (root, spec, rng)
CLASSES = 3  # classes written where the protocol does not fix the count


def register_smoke_writer(adapter: str) -> Callable[[Writer], Writer]:
    """Register the writer of smoke data for the dataset format `adapter`."""
    def decorate(fn: Writer) -> Writer:
        SMOKE_WRITERS[adapter] = fn
        return fn
    return decorate


def register_torchvision_writer(name: str):
    """Register the writer of a torchvision dataset's layout (the `torchvision` format's `name`), under `root`."""
    def decorate(fn):
        TORCHVISION_WRITERS[name] = fn
        return fn
    return decorate


def save_image(rng: np.random.Generator, path: Path, size: Tuple[int, int] = (24, 20)) -> None:
    """A random-noise RGB image (JPEG or PNG by the suffix) of `size` (width, height)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def _n_classes(spec: Spec, default: int = CLASSES) -> int:
    return len(spec["names"]) if spec.get("names") else default


def _per_split(spec: Spec) -> Dict[str, int]:
    """Images per class and split: with `test_fraction` one whole split of 4 (1 goes to test)."""
    return {"whole": 4} if "test_fraction" in spec else {"train": 2, "test": 1}


# ---------------------------------------------------------------- formats


@register_smoke_writer("cifar")
def write_cifar(spec: Spec, data_root: Path, rng: np.random.Generator) -> None:
    """CIFAR-10/100's python pickles: every class, 2 train and 1 test image each."""
    variant = int(spec.get("variant", 100))
    root = resolve(str(data_root), spec["root"])
    folder = root / ("cifar-100-python" if variant == 100 else "cifar-10-batches-py")
    folder.mkdir(parents=True, exist_ok=True)
    key = "fine_labels" if variant == 100 else "labels"
    batches = {"train": ["train"], "test": ["test"]} if variant == 100 else \
        {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    for split, per_class in (("train", 2), ("test", 1)):
        for name in batches[split]:
            per = per_class if variant == 100 or name in ("data_batch_1", "test_batch") else 0
            labels = [c for c in range(variant) for _ in range(per)]
            entry = {"data": rng.integers(0, 256, (len(labels), 3 * 32 * 32), dtype=np.uint8), key: labels,
                     "filenames": [f"img_{k}.png" for k in range(len(labels))]}
            if variant == 100:
                entry["coarse_labels"] = [0] * len(labels)
            with open(folder / name, "wb") as fh:
                pickle.dump(entry, fh)
    meta = ({"fine_label_names": [f"class_{k}" for k in range(100)], "coarse_label_names": ["x"] * 20}
            if variant == 100 else {"label_names": [f"class_{k}" for k in range(10)]})
    with open(folder / ("meta" if variant == 100 else "batches.meta"), "wb") as fh:
        pickle.dump(meta, fh)


def _folder_classes(spec: Spec) -> List[str]:
    if spec.get("class_ids"):
        return [str(c) for c in spec["class_ids"]]
    return [f"class_{k:03d}" for k in range(_n_classes(spec))]


@register_smoke_writer("image_folder")
def write_image_folder(spec: Spec, data_root: Path, rng: np.random.Generator) -> None:
    """`<root>/<class>/<image>`, one folder per class (per split where the spec names `<split>_root`)."""
    roots = {k[:-len("_root")]: v for k, v in spec.items() if k.endswith("_root")} or {"whole": spec["root"]}
    for split, rel in roots.items():
        n = _per_split(spec).get(split, 4 if split == "whole" else 2)
        for name in _folder_classes(spec):
            for k in range(n):
                save_image(rng, resolve(str(data_root), rel) / name / f"{name}_{split}_{k}.jpg", (24 + k, 20))


@register_smoke_writer("imagenet_val")
def write_imagenet_val(spec: Spec, data_root: Path, rng: np.random.Generator) -> None:
    """ImageNet's flat val folder, LOC_val_solution.csv and (if named) the class-id list: 2 images per class."""
    wnids = ["n01440764", "n01443537", "n01484850"]
    index = resolve(str(data_root), spec["index_file"])
    index.parent.mkdir(parents=True, exist_ok=True)
    with open(index, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["ImageId", "PredictionString"])
        for k in range(2 * len(wnids)):
            name = f"ILSVRC2012_val_{k + 1:08d}"
            save_image(rng, resolve(str(data_root), spec["images"]) / f"{name}.JPEG", (30 + k, 24))
            writer.writerow([name, f"{wnids[k % len(wnids)]} 1 2 20 20"])
    if spec.get("class_ids_file"):
        path = resolve(str(data_root), spec["class_ids_file"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(wnids[:2]) + "\n")


COCO_CATEGORIES = [(1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"),
                   (7, "train"), (8, "truck")]


@register_smoke_writer("coco_crops")
def write_coco_crops(spec: Spec, data_root: Path, rng: np.random.Generator) -> None:
    """`annotations/instances_<split>2014.json` and `<split>2014/` images: eight categories, per split two
    images with one box of each (plus a crowd box and a box under min_area, both skipped by the reader)."""
    root = resolve(str(data_root), spec["root"])
    for split in {spec.get("train_split", "train"), spec.get("test_split", "val")}:
        images, annotations = [], []
        for k in range(2):
            name = f"COCO_{split}2014_{k + 1:012d}.jpg"
            save_image(rng, root / f"{split}2014" / name, (200, 96))
            images.append({"id": k + 1, "file_name": name, "width": 200, "height": 96})
            for j, (cat, _) in enumerate(COCO_CATEGORIES):
                annotations.append({"id": 100 * k + j, "image_id": k + 1, "category_id": cat,
                                    "bbox": [24 * j, 2, 23.5, 48.2], "area": 1133, "iscrowd": 0})
            annotations += [{"id": 100 * k + 90, "image_id": k + 1, "category_id": 1, "bbox": [0, 0, 8, 8], "area": 64,
                             "iscrowd": 0},
                            {"id": 100 * k + 91, "image_id": k + 1, "category_id": 2, "bbox": [0, 0, 90, 70],
                             "area": 6300, "iscrowd": 1}]
        categories = [{"id": c, "name": n, "supercategory": "thing"} for c, n in COCO_CATEGORIES]
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"instances_{split}2014.json").write_text(
            json.dumps({"images": images, "annotations": annotations, "categories": categories}))


@register_smoke_writer("karpathy_captions")
def write_karpathy(spec: Spec, data_root: Path, rng: np.random.Generator) -> None:
    """Karpathy's split JSON: 5 images of the spec's split (two sentences each) and one of another split."""
    json_path, image_root = resolve(str(data_root), spec["split_json"]), resolve(str(data_root), spec["image_root"])
    split, folds = spec.get("split", "test"), int(spec.get("folds", 1))
    entries = []
    for k in range(5 * folds + 1):
        name = f"{json_path.stem}_{k:06d}.jpg"
        save_image(rng, image_root / "images" / name, (40 + 4 * k, 32))
        entries.append({"filename": name, "filepath": "images", "imgid": k,
                        "split": split if k < 5 * folds else "restval",
                        "sentences": [{"raw": f"a picture with pattern {k} ."}, {"raw": f"noise number {k}"}]})
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({"images": entries, "dataset": json_path.stem}))


def _write_list(rng: np.random.Generator, path: Path, column: str, n: int = 6) -> None:
    rows = []
    for k in range(n):
        save_image(rng, path.parent / "images" / f"{k}.png", (28 + 2 * k, 24))
        rows.append({"image": f"images/{k}.png", column: f"an outside picture, number {k}" if column == "caption"
                     else f"class_{k % CLASSES}"})
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["image", column])
            writer.writeheader()
            writer.writerows(rows)


def _lists(spec: Spec, data_root: Path, rng: np.random.Generator) -> None:
    """A CSV or JSONL list with captions (`caption`), for the lists protocols name (reference pairs)."""
    for key in [k for k in spec if k == "list" or k.endswith("_list")]:
        _write_list(rng, resolve(str(data_root), spec[key]), "caption")


SMOKE_WRITERS["csv"] = SMOKE_WRITERS["jsonl"] = _lists


@register_smoke_writer("coop_split")
def write_coop_split(spec: Spec, data_root: Path, rng: np.random.Generator) -> None:
    """CoOp's `split_zhou_<Name>.json` ({train|val|test: [[path, label, name], ...]}) beside its image folder."""
    images = resolve(str(data_root), spec["images"])
    names = [str(n) for n in spec.get("names") or [f"class {k}" for k in range(CLASSES)]]
    doc: Dict[str, List[list]] = {}
    for split, n in (("train", 2), ("val", 1), ("test", 1)):
        doc[split] = []
        for label, name in enumerate(names):
            for k in range(n):
                rel = f"c{label:03d}/{split}_{k}.jpg"
                save_image(rng, images / rel, (24 + k, 20))
                doc[split].append([rel, label, name])
    path = resolve(str(data_root), spec["split_file"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1))


def _shipped_tinyimagenet_wnids() -> List[str]:
    """The 200 wnids of the shipped TinyImageNet protocols (what a real tiny-imagenet-200 holds)."""
    try:
        from .catalog import get_protocol

        return list(get_protocol("tinyimagenet_100_5steps").params["target"]["names_by_wnid"])
    except (ClipbenchError, KeyError):
        return [f"n{k:08d}" for k in range(1, 201)]


@register_smoke_writer("tinyimagenet")
def write_tinyimagenet(spec: Spec, data_root: Path, rng: np.random.Generator) -> None:
    """Tiny ImageNet as its zip unpacks: wnids.txt, words.txt, train/<wnid>/images/ (2 each, with the boxes file),
    val/images/ and val/val_annotations.txt (1 each): all 200 classes."""
    root = resolve(str(data_root), spec["root"])
    wnids = list(spec.get("names_by_wnid") or _shipped_tinyimagenet_wnids())
    root.mkdir(parents=True, exist_ok=True)
    (root / "wnids.txt").write_text("".join(f"{w}\n" for w in wnids))
    (root / "words.txt").write_text("".join(f"{w}\tthing {k}, other name\n" for k, w in enumerate(wnids)))
    lines = []
    for c, w in enumerate(wnids):
        for k in range(2):
            save_image(rng, root / "train" / w / "images" / f"{w}_{k}.JPEG", (16, 16))
        (root / "train" / w / f"{w}_boxes.txt").write_text("".join(f"{w}_{k}.JPEG\t0\t0\t15\t15\n" for k in range(2)))
        save_image(rng, root / "val" / "images" / f"val_{c}.JPEG", (16, 16))
        lines.append(f"val_{c}.JPEG\t{w}\t0\t0\t15\t15")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")


@register_smoke_writer("conceptual_captions")
def write_conceptual_captions(spec: Spec, data_root: Path, rng: np.random.Generator) -> None:
    """ZSCL's gather_cc.py output: `title<TAB>filepath` rows, images under cc_data/val/<id % 1000>/<id>.jpg."""
    path = resolve(str(data_root), spec["list"])
    rows = []
    for uid in range(8):
        rel = f"cc_data/val/{uid % 1000}/{uid}.jpg"
        save_image(rng, path.parent / rel, (40 + 2 * uid, 30))
        rows.append(f"a photo of outside thing number {uid}\t{rel}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("title\tfilepath\n" + "\n".join(rows) + "\n")


@register_smoke_writer("flowers102")
def write_flowers102(spec: Spec, data_root: Path, rng: np.random.Generator) -> None:
    _flowers(resolve(str(data_root), spec["root"]), spec, rng)


@register_smoke_writer("torchvision")
def write_torchvision(spec: Spec, data_root: Path, rng: np.random.Generator) -> None:
    """The layout torchvision's class `name` reads under `root`."""
    if spec["name"] not in TORCHVISION_WRITERS:
        raise ClipbenchError(f"smoke data: no writer for torchvision's {spec['name']}; add one with "
                             "@register_torchvision_writer in clipbench.protocols.smoke_data")
    TORCHVISION_WRITERS[spec["name"]](resolve(str(data_root), spec["root"]), spec, rng)


# ---------------------------------------------------------------- torchvision layouts


@register_torchvision_writer("FGVCAircraft")
def _aircraft(root: Path, spec: Spec, rng: np.random.Generator) -> None:
    data = root / "fgvc-aircraft-2013b" / "data"
    variants = ["707-320", "A300B4", "Cessna 172"]
    data.mkdir(parents=True, exist_ok=True)
    (data / "variants.txt").write_text("".join(f"{v}\n" for v in variants))
    files: Dict[str, List[str]] = {s: [] for s in ("train", "val", "test")}
    k = 1000000
    for split in files:
        for v in variants:
            for _ in range(2 if split == "train" else 1):
                save_image(rng, data / "images" / f"{k}.jpg", (30, 24))
                files[split].append(f"{k} {v}")
                k += 1
    files["trainval"] = files["train"] + files["val"]
    for split, lines in files.items():
        (data / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")


@register_torchvision_writer("Caltech101")
def _caltech(root: Path, spec: Spec, rng: np.random.Generator) -> None:
    folder = root / "caltech101" / "101_ObjectCategories"
    for name in ["BACKGROUND_Google", "accordion", "airplanes", "anchor"]:  # the reader drops BACKGROUND_Google
        for k in range(1, 5):
            save_image(rng, folder / name / f"image_{k:04d}.jpg", (30, 24))


@register_torchvision_writer("DTD")
def _dtd(root: Path, spec: Spec, rng: np.random.Generator) -> None:
    data = root / "dtd" / "dtd"
    classes = ["banded", "blotchy", "braided"]
    for split in ("train", "val", "test"):
        lines = []
        for c in classes:
            for k in range(2 if split == "train" else 1):
                name = f"{c}_{split}_{k:04d}.jpg"
                save_image(rng, data / "images" / c / name, (30, 24))
                lines.append(f"{c}/{name}")
        (data / "labels").mkdir(parents=True, exist_ok=True)
        (data / "labels" / f"{split}1.txt").write_text("\n".join(lines) + "\n")


def _flowers(root: Path, spec: Spec, rng: np.random.Generator) -> None:
    from scipy.io import savemat

    base = root / "flowers-102"
    labels, ids = [], {"trnid": [], "valid": [], "tstid": []}
    image_id = 1
    for label in range(1, 103):  # all 102 classes: torchvision's names fix the count
        for key, n in (("trnid", 1), ("valid", 1), ("tstid", 1)):
            for _ in range(n):
                save_image(rng, base / "jpg" / f"image_{image_id:05d}.jpg", (30, 24))
                labels.append(label)
                ids[key].append(image_id)
                image_id += 1
    savemat(base / "imagelabels.mat", {"labels": np.array([labels], dtype=np.uint8)})
    savemat(base / "setid.mat", {k: np.array([v], dtype=np.uint16) for k, v in ids.items()})


register_torchvision_writer("Flowers102")(_flowers)


@register_torchvision_writer("Food101")
def _food(root: Path, spec: Spec, rng: np.random.Generator) -> None:
    base = root / "food-101"
    classes = ["apple_pie", "baby_back_ribs", "baklava"]
    (base / "meta").mkdir(parents=True, exist_ok=True)
    (base / "meta" / "classes.txt").write_text("\n".join(classes) + "\n")
    k = 100
    for split, n in (("train", 2), ("test", 1)):
        meta = {}
        for c in classes:
            meta[c] = []
            for _ in range(n):
                save_image(rng, base / "images" / c / f"{k}.jpg", (30, 24))
                meta[c].append(f"{c}/{k}")
                k += 1
        (base / "meta" / f"{split}.json").write_text(json.dumps(meta))


def _idx_files(rng: np.random.Generator, raw: Path) -> None:
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", 20), ("t10k", 10)):
        labels = np.arange(n, dtype=np.uint8) % 10
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.tobytes())


@register_torchvision_writer("MNIST")
def _mnist(root: Path, spec: Spec, rng: np.random.Generator) -> None:
    """torchvision's layout: uncompressed idx files under MNIST/raw, every digit (2 train, 1 test each)."""
    _idx_files(rng, root / "MNIST" / "raw")


@register_torchvision_writer("OxfordIIITPet")
def _pets(root: Path, spec: Spec, rng: np.random.Generator) -> None:
    base = root / "oxford-iiit-pet"
    breeds = [("Abyssinian", 1), ("american_bulldog", 2), ("Bengal", 1)]
    (base / "annotations").mkdir(parents=True, exist_ok=True)
    k = 1
    for split, n in (("trainval", 2), ("test", 1)):
        lines = []
        for label, (breed, species) in enumerate(breeds, 1):
            for _ in range(n):
                save_image(rng, base / "images" / f"{breed}_{k}.jpg", (30, 24))
                lines.append(f"{breed}_{k} {label} {species} 1")
                k += 1
        (base / "annotations" / f"{split}.txt").write_text("\n".join(lines) + "\n")


@register_torchvision_writer("StanfordCars")
def _cars(root: Path, spec: Spec, rng: np.random.Generator) -> None:
    from scipy.io import savemat

    base = root / "stanford_cars"
    classes = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Acura TL Sedan 2012"]
    (base / "devkit").mkdir(parents=True, exist_ok=True)
    savemat(base / "devkit" / "cars_meta.mat", {"class_names": np.array([classes], dtype=object)})
    for split, n, mat in (("train", 2, base / "devkit" / "cars_train_annos.mat"),
                          ("test", 1, base / "cars_test_annos_withlabels.mat")):
        rows = []
        for c in range(len(classes)):
            for k in range(n):
                fname = f"{c:02d}{k:03d}.jpg"
                save_image(rng, base / f"cars_{split}" / fname, (30, 24))
                rows.append((0, 0, 20, 20, c + 1, fname))
        annotations = np.array([rows], dtype=[("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"),
                                              ("class", "O"), ("fname", "O")])
        savemat(mat, {"annotations": annotations})


@register_torchvision_writer("SUN397")
def _sun(root: Path, spec: Spec, rng: np.random.Generator) -> None:
    data = root / "SUN397"
    classes = ["/a/abbey", "/a/airplane_cabin", "/b/bakery/shop"]
    data.mkdir(parents=True, exist_ok=True)
    (data / "ClassName.txt").write_text("".join(f"{c}\n" for c in classes))
    for i, c in enumerate(classes):
        for k in range(4):
            save_image(rng, data / c.lstrip("/") / f"sun_{i:05d}{k}.jpg", (30, 24))


# ---------------------------------------------------------------- a protocol's specs


def spec_key(spec: Spec) -> str:
    """One key per distinct dataset on disk: the writer and its paths (two specs of one dataset write once)."""
    from .formats import spec_paths

    writer = spec["adapter"] + (f":{spec['name']}" if spec["adapter"] == "torchvision" else "")
    return json.dumps([writer, spec_paths(spec)], sort_keys=True)


def dataset_specs(params: Dict[str, Any]) -> List[Spec]:
    """Every dataset spec inside builder params (targets, tasks, held-out and reference sets)."""
    return [spec for _, spec in _dataset_specs_in(params)]


def write_smoke_data(params_list: Iterable[Dict[str, Any]], data_root: Path, seed: int = 0) -> List[str]:
    """Write every dataset of the given builder params (each protocol's) under `data_root`, each once.
    Returns the writers used (`adapter` or `torchvision:<name>`), in order."""
    rng = np.random.default_rng(seed)
    done: Dict[str, str] = {}
    for params in params_list:
        for spec in dataset_specs(params):
            key = spec_key(spec)
            if key in done:
                continue
            if spec["adapter"] not in SMOKE_WRITERS:
                raise ClipbenchError(f"smoke data: no writer for dataset format '{spec['adapter']}'; add one with "
                                     "@register_smoke_writer in clipbench.protocols.smoke_data")
            SMOKE_WRITERS[spec["adapter"]](spec, Path(data_root), rng)
            done[key] = spec["adapter"] + (f":{spec['name']}" if spec["adapter"] == "torchvision" else "")
    return list(done.values())


def _small_writer(adapter: str) -> Writer:
    """The class-incremental CLIP formats' own tiny-data writers (`formats/_small.py`), two images per class."""
    def write(spec: Spec, data_root: Path, rng: np.random.Generator) -> None:
        from .formats._small import write_small

        write_small(spec, data_root, per_class=2, seed=int(rng.integers(1 << 31)))
    return write


for _adapter in ("lamda_folder", "objectnet_list", "imagenet_r_split", "subset_list"):
    register_smoke_writer(_adapter)(_small_writer(_adapter))


def _unpinned(params: Dict[str, Any]) -> Dict[str, Any]:
    """Overrides that switch off the git-blob pins of the authors' lists (`*_blob` keys: a tiny list written here
    cannot match them), as {param: {spec key: None}} for the dataset specs at the params' top level."""
    out: Dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, dict) and "adapter" in value:
            pins = {k: None for k in value if str(k).endswith("_blob")}
            if pins:
                out[key] = pins
    return out


def smoke_overrides(builder: str, params: Dict[str, Any]) -> Dict[str, Any]:
    """Builder params that cut a protocol to at most 2 experiences of few classes (the smoke grid's): MTIL-like
    streams keep their first two datasets; class-split streams their first 2 classes per experience. Pinned
    lists are unpinned (the smoke data's lists are not the authors')."""
    if builder == "mtil":
        return {"order": list(params["order"])[:2]}
    if builder == "datasets":
        order = [int(c) for c in params.get("class_order") or range(4)]
        if "increment" in params or "increments" in params or "initial" in params:
            return {**_unpinned(params), "class_order": order[:4], "increments": [2, 2]}
        n = min(2, int(params.get("n_experiences", 1)))
        return {**_unpinned(params), "class_order": order[:2 * n], "n_experiences": n}
    return {}
