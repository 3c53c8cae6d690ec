"""Dataset formats: one small module per on-disk format, each registered under the name protocol files
use as a dataset spec's `adapter`.

A dataset spec is a mapping in a protocol file: `{adapter: <format>, <its keys>...}`, paths relative to
the run's `data_root`. A format reads its files and lists the images without decoding them
(`ImageSources`); the runner decodes them with the model's own preprocessing. Adding a format is one
new file here (and its test): write `labelled` and/or `captioned`, then `register_format(Format(...))`.

| format | module | what it reads |
|---|---|---|
| `cifar` | cifar.py | CIFAR-10/100 python pickles, as torchvision downloads them |
| `image_folder` | image_folder.py | one folder per class: ImageNet train, EuroSAT, most MTIL sets |
| `imagenet_val` | imagenet_val.py | a flat image folder plus a class-index file (LOC_val_solution.csv) |
| `coco_crops` | coco_crops.py | COCO-2014 object crops from `instances_<split>2014.json` |
| `karpathy_captions` | karpathy_captions.py | Flickr30k / COCO captions through the Karpathy-split JSON |
| `csv`, `jsonl` | lists.py | your own lists: image with label, or image with caption |
| `torchvision` | torchvision_dataset.py | any torchvision classification dataset by class name |
| `coop_split` | coop_split.py | CoOp's fixed splits (`split_zhou_<Name>.json`) beside an image folder: X-TAIL, few-shot sets |
| `tinyimagenet` | tinyimagenet.py | Tiny ImageNet as its zip unpacks (wnids.txt, train/<wnid>/images, val_annotations.txt) |
| `lamda_folder` | lamda_folder.py | the LAMDA CIL archives (PROOF, C3Box): train/ and test/ read as torchvision's ImageFolder |
| `objectnet_list` | objectnet_list.py | the authors' ObjectNet train/test lists over ObjectNet 1.0's images |
| `imagenet_r_split` | imagenet_r_split.py | ImageNet-R cut by RAPF's imgr_train_test_split.txt (pinned by git blob id) |
| `subset_list` | subset_list.py | continuum's `<path> <label>` subset lists (ImageNet-100 of RAPF / MG-CLIP) |
| `conceptual_captions` | conceptual_captions.py | Conceptual Captions as ZSCL's gather_cc.py writes it (`title<TAB>filepath`) |
| `flowers102` | flowers102.py | Oxford 102 Flowers in torchvision's layout (jpg/, imagelabels.mat, setid.mat) |
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Tuple

from clipbench.errors import ClipbenchError, MissingData
from clipbench.registry import Registry
from clipbench.streams import CaptionedImages, LabelledImages

Spec = Dict[str, Any]
Labelled = Tuple[LabelledImages, List[str]]
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".gif"}


@dataclass(frozen=True)
class Format:
    """One on-disk dataset format.

    - `labelled(spec, split, data_root) -> (LabelledImages, class names)`: a split of a labelled dataset;
    - `captioned(spec, data_root) -> CaptionedImages`: image-caption pairs;
    - `path_keys`: the spec keys that hold paths (what `--dry-run` checks and the data fingerprint reads);
    - `how`: how to get the data, said when it is missing;
    - `fetch(spec, data_root)`: download when the spec says `download: true` (optional);
    - `read_paths(spec, data_root)`: the files and folders the format reads, when narrower than `path_keys`;
    - `keys`: the other spec keys it reads (besides `COMMON_KEYS` and `path_keys`);
    - `split_keys`: suffixes of keys it reads per split, e.g. `_root` for `train_root` and `test_root`;
    - `types`: the type and value rule of its keys (`clipbench.protocols.values`), a split key by its suffix
      (`"_limit"`), checked where a protocol file or setting gives them;
    - `unreadable(spec, data_root)`: what is wrong inside files that exist (a list naming images that are not
      there), for `--dry-run`; None when nothing is.
    - `folder_suffixes`: the file name endings it reads inside its folders (an image folder: images), so the
      data fingerprint counts only those; None: every file counts.
    """

    name: str
    how: str
    path_keys: Tuple[str, ...]
    labelled: Optional[Callable[[Spec, str, Optional[str]], Labelled]] = None
    captioned: Optional[Callable[[Spec, Optional[str]], CaptionedImages]] = None
    fetch: Optional[Callable[[Spec, Optional[str]], None]] = None
    read_paths: Optional[Callable[[Spec, Optional[str]], List[Path]]] = None
    keys: Tuple[str, ...] = ()
    split_keys: Tuple[str, ...] = ()
    types: Dict[str, Any] = field(default_factory=dict)
    unreadable: Optional[Callable[[Spec, Optional[str]], Optional[str]]] = None
    folder_suffixes: Optional[FrozenSet[str]] = None


FORMATS: Registry[Format] = Registry("dataset format", "clipbench.protocols.formats")


def register_format(fmt: Format) -> Format:
    """Make `fmt` available to protocol files as `adapter: <fmt.name>`."""
    return FORMATS.register(fmt.name, fmt)


def get_format(spec: Spec) -> Format:
    if "adapter" not in spec:
        raise ClipbenchError(f"dataset spec {spec} names no `adapter` (one of {', '.join(FORMATS.names())})")
    return FORMATS.get(spec["adapter"])


# keys any dataset spec may hold, read around its format (`builders/dataset_specs.py`, the builders)
COMMON_KEYS = ("adapter", "how", "source", "download", "names", "templates", "split", "folds", "test_fraction",
               "random_split", "whole_split", "subset")  # subset: {count, seed}, a fixed draw from a reference set
SPLITS = ("train", "test", "val", "all")  # the splits a per-split key may name (and the spec's own `split`)


def _common_types() -> Dict[str, Any]:
    from ..values import Fraction, PositiveInt, RandomSplit, Templates

    return {"adapter": str, "how": str, "source": str, "download": bool, "names": List[Any], "templates": Templates,
            "split": str, "folds": PositiveInt, "test_fraction": Fraction, "random_split": RandomSplit, "whole_split": str,
            "subset": Dict[str, Any]}


def check_spec(spec: Spec, where: Callable[[str], str]) -> None:
    """Every key of a dataset spec is one its format reads: a typo (`test_fration`) would otherwise be
    ignored and the run would measure other data than the file says. One line naming the place of the
    key (`where(key)`, e.g. its file and line), the key and the nearest known key."""
    from clipbench.types import check, unknown_key

    try:
        fmt = get_format(spec)
    except ClipbenchError as err:
        raise ClipbenchError(f"{where('adapter')}: {err}") from None
    splits = SPLITS + ((str(spec["split"]),) if "split" in spec else ())
    known = [*COMMON_KEYS, *fmt.path_keys, *fmt.keys, *(s + suffix for s in splits for suffix in fmt.split_keys)]
    for key in spec:
        if key not in known:
            raise unknown_key(str(key), known, f"a dataset spec of format '{fmt.name}'", where(str(key)))
    types = {**_common_types(), **fmt.types}
    for key, value in spec.items():
        suffix = next((s for s in fmt.split_keys if str(key).endswith(s) and s in types), None)
        annotation = types.get(str(key), types.get(suffix) if suffix else None)
        if annotation is not None:
            check(str(key), value, annotation, where(str(key)))


def check_dataset_specs(params: Dict[str, Any], where: Callable[[Tuple[str, ...]], str]) -> None:
    """`check_spec` on every dataset spec inside builder params; `where(key path)` names a key's place
    (the path from the params down to the key, e.g. ("zeroshot", "other", "templats"))."""
    for path, spec in _dataset_specs_in(params):
        check_spec(spec, lambda key, path=path: where((*path, key)))


def _dataset_specs_in(value: Any, path: Tuple[str, ...] = ()) -> List[Tuple[Tuple[str, ...], Spec]]:
    """(key path, spec) of every dataset spec (a mapping with an `adapter`) inside builder params."""
    if isinstance(value, dict):
        found = [(path, value)] if "adapter" in value else []
        return found + [hit for k, v in value.items() if k != "adapter" for hit in _dataset_specs_in(v, path + (str(k),))]
    if isinstance(value, list):
        return [hit for i, v in enumerate(value) for hit in _dataset_specs_in(v, path + (str(i),))]
    return []


def resolve(data_root: Optional[str], value: Any) -> Path:
    """A spec path: absolute as given, else relative to `data_root`."""
    p = Path(str(value)).expanduser()
    return p if p.is_absolute() or data_root is None else Path(data_root).expanduser() / p


def missing(what: str, path: Path, how: str) -> MissingData:
    return MissingData(f"{what} not found at {path}: {how}")


def require_dir(path: Path, what: str, how: str) -> Path:
    if not path.is_dir():
        raise missing(what, path, how)
    return path


def require_file(path: Path, what: str, how: str) -> Path:
    if not path.is_file():
        raise missing(what, path, how)
    return path


def spec_paths(spec: Spec) -> List[Tuple[str, str]]:
    """(key, value) of every path in a spec: the format's path keys, and any `<split>_root` / `<split>_list`."""
    keys = get_format(spec).path_keys
    return [(k, str(spec[k])) for k in keys if k in spec] + \
           [(k, str(spec[k])) for k in spec if k.endswith(("_root", "_list")) and k not in keys]


def read_paths(spec: Spec, data_root: Optional[str]) -> List[Path]:
    """The files and folders a spec reads (for the data fingerprint)."""
    fmt = get_format(spec)
    if fmt.read_paths is not None:
        return fmt.read_paths(spec, data_root)
    return [resolve(data_root, value) for _, value in spec_paths(spec)]


def download_with(call: Callable[[], Any], where: Path) -> None:
    """Run a torchvision download; offline or refused, one clear error naming where the data should be."""
    try:
        call()
    except Exception as err:  # offline, or the server refused
        raise missing("dataset", where, f"torchvision could not download it ({type(err).__name__}: {err}); "
                      "fetch it on a machine with internet and copy it there") from None


def class_ids(spec: Spec, data_root: Optional[str]) -> Optional[List[str]]:
    """A class subset, in order: `class_ids: [...]` or `class_ids_file` (one id per line), else None (all)."""
    if "class_ids" in spec:
        return [str(c) for c in spec["class_ids"]]
    if "class_ids_file" in spec:
        path = require_file(resolve(data_root, spec["class_ids_file"]), "class-id list", "one class id (e.g. a WordNet id) per line")
        return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    return None
