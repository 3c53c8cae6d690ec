"""Dataset specs, the building blocks of the builders over real datasets (`datasets`, `mtil`).

A protocol names a target dataset (split into experiences by class), held-out zero-shot sets,
retrieval sets and optional reference sets; each is a *dataset spec*, a mapping with an
`adapter` (a format of `clipbench.protocols.formats`) and its arguments. A reference set (`reference`,
and per method `references.<method>`, see `reference_parts`) is outside data for methods that use it;
it is read only for a run whose method does (`ProtocolDef.method_params`). Paths are relative to the run's
`data_root` (`--set data_root=/data`). `mtil` builds one task per dataset instead.

`asset_report()` says, for `clipbench run --dry-run`, which files a protocol needs, whether they
are there and how to get them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Dict, List, Optional, Tuple

import numpy as np
import torch

from clipbench.errors import BadValue, ClipbenchError
from clipbench.streams import CaptionedImages, LabelledImages, ZeroShotSet

from ..formats import FORMATS, get_format, read_paths, resolve, spec_paths
from ..values import PositiveInt, at_least


def load_labelled(spec: Dict[str, Any], split: str, data_root: Optional[str],
                  at: str = "") -> Tuple[LabelledImages, List[str]]:
    """A labelled split through the spec's format; `names` in the spec override the dataset's class names.

    A dataset with no official split gives either `random_split: {train: 0.8, seed: 42}`, ZSCL's split
    (Thunderbeee/ZSCL at b96e714, `mtil/src/datasets/collections.py`, `split_dataset`: torch's
    `random_split(dataset, [int(0.8 n), n - int(0.8 n)], generator=torch.Generator().manual_seed(42))` over
    the whole dataset in its own order: the first int(train x n) indices of `torch.randperm(n, generator)` train,
    the rest test), or `test_fraction`: a fixed permutation (seed 0) sends that share of every class to the
    test split, the rest to train. The images are listed, not decoded, so each is decoded once whatever
    split it lands in. `at`: the spec's key
    path in the builder's params (`target`), so a value that does not fit the data is named at its line.
    """
    fmt = get_format(spec)
    if fmt.labelled is None:
        raise ClipbenchError(f"format '{fmt.name}' gives no class labels; use one of "
                             f"{', '.join(n for n in FORMATS.names() if FORMATS.get(n).labelled)}")
    if spec.get("download") and fmt.fetch is not None:
        fmt.fetch(spec, data_root)
    if "random_split" in spec and split in ("train", "test"):
        whole, names = fmt.labelled(spec, spec.get("whole_split", "train"), data_root)
        data = whole.subset(random_split_mask(len(whole), spec["random_split"], split))
    elif "test_fraction" in spec and split in ("train", "test"):
        whole, names = fmt.labelled(spec, spec.get("whole_split", "train"), data_root)
        test_mask = torch.zeros(len(whole), dtype=torch.bool)
        rng = np.random.default_rng(0)
        for c in whole.labels.unique().tolist():
            idx = torch.nonzero(whole.labels == c).flatten().numpy()
            test_mask[rng.permutation(idx)[: int(round(len(idx) * float(spec["test_fraction"])))]] = True
        data = whole.subset(test_mask if split == "test" else ~test_mask)
    else:
        data, names = fmt.labelled(spec, split, data_root)
    if "names" in spec and len(spec["names"]) != len(names):
        raise BadValue(f"{at}.names" if at else "names", f"{len(spec['names'])} names for the {len(names)} classes the dataset has; give one "
                       "name per class, in the dataset's class order")
    return data, [str(n) for n in spec.get("names", names)]


def random_split_mask(n: int, how: Any, split: str) -> torch.Tensor:
    """The `split` ('train' or 'test') side of torch's `random_split` of n items into int(train x n) and the
    rest, under `torch.Generator().manual_seed(seed)` (`how`: {train: fraction, seed: int})."""
    if not (isinstance(how, dict) and set(how) == {"train", "seed"} and 0 < float(how["train"]) < 1
            and isinstance(how["seed"], int)):
        raise ClipbenchError(f"random_split: expected {{train: <fraction in (0, 1)>, seed: <integer>}}, got {how!r}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(how["seed"])))
    n_train = int(float(how["train"]) * n)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[order[:n_train] if split == "train" else order[n_train:]] = True
    return mask


def load_captioned(spec: Dict[str, Any], data_root: Optional[str]) -> CaptionedImages:
    fmt = get_format(spec)
    if fmt.captioned is None:
        raise ClipbenchError(f"format '{fmt.name}' gives no captions; use one of "
                             f"{', '.join(n for n in FORMATS.names() if FORMATS.get(n).captioned)}")
    cap = fmt.captioned(spec, data_root)
    cap.folds = int(spec.get("folds", 1))
    return cap


def subsample(data: LabelledImages, per_class: Optional[int], rng: np.random.Generator) -> LabelledImages:
    if not per_class:
        return data
    keep = []
    for c in data.labels.unique().tolist():
        idx = torch.nonzero(data.labels == c).flatten().numpy()
        keep.append(np.sort(rng.choice(idx, size=min(per_class, len(idx)), replace=False)))
    return data.subset(torch.from_numpy(np.sort(np.concatenate(keep))))


def split_by_class(data: LabelledImages, order: List[int], sizes: List[int]) -> List[LabelledImages]:
    """Relabel to positions in `order`, then cut into experiences of `sizes` classes each. Classes not in `order`
    (a protocol cut to some of a dataset's classes) are left out."""
    top = max(order + ([int(data.labels.max())] if len(data.labels) else []))
    rank = torch.full((top + 1,), -1, dtype=torch.long)
    rank[torch.tensor(order)] = torch.arange(len(order))
    labels = rank[data.labels]
    parts, start = [], 0
    for n in sizes:
        mask = (labels >= start) & (labels < start + n)
        parts.append(LabelledImages(data.images[mask], labels[mask]))
        start += n
    return parts


DEFAULT_TEMPLATES = ["a photo of a {c}."]
Spec = Dict[str, Any]  # a dataset spec: {adapter: <format>, <the format's keys>}


@dataclass
class HeldoutParams:
    """Parameters every builder over real datasets takes: held-out sets and subsampling."""

    zeroshot: Dict[str, Spec] = field(default_factory=dict)  # name -> labelled dataset spec (+ templates, split)
    retrieval: Dict[str, Spec] = field(default_factory=dict)  # name -> captioned dataset spec (+ folds)
    reference: Optional[Spec] = None  # outside data for methods that use it: pairs, or images and sentences
    references: Dict[str, Spec] = field(default_factory=dict)  # method name -> its own reference set, over `reference`
    train_per_class: Optional[PositiveInt] = None  # subsample each class (fixed by subsample_seed)
    test_per_class: Optional[PositiveInt] = None
    subsample_seed: Annotated[int, at_least(0)] = 0


def heldout_sets(params: Dict[str, Any], data_root: Optional[str]) -> Dict[str, Any]:
    zeroshot = {}
    for name, spec in (params.get("zeroshot") or {}).items():
        data, names = load_labelled(spec, spec.get("split", "test"), data_root, f"zeroshot.{name}")
        zeroshot[name] = ZeroShotSet(data, names, list(spec.get("templates", DEFAULT_TEMPLATES)))
    retrieval = {name: load_captioned(spec, data_root) for name, spec in (params.get("retrieval") or {}).items()}
    reference = load_reference(params["reference"], data_root) if params.get("reference") else None
    return {"zeroshot_sets": zeroshot, "retrieval_sets": retrieval, "reference": reference}


REFERENCE_PARTS = ("images", "sentences")


def reference_parts(ref: Spec, where: str = "reference") -> Dict[str, Spec]:
    """A reference set's dataset specs by role. A dataset spec (it has an `adapter`) is image-caption pairs:
    {"pairs": spec}. A mapping of `images:` and/or `sentences:` dataset specs takes its images from one
    source and its sentences from another (ZSCL on MTIL: ImageNet's train images, Conceptual Captions'
    sentences). Any of these specs may hold `subset: {count: N, seed: S}`: a fixed draw of N items."""
    if not isinstance(ref, dict) or not ref:
        raise ClipbenchError(f"{where}: a reference set is a dataset spec of image-caption pairs (with `adapter`) "
                             "or a mapping of `images:` and `sentences:` dataset specs")
    if "adapter" in ref:
        return {"pairs": ref}
    unknown = [str(k) for k in ref if k not in REFERENCE_PARTS]
    if unknown:
        raise ClipbenchError(f"{where}: unknown key '{unknown[0]}' in a reference set; it holds `adapter` (image-caption "
                             f"pairs) or {' and '.join(f'`{k}:`' for k in REFERENCE_PARTS)} dataset specs")
    return {k: v for k, v in ref.items() if v}


def subset_index(n: int, spec: Spec, what: str) -> Optional[torch.Tensor]:
    """Sorted positions of the spec's `subset: {count, seed}` among `n` items (None: all of them)."""
    sub = spec.get("subset")
    if sub is None:
        return None
    count, seed = (sub.get("count"), sub.get("seed", 0)) if isinstance(sub, dict) else (None, None)
    if (not isinstance(count, int) or isinstance(count, bool) or count < 1 or not isinstance(seed, int)
            or set(sub) - {"count", "seed"}):
        raise ClipbenchError(f"{what}: subset must be {{count: N >= 1, seed: S}}, got {sub!r}")
    if count >= n:
        return None
    return torch.from_numpy(np.sort(np.random.default_rng(seed).choice(n, count, replace=False)))


def _images_of(spec: Spec, data_root: Optional[str], what: str):
    """The images of any labelled or captioned dataset spec (labels and captions dropped), subset applied."""
    fmt = get_format(spec)
    if fmt.labelled is not None:
        images = load_labelled(spec, spec.get("split", "train"), data_root)[0].images
    else:
        images = load_captioned(spec, data_root).images
    index = subset_index(len(images), spec, what)
    return images if index is None else images[index]


def load_reference(ref: Spec, data_root: Optional[str], where: str = "reference") -> CaptionedImages:
    """A reference set as `CaptionedImages`: pairs keep `caption_image`; images and sentences from separate
    sources have `caption_image` None (a set of sentences only has no images; one of images only, no sentences)."""
    parts = reference_parts(ref, where)
    if "pairs" in parts:
        cap = load_captioned(parts["pairs"], data_root)
        index = subset_index(len(cap.captions), parts["pairs"], where)
        if index is None:
            return cap
        owners = cap.caption_image[index]
        kept, renumber = owners.unique(return_inverse=True)
        return CaptionedImages(cap.images[kept], [cap.captions[i] for i in index.tolist()], renumber)
    images = (_images_of(parts["images"], data_root, f"{where}.images") if "images" in parts
              else torch.zeros((0, 3, 1, 1), dtype=torch.uint8))
    sentences: List[str] = []
    if "sentences" in parts:
        spec = parts["sentences"]
        fmt = get_format(spec)
        if fmt.captioned is None:
            raise ClipbenchError(f"{where}.sentences: format '{fmt.name}' gives no captions; use one of "
                                 f"{', '.join(n for n in FORMATS.names() if FORMATS.get(n).captioned)}")
        captions = fmt.captioned(spec, data_root).captions
        index = subset_index(len(captions), spec, f"{where}.sentences")
        sentences = list(captions) if index is None else [captions[i] for i in index.tolist()]
    return CaptionedImages(images, sentences, None)


def experience_sizes(n_classes: int, params: Dict[str, Any], what: str = "the stream has") -> List[int]:
    """`increments: [..]`, or `initial` + `increment`, or `n_experiences` equal parts."""
    problem = experience_sizes_problem(n_classes, params, what)
    if problem:
        key = next(k for k in ("increments", "increment", "n_experiences") if params.get(k) is not None or k == "n_experiences")
        raise BadValue(key, problem)
    return _sizes(n_classes, params)


def _sizes(n_classes: int, params: Dict[str, Any]) -> List[int]:
    if params.get("increments") is not None:
        return [int(x) for x in params["increments"]]
    if params.get("increment") is not None:
        first = int(params.get("initial") or params["increment"])
        return [first] + [int(params["increment"])] * (max(n_classes - first, 0) // int(params["increment"]))
    n = int(params.get("n_experiences") or 1)
    return [n_classes // n] * n


def experience_sizes_problem(n_classes: int, params: Dict[str, Any], what: str) -> Optional[str]:
    """Why the experiences of `params` do not cover `n_classes` classes exactly, with the fix (None: they do).
    `what` says where the count comes from ("class_order lists", "the target has")."""
    sizes = _sizes(n_classes, params)
    if sum(sizes) == n_classes and all(n >= 1 for n in sizes):
        return None
    if params.get("increments") is not None:
        return (f"increments {sizes} add up to {sum(sizes)} classes, but {what} {n_classes}: make them add up to "
                f"{n_classes}")
    if params.get("increment") is not None:
        return (f"{sizes[0]} classes, then steps of {params['increment']}, do not cover the {n_classes} classes "
                f"{what}: pick initial and increment so that initial + k x increment = {n_classes}, or give increments")
    n = int(params.get("n_experiences") or 1)
    return (f"n_experiences {n} does not split the {n_classes} classes {what} into equal parts: use a divisor of "
            f"{n_classes}, or give increments (a list of class counts adding up to {n_classes})")


def heldout_specs(params: Dict[str, Any]) -> List[Tuple[str, Dict[str, Any]]]:
    specs = [(f"zero-shot {k}", v) for k, v in (params.get("zeroshot") or {}).items()]
    specs += [(f"retrieval {k}", v) for k, v in (params.get("retrieval") or {}).items()]
    sets = [("reference", params["reference"])] if params.get("reference") else []
    sets += [(f"reference of {m}", ref) for m, ref in sorted((params.get("references") or {}).items()) if ref]
    for label, ref in sets:
        specs += [(label if role == "pairs" else f"{label}: {role}", spec)
                  for role, spec in reference_parts(ref, label).items()]
    return specs


def asset_report(specs: List[Tuple[str, Dict[str, Any]]], data_root: Optional[str]) -> List[Dict[str, Any]]:
    """Every file or folder the dataset specs read: where, whether found, how to get it, and (`reads`) the
    files and folders whose contents the data fingerprint covers. A file that is there but names files that
    are not (a list's images) is not found, and `how` says which."""
    rows = []
    for label, spec in specs:
        fmt = get_format(spec)
        reads = [str(p) for p in read_paths(spec, data_root)]
        inside = fmt.unreadable(spec, data_root) if fmt.unreadable is not None else None
        for key, value in spec_paths(spec):
            path = resolve(data_root, value)
            found = path.exists() and not inside
            rows.append({"asset": label, "key": key, "path": str(path), "found": found,
                         "how": inside if path.exists() and inside else spec.get("how", fmt.how), "reads": reads,
                         "suffixes": sorted(fmt.folder_suffixes) if fmt.folder_suffixes is not None else None})
            inside = None if path.exists() else inside  # said once
    return rows
