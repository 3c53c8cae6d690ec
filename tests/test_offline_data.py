"""The offline loaders on small files written in each real format."""

import gzip
import json
import struct

import numpy as np
import pytest
from PIL import Image

from clipbench.errors import ClipbenchError
from clipbench.protocols import offline


def write_idx(path, array):
    with gzip.open(path, "wb") as fh:
        fh.write(struct.pack(">HBB", 0, 0x08, array.ndim))
        fh.write(struct.pack(">" + "I" * array.ndim, *array.shape))
        fh.write(array.astype(np.uint8).tobytes())


def test_fashion_mnist_idx_round_trip(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels)
    x, y = offline.fashion_mnist("train", str(tmp_path))
    assert np.array_equal(x, images) and y.tolist() == [3, 1, 4, 1, 5]


def test_missing_fashion_mnist_names_package_and_path(tmp_path):
    with pytest.raises(ClipbenchError, match=f"{tmp_path}.*dataset-fashion-mnist"):
        offline.fashion_mnist("train", str(tmp_path))


def test_emoji_package_layout(tmp_path):
    img_dir = tmp_path / "img" / "google" / "64"
    img_dir.mkdir(parents=True)
    Image.new("RGBA", (64, 64), (255, 0, 0, 128)).save(img_dir / "1f600.png")
    meta = [{"name": "GRINNING FACE", "subcategory": "face-smiling", "image": "1f600.png", "has_img_google": True},
            {"name": "NO IMAGE", "subcategory": "x", "image": "none.png", "has_img_google": False}]
    (tmp_path / "emoji.json").write_text(json.dumps(meta))
    [e] = offline.emoji_list(str(tmp_path))
    assert (e.name, e.subcategory) == ("grinning face", "face-smiling")
    [img] = offline.decode_files([e.path], 32)
    # half-transparent red over white: red stays high, green/blue land half way
    assert img.shape == (3, 32, 32) and img[0].min() > 250 and 110 < int(img[1, 16, 16]) < 145


def test_missing_emoji_says_how_to_get_it(tmp_path):
    with pytest.raises(ClipbenchError, match="emoji-datasource-google@16.0.0"):
        offline.emoji_list(str(tmp_path / "nope"))


def test_tuxpaint_layout(tmp_path):
    (tmp_path / "animals" / "cats").mkdir(parents=True)
    Image.new("RGB", (40, 20), (0, 0, 255)).save(tmp_path / "animals" / "cats" / "cat.png")
    (tmp_path / "animals" / "cats" / "cat.txt").write_text("A cat sitting.\nfr.utf8=Un chat.\n")
    Image.new("RGB", (8, 8)).save(tmp_path / "animals" / "cats" / "nodesc.png")  # no .txt: skipped
    [s] = offline.tuxpaint_stamps(str(tmp_path))
    assert (s.caption, s.category, s.key) == ("A cat sitting.", "animals", "animals/cats/cat.png")
    [img] = offline.decode_files([s.path], 20)
    # 40x20 padded to a white square: top rows white, middle rows blue
    assert img[:, 0, 10].tolist() == [255, 255, 255] and img[:, 10, 10].tolist() == [0, 0, 255]


def test_stable_fraction_is_fixed_and_spread():
    values = [offline.stable_fraction(f"k{i}") for i in range(1000)]
    assert values == [offline.stable_fraction(f"k{i}") for i in range(1000)]
    assert 0.15 < sum(v < 0.2 for v in values) / 1000 < 0.25
