"""The `coop_split` and `tinyimagenet` formats on small files in their exact on-disk layouts."""

from __future__ import annotations

import json

import pytest

from clipbench.errors import ClipbenchError
from clipbench.protocols.builders.dataset_specs import load_labelled
from clipbench.protocols.formats import coop_split, tinyimagenet
from fixtures_fewshot_data import write_coop_split, write_tinyimagenet


def test_coop_split_lists_each_split_with_the_files_labels_and_names(tmp_path):
    split = write_coop_split(tmp_path / "dtd", "split_zhou_DescribableTextures.json", "images",
                             ["banded", "blotchy", "braided"], {"train": 3, "val": 1, "test": 2})
    train, names = coop_split.read(split, tmp_path / "dtd" / "images", "train")
    assert names == ["banded", "blotchy", "braided"]
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert all(p.is_file() and p.parent.parent == tmp_path / "dtd" / "images" for p in train.images.items)
    spec = {"adapter": "coop_split", "split_file": "dtd/split_zhou_DescribableTextures.json", "images": "dtd/images"}
    test, _ = load_labelled(spec, "test", str(tmp_path))
    assert test.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert not set(test.images.items) & set(train.images.items)  # each split its own files
    val, _ = load_labelled({**spec, "test_split": "val"}, "test", str(tmp_path))  # `<split>_split` picks a list
    assert len(val) == 3
    renamed, names = load_labelled({**spec, "names": ["a", "b", "c"]}, "train", str(tmp_path))
    assert names == ["a", "b", "c"] and len(renamed) == 9


def test_coop_split_errors_name_the_file(tmp_path):
    split = write_coop_split(tmp_path, "split.json", "images", ["x", "y"], {"train": 1, "val": 0, "test": 1})
    doc = json.loads(split.read_text())
    doc["test"][0][2] = "not x"
    split.write_text(json.dumps(doc))
    with pytest.raises(ClipbenchError, match="label 0 is named both 'x' and 'not x'"):
        coop_split.read(split, tmp_path / "images", "train")
    with pytest.raises(ClipbenchError, match="CoOp split file not found at .*missing.json"):
        coop_split.read(tmp_path / "missing.json", tmp_path / "images", "train")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ClipbenchError, match="bad.json: not a JSON split file"):
        coop_split.read(tmp_path / "bad.json", tmp_path / "images", "train")


WNIDS = ["n02124075", "n04067472", "n01443537"]  # wnids.txt's own order, not sorted


def test_tinyimagenet_labels_are_lines_of_wnids_txt(tmp_path):
    write_tinyimagenet(tmp_path / "tiny-imagenet-200", WNIDS, train_per_class=2, val_per_class=2)
    spec = {"adapter": "tinyimagenet", "root": "tiny-imagenet-200"}
    train, names = load_labelled(spec, "train", str(tmp_path))
    assert train.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert [p.parent.parent.name for p in train.images.items] == [w for w in WNIDS for _ in range(2)]
    assert names == [f"thing {w}" for w in WNIDS]  # words.txt's first name
    test, _ = load_labelled(spec, "test", str(tmp_path))
    assert test.labels.tolist() == [0, 0, 1, 1, 2, 2]  # the val split; the unknown wnid's image is left out
    assert [p.name for p in test.images.items] == [f"val_{k}.JPEG" for k in range(6)]
    named, names = load_labelled({**spec, "names_by_wnid": {"n01443537": "goldfish", "n02124075": "Egyptian Mau",
                                                            "n04067472": "reel"}}, "train", str(tmp_path))
    assert names == ["Egyptian Mau", "reel", "goldfish"]


def test_tinyimagenet_errors_are_one_line(tmp_path):
    write_tinyimagenet(tmp_path / "t", WNIDS)
    with pytest.raises(ClipbenchError, match="names no class for 1 wnid"):
        tinyimagenet.read(tmp_path / "t", "train", {"n02124075": "a", "n04067472": "b"})
    with pytest.raises(ClipbenchError, match="Tiny ImageNet not found at .*nowhere.*tiny-imagenet-200.zip"):
        tinyimagenet.read(tmp_path / "nowhere", "train")
    with pytest.raises(ClipbenchError, match="splits train and test"):
        tinyimagenet.read(tmp_path / "t", "val2")
