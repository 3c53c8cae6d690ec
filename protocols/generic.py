"""The `datasets` builder: protocols over real datasets, described entirely in their YAML file.

A protocol names a target dataset (split into experiences by class), held-out zero-shot sets,
retrieval sets and an optional reference set; each is a *dataset spec*, a mapping with an
`adapter` (a format of `clipbench.protocols.formats`) and its arguments. Paths are relative to the run's
`data_root` (`--set data_root=/data`). `mtil` builds one task per dataset instead.

`asset_report()` says, for `clipbench run --dry-run`, which files a protocol needs, whether they
are there and how to get them.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from clipbench.errors import ClipbenchError

from .catalog import register_assets, register_builder
from .data import CaptionedImages, LabelledImages, Streams, ZeroShotSet
from .formats import FORMATS, get_format, read_paths, resolve, spec_paths

def load_labelled(spec: Dict[str, Any], split: str, data_root: Optional[str]) -> Tuple[LabelledImages, List[str]]:
    """A labelled split through the spec's format; `names` in the spec override the dataset's class names.

    A dataset with no official split (EuroSAT, Caltech101, SUN397) gives `test_fraction`: a fixed
    permutation (seed 0) sends that share of every class to the test split, the rest to train. The
    images are listed, not decoded, so each is decoded once whatever split it lands in.
    """
    fmt = get_format(spec)
    if fmt.labelled is None:
        raise ClipbenchError(f"format '{fmt.name}' gives no class labels; use one of "
                             f"{', '.join(n for n in FORMATS.names() if FORMATS.get(n).labelled)}")
    if spec.get("download") and fmt.fetch is not None:
        fmt.fetch(spec, data_root)
    if "test_fraction" in spec and split in ("train", "test"):
        whole, names = fmt.labelled(spec, spec.get("whole_split", "train"), data_root)
        test_mask = torch.zeros(len(whole), dtype=torch.bool)
        rng = np.random.default_rng(0)
        for c in whole.labels.unique().tolist():
            idx = torch.nonzero(whole.labels == c).flatten().numpy()
            test_mask[rng.permutation(idx)[: int(round(len(idx) * float(spec["test_fraction"])))]] = True
        data = whole.subset(test_mask if split == "test" else ~test_mask)
    else:
        data, names = fmt.labelled(spec, split, data_root)
    return data, [str(n) for n in spec.get("names", names)]


def load_captioned(spec: Dict[str, Any], data_root: Optional[str]) -> CaptionedImages:
    fmt = get_format(spec)
    if fmt.captioned is None:
        raise ClipbenchError(f"format '{fmt.name}' gives no captions; use one of "
                             f"{', '.join(n for n in FORMATS.names() if FORMATS.get(n).captioned)}")
    cap = fmt.captioned(spec, data_root)
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


DEFAULT_TEMPLATES = ["a photo of a {c}."]


def heldout_sets(params: Dict[str, Any], data_root: Optional[str]) -> Dict[str, Any]:
    zeroshot = {}
    for name, spec in (params.get("zeroshot") or {}).items():
        data, names = load_labelled(spec, spec.get("split", "test"), data_root)
        zeroshot[name] = ZeroShotSet(data, names, list(spec.get("templates", DEFAULT_TEMPLATES)))
    retrieval = {name: load_captioned(spec, data_root) for name, spec in (params.get("retrieval") or {}).items()}
    reference = load_captioned(params["reference"], data_root) if params.get("reference") else None
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


@register_builder("datasets", version=2)
def build_datasets(params: Dict[str, Any], data_root: Optional[str], seed: int) -> Streams:
    """A class- or task-incremental stream over one target dataset, with held-out sets.

    params: target (spec), class_order (ids, default natural), n_experiences | increment(s),
    train_per_class / test_per_class (subsample, fixed by subsample_seed), templates,
    train_template, kind, zeroshot / retrieval (named specs), reference (spec).
    Images are listed here and decoded by the runner with the model's own preprocessing.
    """
    target = params["target"]
    rng = np.random.default_rng(int(params.get("subsample_seed", 0)))
    train, names = load_labelled(target, "train", data_root)
    test, _ = load_labelled(target, "test", data_root)
    train = _subsample(train, params.get("train_per_class"), rng)
    test = _subsample(test, params.get("test_per_class"), rng)
    order = [int(c) for c in params.get("class_order") or range(len(names))]
    sizes = experience_sizes(len(order), params)
    bounds = np.cumsum([0] + sizes).tolist()
    return Streams(
        kind=params.get("kind", "class_incremental"),
        class_names=[names[c] for c in order],
        templates=list(params.get("templates", DEFAULT_TEMPLATES)),
        train_template=params.get("train_template", ""),
        train=_split_by_class(train, order, sizes), test=_split_by_class(test, order, sizes),
        experience_classes=[list(range(bounds[k], bounds[k + 1])) for k in range(len(sizes))],
        **heldout_sets(params, data_root),
    )


@register_builder("mtil", version=2)
def build_mtil(params: Dict[str, Any], data_root: Optional[str], seed: int) -> Streams:
    """ZSCL's multi-domain task-incremental learning: one task per dataset, in `order`, each trained
    and scored over its own classes with its own templates (a dataset's classes use that dataset's
    `templates`; training uses the first). params: datasets (name -> spec with templates), order
    (names), train_per_class / test_per_class."""
    rng = np.random.default_rng(int(params.get("subsample_seed", 0)))
    train, test, class_names, exp_classes, class_templates = [], [], [], [], []
    for name in params["order"]:
        spec = params["datasets"][name]
        tr, names = load_labelled(spec, "train", data_root)
        te, _ = load_labelled(spec, "test", data_root)
        tr, te = _subsample(tr, params.get("train_per_class"), rng), _subsample(te, params.get("test_per_class"), rng)
        offset = len(class_names)
        train.append(LabelledImages(tr.images, tr.labels + offset))
        test.append(LabelledImages(te.images, te.labels + offset))
        exp_classes.append(list(range(offset, offset + len(names))))
        class_names += names
        class_templates += [list(spec.get("templates", DEFAULT_TEMPLATES))] * len(names)
    return Streams(kind="task_incremental", class_names=class_names, templates=class_templates[0], train=train, test=test,
                   experience_classes=exp_classes, class_templates=class_templates, **heldout_sets(params, data_root))


@register_assets("datasets")
def datasets_assets(params: Dict[str, Any], data_root: Optional[str]) -> List[Dict[str, Any]]:
    return asset_report([("target", params["target"])] + heldout_specs(params), data_root)


@register_assets("mtil")
def mtil_assets(params: Dict[str, Any], data_root: Optional[str]) -> List[Dict[str, Any]]:
    return asset_report([(f"task {n}", params["datasets"][n]) for n in params["order"]] + heldout_specs(params), data_root)


def heldout_specs(params: Dict[str, Any]) -> List[Tuple[str, Dict[str, Any]]]:
    specs = [(f"zero-shot {k}", v) for k, v in (params.get("zeroshot") or {}).items()]
    specs += [(f"retrieval {k}", v) for k, v in (params.get("retrieval") or {}).items()]
    if params.get("reference"):
        specs.append(("reference", params["reference"]))
    return specs


def asset_report(specs: List[Tuple[str, Dict[str, Any]]], data_root: Optional[str]) -> List[Dict[str, Any]]:
    """Every file or folder the dataset specs read: where, whether found, how to get it, and (`reads`) the
    files and folders whose contents the data fingerprint covers."""
    rows = []
    for label, spec in specs:
        fmt = get_format(spec)
        reads = [str(p) for p in read_paths(spec, data_root)]
        for key, value in spec_paths(spec):
            path = resolve(data_root, value)
            rows.append({"asset": label, "key": key, "path": str(path), "found": path.exists(),
                         "how": spec.get("how", fmt.how), "reads": reads})
    return rows
