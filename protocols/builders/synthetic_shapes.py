"""Synthetic coloured shapes, made in memory: the data of the `tiny` suite used by the tests.

Target stream: classify the colour. Held-out zero-shot set: classify the shape. Retrieval set:
each image captioned twice ("a red circle", "a circle coloured red"). Deterministic for a seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Dict, List, Literal, Optional, Tuple

import numpy as np
import torch

from clipbench.streams import CaptionedImages, LabelledImages, Streams, ZeroShotSet

from ..catalog import register_builder
from ..values import PositiveInt, UniqueNames, at_least, equal_parts_problem

COLOURS = {
    "red": (220, 30, 30), "green": (30, 190, 40), "blue": (40, 60, 230), "yellow": (235, 220, 40),
    "magenta": (220, 40, 220), "cyan": (40, 220, 230), "orange": (245, 140, 20), "white": (245, 245, 245),
}
SHAPES = ["circle", "square", "triangle", "cross"]


@dataclass
class ShapesParams:
    """The `synthetic_shapes` builder's parameters (a protocol file's `params:`)."""

    colours: UniqueNames = field(default_factory=lambda: list(COLOURS)[:6])  # target classes, in class order
    n_experiences: PositiveInt = 3
    train_per_class: PositiveInt = 24
    test_per_class: PositiveInt = 12
    heldout_per_class: PositiveInt = 12  # zero-shot shapes set, images per shape
    retrieval_images: PositiveInt = 24
    reference_pairs: PositiveInt = 24
    image_size: Annotated[int, at_least(8)] = 32
    kind: Literal["class_incremental", "task_incremental"] = "class_incremental"

    @staticmethod
    def check(params: Dict[str, Any]) -> Optional[Tuple[str, str]]:
        """(key, problem) of values that do not fit together (None: fine)."""
        colours = params.get("colours", list(COLOURS)[:6])
        unknown = [c for c in colours if c not in COLOURS]
        if unknown:
            return "colours", f"{unknown[0]!r} is not a colour this builder draws; use some of {', '.join(COLOURS)}"
        problem = equal_parts_problem(len(colours), params.get("n_experiences", 3))
        return ("n_experiences", problem) if problem else None


def _draw(rng: np.random.Generator, colour: str, shape: str, size: int) -> np.ndarray:
    """One uint8 [3, size, size] image: a noisy dark background with one filled shape."""
    img = rng.integers(0, 60, size=(3, size, size)).astype(np.float32)
    r = rng.uniform(0.22, 0.38) * size
    cx, cy = rng.uniform(r, size - r, size=2)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    dx, dy = x - cx, y - cy
    if shape == "circle":
        mask = dx**2 + dy**2 <= r**2
    elif shape == "square":
        mask = (np.abs(dx) <= r * 0.85) & (np.abs(dy) <= r * 0.85)
    elif shape == "triangle":
        mask = (dy <= r) & (dy >= -r) & (np.abs(dx) <= (dy + r) / 2)
    else:  # cross
        arm = r / 3
        mask = ((np.abs(dx) <= arm) & (np.abs(dy) <= r)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= r))
    rgb = np.array(COLOURS[colour], dtype=np.float32) + rng.normal(0, 12, size=3)
    img[:, mask] = rgb[:, None]
    return np.clip(img, 0, 255).astype(np.uint8)


def _images(rng: np.random.Generator, pairs: List[tuple], size: int) -> torch.Tensor:
    return torch.from_numpy(np.stack([_draw(rng, c, s, size) for c, s in pairs]))


@register_builder("synthetic_shapes", params=ShapesParams)
def build_synthetic_shapes(params: Dict[str, Any], data_root: Optional[str], seed: int) -> Streams:
    """params: `ShapesParams`."""
    p = ShapesParams(**params)
    rng = np.random.default_rng(seed)
    colours: List[str] = p.colours
    n_exp = p.n_experiences
    size = p.image_size
    per_exp = len(colours) // n_exp
    templates = ["a photo of something {c}.", "a {c} shape."]

    def labelled(colour_ids: List[int], per_class: int) -> LabelledImages:
        labels = [c for c in colour_ids for _ in range(per_class)]
        pairs = [(colours[c], SHAPES[rng.integers(len(SHAPES))]) for c in labels]
        return LabelledImages(_images(rng, pairs, size), torch.tensor(labels, dtype=torch.long))

    exp_classes = [list(range(k * per_exp, (k + 1) * per_exp)) for k in range(n_exp)]
    train = [labelled(cls, p.train_per_class) for cls in exp_classes]
    test = [labelled(cls, p.test_per_class) for cls in exp_classes]

    n_held = p.heldout_per_class
    held_labels = [s for s in range(len(SHAPES)) for _ in range(n_held)]
    held_pairs = [(list(COLOURS)[rng.integers(len(COLOURS))], SHAPES[s]) for s in held_labels]
    shapes_set = ZeroShotSet(
        LabelledImages(_images(rng, held_pairs, size), torch.tensor(held_labels, dtype=torch.long)),
        class_names=list(SHAPES), templates=["a photo of a {c}.", "a drawing of a {c}."],
    )

    n_ret = p.retrieval_images
    ret_pairs = [(list(COLOURS)[rng.integers(len(COLOURS))], SHAPES[rng.integers(len(SHAPES))]) for _ in range(n_ret)]
    captions = [text for c, s in ret_pairs for text in (f"a {c} {s}", f"a {s} coloured {c}")]
    caption_image = torch.arange(n_ret).repeat_interleave(2)
    retrieval = CaptionedImages(_images(rng, ret_pairs, size), captions, caption_image)

    n_ref = p.reference_pairs
    ref_pairs = [(list(COLOURS)[rng.integers(len(COLOURS))], SHAPES[rng.integers(len(SHAPES))]) for _ in range(n_ref)]
    reference = CaptionedImages(_images(rng, ref_pairs, size), [f"a {c} {s}" for c, s in ref_pairs], torch.arange(n_ref))

    return Streams(
        kind=p.kind, class_names=list(colours), templates=templates,
        train=train, test=test, experience_classes=exp_classes,
        zeroshot_sets={"shapes": shapes_set}, retrieval_sets={"shape_captions": retrieval}, reference=reference,
    )
