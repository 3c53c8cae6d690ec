"""Train-time augmentation recipes (`train.augment`), applied to each training batch of uint8 images.

Images reach training pre-decoded: each was resized (shorter side) to the protocol's size and
centre-cropped once, when the dataset was read (`clipbench.decode`). The references augment the
decoded PIL image instead. Each recipe here is the reference's train transform re-expressed on the
stored square image (same relative geometry), with torchvision's tensor transforms (`transforms.v2`),
one random draw per image, as the references' per-sample datasets do:

- `clclip`: the founding paper's code (yxding95/CL-CLIP at 877a69f, `data.py`, the `OST` and `MST`
  train transforms): Resize(256, bicubic), RandomCrop(224), RandomHorizontalFlip. Here: the stored
  side s is resized to round(s x 256 / 224), a random s x s crop is taken and flipped with p = 0.5.
- `zscl`: ZSCL (Thunderbeee/ZSCL at b96e714, `mtil/clip/clip.py` and `cil/clip/clip.py`,
  `_transform(n_px, is_train=True)`): RandomResizedCrop(n_px, scale=(0.9, 1.0), bicubic), no flip.
  Here n_px is the stored side.

Departures, for both: the crop comes from the centre square the dataset kept, not the whole
image, so no crop reaches beyond it along the longer side; the image is resampled from its stored
pixels (the references resample the original once), so a little sharper detail is lost; bicubic is
torch's (a = -0.75) where PIL's is a = -0.5. Not reproduced: ZSCL's CIL code evaluates with its
train transform (`cil/main.py` passes `model.transforms`, the train transform, to the test set);
clipbench evaluates on the stored images, never augmented. On `clipbench-mini`, whose frozen towers
cache features by pixel content, augmented training images miss that cache (and grow it).

Determinism: each experience's augmenter owns a generator, seeded by one draw from torch's global
generator (which the runner seeds per run and experience) when the experience starts; each batch
draws one seed from it, and torchvision draws that batch's parameters from the CPU generator forked
to that seed, so augmenting never moves the global random state (the data order) further.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

import torch

RECIPES: Dict[str, str] = {
    "none": "no augmentation",
    "clclip": "CL-CLIP's: resize x 256/224 (bicubic), random crop back, horizontal flip",
    "zscl": "ZSCL's: RandomResizedCrop(scale=(0.9, 1.0), bicubic)",
}


def _transform(recipe: str, height: int, width: int) -> Callable[[torch.Tensor], torch.Tensor]:
    from torchvision.transforms import v2  # lazily: torchvision is heavy to import

    bicubic = v2.InterpolationMode.BICUBIC
    if recipe == "clclip":
        return v2.Compose([v2.Resize(round(min(height, width) * 256 / 224), interpolation=bicubic, antialias=True),
                           v2.RandomCrop((height, width)), v2.RandomHorizontalFlip(p=0.5)])
    if recipe == "zscl":
        return v2.RandomResizedCrop((height, width), scale=(0.9, 1.0), interpolation=bicubic, antialias=True)
    raise ValueError(f"unknown augmentation recipe {recipe!r}")


class Augmenter:
    """Applies one recipe to uint8 batches [B, 3, H, W] (on `device`), a fresh draw per image."""

    def __init__(self, recipe: str, seed: int, device: str = "cpu"):
        self.recipe, self.device = recipe, device
        self.generator = torch.Generator().manual_seed(seed)
        self._transforms: Dict[tuple, Callable] = {}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        size = tuple(images.shape[-2:])
        if size not in self._transforms:
            self._transforms[size] = _transform(self.recipe, *size)
        transform = self._transforms[size]
        batch_seed = int(torch.randint(2**62, (), generator=self.generator))
        with torch.random.fork_rng(devices=[]):  # the CPU generator only; CUDA's is left alone
            torch.default_generator.manual_seed(batch_seed)
            return torch.stack([transform(image) for image in images])


def make_augmenter(recipe: str, device: str = "cpu") -> Optional[Augmenter]:
    """The augmenter of one experience (None for `none`), seeded from torch's global generator,
    which the runner seeds per run and experience."""
    if recipe == "none":
        return None
    if recipe not in RECIPES:
        raise ValueError(f"unknown augmentation recipe {recipe!r}")
    return Augmenter(recipe, int(torch.randint(2**62, ())), device)
