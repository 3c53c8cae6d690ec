"""The `datasets` builder: protocols over real datasets, described entirely in their YAML file.

A protocol names a target dataset (split into experiences by class), held-out zero-shot sets,
retrieval sets and an optional reference set; each is a *dataset spec*, a mapping with an
`adapter` (see `clipbench.protocols.datasets`) and its arguments. Paths are relative to the run's
`data_root` (`--set data_root=/data`). `mtil` builds one task per dataset instead.

`asset_report()` says, for `clipbench run --dry-run`, which files a protocol needs, whether they
are there and how to get them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from clipbench.errors import ClipbenchError

from . import datasets as ds
from .catalog import register_assets, register_builder
from .data import CaptionedImages, LabelledImages, Streams, ZeroShotSet

PATH_KEYS = ("root", "images", "index_file", "split_json", "image_root", "list", "class_ids_file")
HOW = {
    "cifar": "torchvision.datasets.CIFAR100(root, download=True) (or CIFAR10)",
    "image_folder": "one sub-folder of images per class",
    "imagenet_val": "ILSVRC2012 val images and a class-index file (LOC_val_solution.csv)",
    "coco_crops": "COCO-2014 images and annotations_trainval2014.zip from cocodataset.org",
    "karpathy_captions": "Karpathy's caption_datasets.zip plus the Flickr30k or COCO images",
    "csv": "a CSV/JSONL list you write (image,label or image,caption)",
    "jsonl": "a CSV/JSONL list you write (image,label or image,caption)",
    "torchvision": "torchvision downloads it when the spec says download: true",
}


def _path(data_root: Optional[str], value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() or data_root is None else Path(data_root).expanduser() / p


def _class_ids(spec: Dict[str, Any], data_root: Optional[str]) -> Optional[List[str]]:
    if "class_ids" in spec:
        return [str(c) for c in spec["class_ids"]]
    if "class_ids_file" in spec:
        path = _path(data_root, spec["class_ids_file"])
        if not path.is_file():
            raise ds.missing("class-id list", path, "one class id (e.g. a WordNet id) per line")
        return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    return None


def load_labelled(spec: Dict[str, Any], split: str, size: int, data_root: Optional[str]) -> Tuple[LabelledImages, List[str]]:
    """A labelled split through the spec's adapter; `names` in the spec override the dataset's class names.

    A dataset with no official split (EuroSAT, Caltech101, SUN397) gives `test_fraction`: a fixed
    permutation (seed 0) sends that share of every class to the test split, the rest to train.
    """
    if "test_fraction" in spec and split in ("train", "test"):
        whole, names = _load_split(spec, spec.get("whole_split", "train"), size, data_root)
        test_mask = torch.zeros(len(whole), dtype=torch.bool)
        rng = np.random.default_rng(0)
        for c in whole.labels.unique().tolist():
            idx = torch.nonzero(whole.labels == c).flatten().numpy()
            test_mask[rng.permutation(idx)[: int(round(len(idx) * float(spec["test_fraction"])))]] = True
        return whole.subset(test_mask if split == "test" else ~test_mask), names
    return _load_split(spec, split, size, data_root)


def fetch(spec: Dict[str, Any], data_root: Optional[str]) -> None:
    """With `download: true`, let torchvision fetch CIFAR or EuroSAT into place when the folder is missing."""
    if not spec.get("download"):
        return
    import torchvision.datasets as tvd

    if spec["adapter"] == "cifar":
        root = _path(data_root, spec["root"])
        name = "cifar-100-python" if int(spec.get("variant", 100)) == 100 else "cifar-10-batches-py"
        if not (root / name).is_dir():
            cls = tvd.CIFAR100 if int(spec.get("variant", 100)) == 100 else tvd.CIFAR10
            _download(lambda: cls(root=str(root), train=True, download=True), root)
    elif spec["adapter"] == "image_folder" and spec.get("torchvision"):
        folder = _path(data_root, spec["root"])  # e.g. <data_root>/eurosat/2750
        if not folder.is_dir():
            cls = getattr(tvd, spec["torchvision"])
            _download(lambda: cls(root=str(folder.parent.parent), download=True), folder)


def _download(call, where: Path) -> None:
    try:
        call()
    except Exception as err:  # offline, or the server refused
        raise ds.missing("dataset", where, f"torchvision could not download it ({type(err).__name__}: {err}); "
                         "fetch it on a machine with internet and copy it there") from None


def _load_split(spec: Dict[str, Any], split: str, size: int, data_root: Optional[str]) -> Tuple[LabelledImages, List[str]]:
    fetch(spec, data_root)
    a = spec["adapter"]
    p = lambda key: _path(data_root, spec[key])  # noqa: E731
    split_name = spec.get(f"{split}_split", split)
    if a == "cifar":
        data, names = ds.cifar(p("root"), split_name, int(spec.get("variant", 100)))
        data = LabelledImages(data.images, data.labels)  # 32 px; resized for the model in batches
    elif a == "image_folder":
        data, names = ds.image_folder(_path(data_root, spec.get(f"{split}_root", spec["root"])), size,
                                      _class_ids(spec, data_root), spec.get("limit_per_class"))
    elif a == "imagenet_val":
        data, names = ds.imagenet_val(p("images"), p("index_file"), size, _class_ids(spec, data_root))
    elif a == "coco_crops":
        data, names = ds.coco_crops(p("root"), split_name, size, float(spec.get("min_area", 1024)), spec.get(f"{split}_limit"))
    elif a in ("csv", "jsonl"):
        data, names = ds.listed(_path(data_root, spec.get(f"{split}_list", spec.get("list"))), size, "label")
    elif a == "torchvision":
        data, names = ds.torchvision_dataset(spec["name"], p("root"), split_name, size, bool(spec.get("download", False)),
                                             spec.get(f"{split}_limit"))
    else:
        raise ClipbenchError(f"unknown dataset adapter '{a}'; known: {', '.join(sorted(HOW))}")
    return data, [str(n) for n in spec.get("names", names)]


def load_captioned(spec: Dict[str, Any], size: int, data_root: Optional[str]) -> CaptionedImages:
    a = spec["adapter"]
    if a == "karpathy_captions":
        cap = ds.karpathy_captions(_path(data_root, spec["split_json"]), _path(data_root, spec["image_root"]),
                                   spec.get("split", "test"), size, spec.get("limit"))
    elif a in ("csv", "jsonl"):
        cap, _ = ds.listed(_path(data_root, spec["list"]), size, "caption")
    else:
        raise ClipbenchError(f"adapter '{a}' gives no captions; use karpathy_captions, csv or jsonl")
    cap.folds = int(spec.get("folds", 1))
    return cap


def _subsample(data: LabelledImages, per_class: Optional[int], rng: np.random.Generator) -> LabelledImages:
    if not per_class:
        return data
    keep = []
    for c in data.labels.unique().tolist():
        idx = torch.nonzero(data.labels == c).flatten().numpy()
        keep.append(np.sort(rng.choice(idx, size=min(per_class, len(idx)), replace=False)))
    return data.subset(torch.from_numpy(np.sort(np.concatenate(keep))))


def _split_by_class(data: LabelledImages, order: List[int], sizes: List[int]) -> List[LabelledImages]:
    """Relabel to positions in `order`, then cut into experiences of `sizes` classes each."""
    rank = torch.full((max(order) + 1,), -1, dtype=torch.long)
    rank[torch.tensor(order)] = torch.arange(len(order))
    labels = rank[data.labels]
    parts, start = [], 0
    for n in sizes:
        mask = (labels >= start) & (labels < start + n)
        parts.append(LabelledImages(data.images[mask], labels[mask]))
        start += n
    return parts


def heldout_sets(params: Dict[str, Any], size: int, data_root: Optional[str]) -> Dict[str, Any]:
    zeroshot = {}
    for name, spec in (params.get("zeroshot") or {}).items():
        data, names = load_labelled(spec, spec.get("split", "test"), size, data_root)
        zeroshot[name] = ZeroShotSet(data, names, list(spec.get("templates", ["a photo of a {c}."])))
    retrieval = {name: load_captioned(spec, size, data_root) for name, spec in (params.get("retrieval") or {}).items()}
    reference = load_captioned(params["reference"], size, data_root) if params.get("reference") else None
    return {"zeroshot_sets": zeroshot, "retrieval_sets": retrieval, "reference": reference}


def experience_sizes(n_classes: int, params: Dict[str, Any]) -> List[int]:
    """`increments: [..]`, or `initial` + `increment`, or `n_experiences` equal parts."""
    if "increments" in params:
        sizes = [int(x) for x in params["increments"]]
    elif "increment" in params:
        first = int(params.get("initial", params["increment"]))
        rest = n_classes - first
        sizes = [first] + [int(params["increment"])] * (rest // int(params["increment"]))
    else:
        n = int(params.get("n_experiences", 1))
        sizes = [n_classes // n] * n
    if sum(sizes) != n_classes:
        raise ClipbenchError(f"experiences of {sizes} classes do not cover the {n_classes} classes")
    return sizes


@register_builder("datasets")
def build_datasets(params: Dict[str, Any], data_root: Optional[str], seed: int) -> Streams:
    """A class- or task-incremental stream over one target dataset, with held-out sets.

    params: target (spec), class_order (ids, default natural), n_experiences | increment(s),
    train_per_class / test_per_class (subsample, fixed by subsample_seed), image_size, templates,
    train_template, kind, zeroshot / retrieval (named specs), reference (spec).
    """
    size = int(params.get("image_size", 224))
    target = params["target"]
    rng = np.random.default_rng(int(params.get("subsample_seed", 0)))
    train, names = load_labelled(target, "train", size, data_root)
    test, _ = load_labelled(target, "test", size, data_root)
    train = _subsample(train, params.get("train_per_class"), rng)
    test = _subsample(test, params.get("test_per_class"), rng)
    order = [int(c) for c in params.get("class_order") or range(len(names))]
    sizes = experience_sizes(len(order), params)
    bounds = np.cumsum([0] + sizes).tolist()
    return Streams(
        kind=params.get("kind", "class_incremental"),
        class_names=[names[c] for c in order],
        templates=list(params.get("templates", ["a photo of a {c}."])),
        train_template=params.get("train_template", ""),
        train=_split_by_class(train, order, sizes), test=_split_by_class(test, order, sizes),
        experience_classes=[list(range(bounds[k], bounds[k + 1])) for k in range(len(sizes))],
        **heldout_sets(params, size, data_root),
    )


@register_builder("mtil")
def build_mtil(params: Dict[str, Any], data_root: Optional[str], seed: int) -> Streams:
    """ZSCL's multi-domain task-incremental learning: one task per dataset, in `order`, each scored
    over its own classes with its own templates. params: datasets (name -> spec with templates),
    order (names), image_size, train_per_class / test_per_class."""
    size = int(params.get("image_size", 224))
    rng = np.random.default_rng(int(params.get("subsample_seed", 0)))
    train, test, class_names, exp_classes = [], [], [], []
    templates: List[str] = []
    for name in params["order"]:
        spec = params["datasets"][name]
        tr, names = load_labelled(spec, "train", size, data_root)
        te, _ = load_labelled(spec, "test", size, data_root)
        tr, te = _subsample(tr, params.get("train_per_class"), rng), _subsample(te, params.get("test_per_class"), rng)
        offset = len(class_names)
        train.append(LabelledImages(tr.images, tr.labels + offset))
        test.append(LabelledImages(te.images, te.labels + offset))
        exp_classes.append(list(range(offset, offset + len(names))))
        class_names += names
        templates = templates or list(spec.get("templates", ["a photo of a {c}."]))
    return Streams(kind="task_incremental", class_names=class_names, templates=templates, train=train, test=test,
                   experience_classes=exp_classes, **heldout_sets(params, size, data_root))


def _spec_paths(spec: Dict[str, Any]) -> List[Tuple[str, str]]:
    return [(k, str(spec[k])) for k in PATH_KEYS if k in spec] + \
           [(k, str(spec[k])) for k in spec if k.endswith(("_root", "_list")) and k not in PATH_KEYS]


@register_assets("datasets")
def datasets_assets(params: Dict[str, Any], data_root: Optional[str]) -> List[Dict[str, Any]]:
    return asset_report("datasets", params, data_root)


@register_assets("mtil")
def mtil_assets(params: Dict[str, Any], data_root: Optional[str]) -> List[Dict[str, Any]]:
    return asset_report("mtil", params, data_root)


def asset_report(builder: str, params: Dict[str, Any], data_root: Optional[str]) -> List[Dict[str, Any]]:
    """Every file or folder a `datasets`/`mtil` protocol reads: where, whether found, how to get it."""
    specs: List[Tuple[str, Dict[str, Any]]] = []
    if builder == "datasets":
        specs.append(("target", params["target"]))
    elif builder == "mtil":
        specs += [(f"task {n}", params["datasets"][n]) for n in params["order"]]
    specs += [(f"zero-shot {k}", v) for k, v in (params.get("zeroshot") or {}).items()]
    specs += [(f"retrieval {k}", v) for k, v in (params.get("retrieval") or {}).items()]
    if params.get("reference"):
        specs.append(("reference", params["reference"]))
    rows = []
    for label, spec in specs:
        for key, value in _spec_paths(spec):
            path = _path(data_root, value)
            rows.append({"asset": label, "key": key, "path": str(path), "found": path.exists(),
                         "how": spec.get("how", HOW.get(spec["adapter"], ""))})
    return rows
