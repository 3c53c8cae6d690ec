"""The containers a protocol builder returns: labelled images, captioned images, and the streams.

Images are held pre-decoded as uint8 tensors [N, 3, H, W]; they are resized and normalised for a
model in batches (`to_model_input`), never decoded per sample inside training loops.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

KINDS = ("class_incremental", "task_incremental")


@dataclass
class LabelledImages:
    """Images with one integer label each (labels index the owner's class-name list)."""

    images: torch.Tensor  # uint8 [N, 3, H, W]
    labels: torch.Tensor  # int64 [N]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be uint8 [N, 3, H, W], got {self.images.dtype} {tuple(self.images.shape)}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, mask_or_index: torch.Tensor) -> "LabelledImages":
        return LabelledImages(self.images[mask_or_index], self.labels[mask_or_index])

    @staticmethod
    def concat(parts: List["LabelledImages"]) -> "LabelledImages":
        """One set from several; images are resized to the first part's size when they differ."""
        size = parts[0].images.shape[-2:]
        images = [p.images if p.images.shape[-2:] == size else
                  F.interpolate(p.images.float(), size=tuple(size), mode="bilinear", antialias=True).round().clamp(0, 255).to(torch.uint8)
                  for p in parts]
        return LabelledImages(torch.cat(images), torch.cat([p.labels for p in parts]))


@dataclass
class CaptionedImages:
    """Images with one or more captions each; `caption_image[k]` is the image of caption k."""

    images: torch.Tensor  # uint8 [N, 3, H, W]
    captions: List[str]
    caption_image: torch.Tensor  # int64 [M]
    folds: int = 1  # score recall on this many equal folds of images and average (COCO 5k as 5 x 1k)

    def __post_init__(self) -> None:
        if len(self.captions) != len(self.caption_image):
            raise ValueError("captions and caption_image differ in length")


@dataclass
class ZeroShotSet:
    """A held-out classification set, scored zero-shot with its own class names and templates."""

    data: LabelledImages
    class_names: List[str]
    templates: List[str]


@dataclass
class Streams:
    """Everything one protocol run needs.

    Classes are numbered in the protocol's class order, so experience k holds the contiguous
    class ids `experience_classes[k]`; labels in `train`/`test` use those ids.
    """

    kind: str
    class_names: List[str]
    templates: List[str]
    train: List[LabelledImages]
    test: List[LabelledImages]
    experience_classes: List[List[int]]
    zeroshot_sets: Dict[str, ZeroShotSet] = field(default_factory=dict)
    retrieval_sets: Dict[str, CaptionedImages] = field(default_factory=dict)
    train_template: str = ""
    # outside image-text data that replay/distillation methods may use (A-GEM's LAION subset, ZSCL's
    # reference set); never used for evaluation
    reference: Optional[CaptionedImages] = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if not self.train_template:
            self.train_template = self.templates[0]
        expected = 0
        for classes in self.experience_classes:
            if classes != list(range(expected, expected + len(classes))):
                raise ValueError("experience classes must be contiguous ids in class order")
            expected += len(classes)

    @property
    def n_experiences(self) -> int:
        return len(self.train)

    def scored_classes(self, row: int, exp: int) -> Tuple[int, int]:
        """The class-id range [lo, hi) over which experience `exp` is scored in accuracy-matrix row `row`.

        Row 0 is before training; row i follows training on experiences 0..i-1. Class-incremental:
        every class seen so far, counting experience `exp` itself (so rows before an experience
        score it against the classes known up to it). Task-incremental: the task's own classes.
        """
        if self.kind == "task_incremental":
            classes = self.experience_classes[exp]
            return classes[0], classes[-1] + 1
        last = max(row - 1, exp)
        return 0, self.experience_classes[last][-1] + 1


def to_model_input(images: torch.Tensor, size: Tuple[int, int], mean: Sequence[float], std: Sequence[float],
                   out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> normalised float [B, 3, *size], resized in one batched call.

    Scaling by 1/255 and normalising are folded into one multiply and one add, in place (resizing
    is linear, so it may come first). `torch.addcmul` with a broadcast input was 25x slower here.
    `out`, a float32 tensor shaped like `images`, is written into when no resizing is needed: a
    batch loop reuses one buffer instead of allocating fresh memory (and faulting it in) per batch.
    """
    resize = tuple(images.shape[-2:]) != tuple(size)
    if out is not None and not resize:
        x = out.copy_(images)
    else:
        x = images.to(torch.float32, copy=True)  # a copy even of float input: it is changed in place below
    if resize:
        x = F.interpolate(x, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    scale = 1.0 / (255.0 * std_t)
    shift = -torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1) / std_t
    return x.mul_(scale).add_(shift)
