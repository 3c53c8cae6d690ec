"""Batched train-time augmentation gives, image for image, what torchvision's per-image pipeline gives."""

import pytest
import torch

from clipbench.augment import Augmenter, _transform


def per_image(recipe: str, images: torch.Tensor, seed: int) -> torch.Tensor:
    """The former implementation: the recipe's torchvision pipeline applied to one image after another,
    every draw from the CPU generator seeded with the batch's seed."""
    transform = _transform(recipe, *images.shape[-2:])
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return torch.stack([transform(image) for image in images])


@pytest.mark.parametrize("recipe", ["clclip", "zscl"])
@pytest.mark.parametrize("side", [28, 33])
def test_batched_augmentation_equals_per_image(recipe, side):
    images = torch.randint(0, 256, (23, 3, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(side))
    batched = Augmenter(recipe, seed=7)
    reference = torch.Generator().manual_seed(7)  # the augmenter's own: one batch seed per call
    for _ in range(3):
        seed = int(torch.randint(2**62, (), generator=reference))
        expected = per_image(recipe, images, seed)
        got = batched(images)
        assert got.dtype == torch.uint8 and got.shape == images.shape
        assert torch.equal(got, expected)
    assert not torch.equal(batched(images), images)  # it does augment


def test_augmentation_leaves_global_generator_alone():
    torch.manual_seed(3)
    before = torch.get_rng_state()
    Augmenter("clclip", seed=1)(torch.zeros(4, 3, 16, 16, dtype=torch.uint8))
    assert torch.equal(torch.get_rng_state(), before)
