"""Images reach an open_clip model exactly as its own `preprocess_val` prepares them.

The reference is open_clip's own transform from `create_model_and_transforms`, applied to the same
files: clipbench's decoded uint8 must equal it bit for bit (the transform's output before `Normalize`,
times 255) and its model input to 1e-6, on every PIL mode of the real Debian files, on JPEG, CMYK and
16-bit files made from them, on CIFAR's raw arrays and on torchvision's MNIST.
"""

from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import Compose

from clipbench.decode import decode
from clipbench.preprocess import from_open_clip_cfg
from clipbench.model_input import to_model_input
from clipbench.streams import FileReader, ImageSources
from clipbench.protocols.formats import cifar, torchvision_dataset
from real_images import by_mode, reencoded, sample_files


@pytest.fixture(scope="module")
def reference():
    """ViT-B-32's own eval transform (random weights: only the transform matters here) and its config."""
    import open_clip

    model, _, preprocess_val = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    return preprocess_val, dict(model.visual.preprocess_cfg)


def _compare(images, preprocess_val, cfg, ours: torch.Tensor) -> None:
    until_tensor = Compose(preprocess_val.transforms[:-1])  # everything but Normalize
    model_input = to_model_input(ours, cfg["size"], cfg["mean"], cfg["std"])
    for k, img in enumerate(images):
        expected_u8 = (until_tensor(img) * 255).round().to(torch.uint8)
        assert torch.equal(ours[k], expected_u8), f"image {k} ({getattr(img, 'filename', '')}) differs at the uint8 stage"
        expected = preprocess_val(img)
        assert (model_input[k] - expected).abs().max().item() <= 1e-6


def test_every_pil_mode_of_the_debian_files_matches_open_clip(reference):
    preprocess_val, cfg = reference
    modes = by_mode()
    assert {("RGBA", False), ("LA", False), ("L", False), ("RGB", False), ("P", True), ("P", False)} <= set(modes)
    files = sample_files()
    ours = decode(ImageSources(FileReader(), files), from_open_clip_cfg(cfg))
    images = []
    for path in files:
        with Image.open(path) as img:
            img.load()
            images.append(img.copy())
    _compare(images, preprocess_val, cfg, ours)


def test_jpeg_cmyk_and_16_bit_files_match_open_clip(reference, tmp_path):
    preprocess_val, cfg = reference
    files = reencoded(tmp_path)
    ours = decode(ImageSources(FileReader(), files), from_open_clip_cfg(cfg))
    images = [Image.open(p) for p in files]
    assert {"RGB", "CMYK", "I;16"} <= {img.mode for img in images}
    _compare(images, preprocess_val, cfg, ours)


def test_cifar_arrays_are_upsampled_as_open_clip_would(reference, tmp_path):
    """CIFAR's 32-px arrays go through PIL and the model's transform (torchvision's CIFAR hands PIL images
    to open_clip), not a tensor kernel."""
    preprocess_val, cfg = reference
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(6, 3, 32, 32), dtype=np.uint8)
    for split in ("train", "test"):
        with open(folder / split, "wb") as fh:
            pickle.dump({"data": pixels.reshape(6, -1), "fine_labels": [0, 1, 2, 0, 1, 2]}, fh)
    with open(folder / "meta", "wb") as fh:
        pickle.dump({"fine_label_names": ["apple", "aquarium_fish", "baby"]}, fh)
    data, names = cifar.read(tmp_path, "train", 100)
    ours = decode(data.images, from_open_clip_cfg(cfg))
    _compare([Image.fromarray(p.transpose(1, 2, 0)) for p in pixels], preprocess_val, cfg, ours)


def test_torchvision_mnist_matches_open_clip(reference, tmp_path):
    import torchvision.datasets as tvd

    preprocess_val, cfg = reference
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images = np.random.default_rng(1).integers(0, 256, size=(4, 28, 28), dtype=np.uint8)
    for split in ("train", "t10k"):
        (raw / f"{split}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, 4, 28, 28) + images.tobytes())
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, 4) + bytes([3, 1, 4, 1]))
    data, _ = torchvision_dataset.read("MNIST", tmp_path, "test")
    ours = decode(data.images, from_open_clip_cfg(cfg))
    reference_images = [tvd.MNIST(str(tmp_path), train=False)[k][0] for k in range(4)]
    _compare(reference_images, preprocess_val, cfg, ours)


@pytest.mark.parametrize("cfg_change", [{"resize_mode": "squash"}, {"resize_mode": "longest", "fill_color": 0},
                                        {"interpolation": "bilinear"}, {"size": (160, 128)}])
def test_other_preprocess_configs_match_open_clip(cfg_change):
    """Models whose config asks for another resize rule, interpolation or a non-square input."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    cfg = {**dict(PreprocessCfg().__dict__), **cfg_change}
    preprocess_val = image_transform_v2(PreprocessCfg(**cfg), is_train=False)
    files = [p for key in sorted(by_mode()) for p in by_mode()[key][:1]]
    ours = decode(ImageSources(FileReader(), files), from_open_clip_cfg(cfg))
    size = cfg["size"] if isinstance(cfg["size"], tuple) else (cfg["size"],) * 2
    assert tuple(ours.shape[-2:]) == tuple(size)
    _compare([Image.open(p) for p in files], preprocess_val, {**cfg, "size": size}, ours)
