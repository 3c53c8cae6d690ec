"""The formats of the CLIP class-incremental benchmarks on small files in their exact on-disk layouts:
`lamda_folder` (the LAMDA archives, UCF-101's frames), `objectnet_list` (the authors' ObjectNet lists),
`imagenet_r_split` (RAPF's ImageNet-R split file) and `subset_list` (continuum's ImageNet-100 lists), and the
tiny-data writers a smoke run uses, on the shipped protocols' own dataset specs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipbench.errors import ClipbenchError
from clipbench.protocols.builders.dataset_specs import load_labelled
from clipbench.protocols.catalog import get_protocol, get_suite
from clipbench.protocols.formats import imagenet_r_split, lamda_folder, objectnet_list, subset_list
from clipbench.protocols.formats._pinned import git_blob_id
from clipbench.protocols.formats._small import write_small


def _img(path: Path, fmt: str = "JPEG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((12, 16, 3), 7, dtype=np.uint8)).save(path, format=fmt)
    return path


def test_lamda_folder_reads_as_imagefolder_does(tmp_path):
    root = tmp_path / "ucf"
    # UCF-101 frames nested per video, upper-case suffixes, a non-image file, a class folder sorted before "a"
    for split in ("train", "test"):
        _img(root / split / "Apply Eye Makeup" / "v_02" / "frame_2.jpg")
        _img(root / split / "Apply Eye Makeup" / "v_01" / "frame_9.JPG")
        _img(root / split / "Apply Eye Makeup" / "v_01" / "frame_1.png", "PNG")
        (root / split / "Apply Eye Makeup" / "v_01" / "notes.txt").write_text("not an image")
        _img(root / split / "Archery" / "a.jpeg")
        _img(root / split / "ApplyLipstick" / "b.webp", "WEBP")
    spec = {"adapter": "lamda_folder", "root": "ucf"}
    train, names = load_labelled(spec, "train", str(tmp_path))
    assert names == ["Apply Eye Makeup", "ApplyLipstick", "Archery"]  # Python's sort of the folder names
    assert train.labels.tolist() == [0, 0, 0, 1, 2]
    assert [p.name for p in train.images.items[:3]] == ["frame_1.png", "frame_9.JPG", "frame_2.jpg"]  # walk order
    named, names = load_labelled({**spec, "names": ["x", "y", "z"]}, "test", str(tmp_path))
    assert names == ["x", "y", "z"] and len(named) == 5
    with pytest.raises(ClipbenchError, match="3 class folders, but the protocol names 2 classes"):
        load_labelled({**spec, "names": ["x", "y"]}, "train", str(tmp_path))
    (root / "test").rename(root / "val")  # C3Box's folder name
    assert len(load_labelled({**spec, "test_dir": "val"}, "test", str(tmp_path))[0]) == 5
    with pytest.raises(ClipbenchError, match="split folder of a LAMDA archive not found at .*ucf/test"):
        load_labelled(spec, "test", str(tmp_path))


def _objectnet(tmp_path: Path, test_categories=("alarm_clock", "air_freshener")) -> dict:
    images = tmp_path / "objectnet-1.0" / "images"
    for cat in ("air_freshener", "alarm_clock", "banana"):
        for k in range(2):
            _img(images / cat / f"{cat}_{k}.png", "PNG")
    (tmp_path / "train.txt").write_text("objectnet-1.0/images/alarm_clock/alarm_clock_0.png\n"
                                        "objectnet-1.0/images/air_freshener/air_freshener_0.png\n\n")
    (tmp_path / "test.txt").write_text("".join(f"images/{c}/{c}_1.png\n" for c in test_categories))
    return {"adapter": "objectnet_list", "images": "objectnet-1.0/images", "train_list": "train.txt",
            "test_list": "test.txt"}


def test_objectnet_list_reads_the_images_its_lines_name(tmp_path):
    spec = _objectnet(tmp_path)
    train, names = load_labelled(spec, "train", str(tmp_path))
    assert names == ["air_freshener", "alarm_clock"]  # the list's categories, sorted: ImageFolder's labels
    assert train.labels.tolist() == [1, 0]
    assert [p.relative_to(tmp_path).as_posix() for p in train.images.items] == [
        "objectnet-1.0/images/alarm_clock/alarm_clock_0.png", "objectnet-1.0/images/air_freshener/air_freshener_0.png"]
    test, _ = load_labelled(spec, "test", str(tmp_path))
    assert test.labels.tolist() == [1, 0] and all(p.is_file() for p in test.images.items)


def test_objectnet_list_errors_are_one_line(tmp_path):
    spec = _objectnet(tmp_path, test_categories=("banana", "air_freshener"))
    with pytest.raises(ClipbenchError, match="name different categories"):
        load_labelled(spec, "train", str(tmp_path))
    (tmp_path / "test.txt").write_text("just_a_file.png\n")
    with pytest.raises(ClipbenchError, match=r"test.txt:1: 'just_a_file.png' is not <...>/<category>/<file>"):
        objectnet_list.read(tmp_path / "objectnet-1.0" / "images", tmp_path / "test.txt")


def _imagenet_r(tmp_path: Path) -> Path:
    lines = {"train": [], "test": []}
    for wnid in ("n01443537", "n01484850", "n01440764"):  # not sorted in the file
        for k, style in enumerate(("art", "cartoon", "sketch")):
            _img(tmp_path / "imagenet-r" / wnid / f"{style}_{k}.jpg")
            lines["test" if style == "sketch" else "train"].append(f"{wnid}/{style}_{k}.jpg")
    split = tmp_path / "imgr_train_test_split.txt"
    split.write_text("train\n" + "\n".join(lines["train"]) + "\ntest\n" + "\n".join(lines["test"]) + "\n")
    return split


def test_imagenet_r_split_labels_are_sorted_wnids(tmp_path):
    split = _imagenet_r(tmp_path)
    names = {"n01440764": "tench", "n01443537": "goldfish", "n01484850": "great_white_shark"}
    spec = {"adapter": "imagenet_r_split", "root": "imagenet-r", "split_file": split.name, "names_by_wnid": names,
            "split_blob": git_blob_id(split)}
    train, got = load_labelled(spec, "train", str(tmp_path))
    assert got == ["tench", "goldfish", "great_white_shark"]
    assert train.labels.tolist() == [1, 1, 2, 2, 0, 0] and len(train) == 6
    test, _ = load_labelled(spec, "test", str(tmp_path))
    assert test.labels.tolist() == [1, 2, 0] and [p.name for p in test.images.items] == ["sketch_2.jpg"] * 3
    with pytest.raises(ClipbenchError, match="names no class for 1 wnid"):
        load_labelled({**spec, "names_by_wnid": {"n01440764": "tench", "n01443537": "goldfish"}}, "train", str(tmp_path))
    with pytest.raises(ClipbenchError, match=r"git blob [0-9a-f]{12}, not 0fd1a5733058"):
        load_labelled({**spec, "split_blob": "0fd1a5733058edbd74544bb5f8c3e7d38dcd400a"}, "train", str(tmp_path))
    split.write_text("n01440764/art_0.jpg\n")
    with pytest.raises(ClipbenchError, match="expected a section line"):
        imagenet_r_split.sections(split)


def test_git_blob_id_is_gits():
    # `git hash-object` of a file holding "hello\n" (a value git itself gives)
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as fh:
        fh.write("hello\n")
    assert git_blob_id(Path(fh.name)) == "ce013625030ba8dba906f756967f9e9ca394464a"


def test_subset_list_takes_paths_and_labels_from_its_lines(tmp_path):
    root = tmp_path / "imagenet"
    for split, n in (("train", 2), ("val", 1)):
        for wnid in ("n01440764", "n01443537"):
            for k in range(n):
                _img(root / split / wnid / f"{split}_{wnid}_{k}.JPEG")
    (tmp_path / "val_100.txt").write_text("val/n01443537/val_n01443537_0.JPEG 1\nval/n01440764/val_n01440764_0.JPEG 0\n")
    (tmp_path / "train_100.txt").write_text("".join(f"train/{w}/train_{w}_{k} .JPEG {y}\n".replace(" .", ".")
                                                    for y, w in enumerate(("n01440764", "n01443537")) for k in range(2)))
    spec = {"adapter": "subset_list", "root": "imagenet", "train_list": "train_100.txt", "test_list": "val_100.txt",
            "test_blob": git_blob_id(tmp_path / "val_100.txt"), "names": ["tench", "goldfish"]}
    test, names = load_labelled(spec, "test", str(tmp_path))
    assert names == ["tench", "goldfish"] and test.labels.tolist() == [1, 0]
    assert test.images.items[0] == root / "val" / "n01443537" / "val_n01443537_0.JPEG"
    train, _ = load_labelled(spec, "train", str(tmp_path))
    assert train.labels.tolist() == [0, 0, 1, 1] and all(p.is_file() for p in train.images.items)
    with pytest.raises(ClipbenchError, match="git blob"):
        load_labelled({**spec, "train_blob": "e2133270bca8a2cfac3935f79035a6e5f3bb4f94"}, "train", str(tmp_path))
    (tmp_path / "val_100.txt").write_text("val/n01443537/x.JPEG one\n")
    with pytest.raises(ClipbenchError, match=r"val_100.txt:1: .* is not '<path> <label>'"):
        subset_list.read(root, tmp_path / "val_100.txt")


def _target_specs():
    """(protocol, target spec) of every protocol of clip_cil and clip_cil_rapf read by one of the new formats."""
    seen = {}
    for suite in ("clip_cil", "clip_cil_rapf"):
        for name in get_suite(suite).protocols:
            spec = get_protocol(name).params["target"]
            if spec["adapter"] != "cifar":
                seen.setdefault(spec["adapter"] + str(spec.get("root")) + str(spec.get("split_file")), (name, spec))
    return sorted(seen.values(), key=lambda x: x[0])


FAST = {"clipcil_ucf_b0inc10", "imagenet_r_rapf_10steps", "imagenet100_10steps"}  # one per format; the rest slow


@pytest.mark.parametrize("protocol,spec", [pytest.param(p, s, id=p, marks=() if p in FAST else pytest.mark.slow)
                                           for p, s in _target_specs()])
def test_tiny_data_in_each_shipped_protocols_layout_loads(protocol, spec, tmp_path):
    overrides = write_small(spec, tmp_path, per_class=1)
    spec = {**spec, **overrides}
    n = len(spec.get("names") or spec.get("names_by_wnid"))
    for split in ("train", "test"):
        data, names = load_labelled(spec, split, str(tmp_path))
        assert len(names) == n and sorted(set(data.labels.tolist())) == list(range(n))
        assert all(p.is_file() for p in data.images.items)


def test_tiny_objectnet_lists_load(tmp_path):
    spec = {"adapter": "objectnet_list", "images": "objectnet-1.0/images", "train_list": "lists/train.txt",
            "test_list": "lists/test.txt", "names": ["air freshener", "alarm clock", "backpack"]}
    assert write_small(spec, tmp_path, per_class=2) == {}
    for split in ("train", "test"):
        data, names = load_labelled(spec, split, str(tmp_path))
        assert names == spec["names"] and data.labels.tolist() == [0, 0, 1, 1, 2, 2]
