"""The X-TAIL, few-shot MTIL, MTIL-without-task-id and TinyImageNet protocols, built by their builders from small
files in the exact on-disk formats they read; X-TAIL scored over every class by a real (tiny-model) run."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from clipbench.protocols.catalog import get_protocol
from fixtures_data import write_cifar100
from fixtures_fewshot_data import write_coop_split, write_tinyimagenet
from helpers import records, run_cli

DTD = ["banded", "blotchy"]
EUROSAT = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture", "PermanentCrop",
           "Residential", "River", "SeaLake"]


def _write_mnist(root: Path, n: int = 40) -> None:
    """torchvision's MNIST raw files (n images, labels k % 10) for train and test."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    images = np.random.default_rng(0).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    for split in ("train", "t10k"):
        (raw / f"{split}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + bytes(k % 10 for k in range(n)))


def _write_xtail(root: Path) -> None:
    x = root / "xtail"
    write_coop_split(x / "dtd", "split_zhou_DescribableTextures.json", "images", DTD, {"train": 18, "val": 1, "test": 2})
    write_coop_split(x / "eurosat", "split_zhou_EuroSAT.json", "2750", EUROSAT, {"train": 2, "val": 0, "test": 1})
    _write_mnist(x, n=40)


def test_xtail_scores_every_domain_over_every_class_name(tmp_path):
    _write_xtail(tmp_path)
    proto = get_protocol("xtail_order1")
    streams = proto.build(str(tmp_path), 0, {**proto.params, "order": ["DTD", "EuroSAT", "MNIST"]})
    assert streams.kind == "class_incremental" and streams.scoring == "all"
    n = len(streams.class_names)
    assert n == 2 + 10 + 10 and streams.experience_classes[1] == list(range(2, 12))
    for row in range(4):
        for exp in range(3):
            assert streams.scored_classes(row, exp) == (0, n)  # seen or not, no domain id
    assert [len(t) for t in streams.train] == [2 * 16, 10 * 2, 10 * 4]  # 16 shots (fewer where fewer exist)
    assert [len(t) for t in streams.test] == [4, 10, 40]
    assert torch.equal(streams.train[0].labels.bincount(), torch.tensor([16, 16]))
    assert streams.class_names[2] == "Annual Crop Land satellite location"  # RAIL's eurosat.py names
    assert streams.class_names[12] == 'number: "0 - zero"'  # RAIL's collections.py MNIST names
    assert streams.class_templates[0] == ["{c} texture."] and streams.class_templates[12] == ["a photo of a {c}."]
    again = proto.build(str(tmp_path), 0, {**proto.params, "order": ["DTD", "EuroSAT", "MNIST"]})
    assert again.train[0].images.items == streams.train[0].images.items  # a fixed 16-shot draw


@pytest.mark.slow
def test_xtail_run_scores_over_the_union(tmp_path):
    """A zero-shot run on X-TAIL data: every row's accuracy is the top-1 over all class names."""
    from clipbench import runner
    from clipbench.decode import decode_streams
    from clipbench.evaluate import class_embeddings, encode_images
    from clipbench.models import load_model

    _write_xtail(tmp_path)
    config = tmp_path / "small.yaml"
    config.write_text(f"data_root: {tmp_path}\nprotocols:\n  xtail_order1:\n    order: [DTD, EuroSAT]\n"
                      "    train_per_class: 2\n")
    results = tmp_path / "results"
    assert run_cli("run", "--method", "zeroshot", "--protocol", "xtail_order1", "--suite", "tiny",
                   "--config", config, "--results", results, "--quiet") == 0
    [rec] = records(results).values()
    proto = get_protocol("xtail_order1")
    streams = proto.build(str(tmp_path), 0, {**proto.params, "order": ["DTD", "EuroSAT"], "train_per_class": 2})
    runner.seed_everything(0, "model")
    loaded = load_model("clipbench-tiny", None)
    decode_streams(streams, loaded.preprocess)
    classes = class_embeddings(loaded, streams.class_names, streams.class_templates, 128)
    expected = []
    for t in streams.test:
        pred = (encode_images(loaded, t.images, 128) @ classes.T).argmax(1)
        expected.append(float((pred == t.labels).double().mean()))
    assert rec["raw"]["acc_matrix"] == [expected] * 3  # every row, before and after each domain


def test_mtil_without_task_id_scores_every_class_seen_so_far(tmp_path):
    write_cifar100(tmp_path / "cifar100")
    _write_mnist(tmp_path / "mtil")
    proto = get_protocol("mtil_cil_order1")
    streams = proto.build(str(tmp_path), 0, {**proto.params, "order": ["CIFAR100", "MNIST"]})
    assert streams.kind == "class_incremental" and streams.scoring == ""
    assert streams.scored_classes(1, 0) == (0, 4)  # after CIFAR-100: its classes only
    assert streams.scored_classes(2, 0) == (0, 14)  # after MNIST: CIFAR-100's image scored among all 14
    assert streams.scored_classes(0, 1) == (0, 14)
    task = get_protocol("mtil_order1").build(str(tmp_path), 0, {**get_protocol("mtil_order1").params,
                                                                "order": ["CIFAR100", "MNIST"]})
    assert task.scored_classes(2, 0) == (0, 4) and task.class_names == streams.class_names


def test_mtil_fewshot_keeps_five_training_images_per_class(tmp_path):
    write_cifar100(tmp_path / "cifar100", per_split=(40, 8))
    _write_mnist(tmp_path / "mtil", n=80)
    proto = get_protocol("mtil_fewshot_order1")
    assert proto.kind == "task_incremental" and proto.params["train_per_class"] == 5
    streams = proto.build(str(tmp_path), 0, {**proto.params, "order": ["CIFAR100", "MNIST"]})
    assert streams.train[0].labels.bincount().tolist() == [5, 5, 5, 5]
    assert streams.train[1].labels.bincount()[4:].tolist() == [5] * 10
    assert [len(t) for t in streams.test] == [8, 80]  # full test sets
    assert streams.scored_classes(2, 0) == (0, 4)  # task identity given, as MTIL


def test_tinyimagenet_protocols_follow_moe_adapters_class_order(tmp_path):
    proto = get_protocol("tinyimagenet_100_5steps")
    names_by_wnid = proto.params["target"]["names_by_wnid"]
    wnids = list(names_by_wnid)  # MoE-Adapters4CL's tinyimagenet_classes.txt order: wnids.txt's
    assert len(wnids) == 200 and wnids[:2] == ["n02124075", "n04067472"]
    write_tinyimagenet(tmp_path / "tiny-imagenet-200", wnids, train_per_class=1, val_per_class=1)
    order = proto.params["class_order"]
    for name, sizes in (("tinyimagenet_100_5steps", [100] + [20] * 5), ("tinyimagenet_100_10steps", [100] + [10] * 10),
                        ("tinyimagenet_100_20steps", [100] + [5] * 20)):
        p = get_protocol(name)
        assert p.params["class_order"] == order and p.params["templates"] == ["a bad photo of a {c}."]
        streams = p.build(str(tmp_path), 0)
        assert [len(c) for c in streams.experience_classes] == sizes
        assert streams.class_names[:3] == [names_by_wnid[wnids[c]] for c in order[:3]]
        first = streams.train[0]
        # the base step holds the images of the first 100 classes of the order, relabelled by position
        assert sorted(p.parent.parent.name for p in first.images.items) == sorted(wnids[c] for c in order[:100])
        k = first.labels.tolist().index(0)
        assert first.images.items[k].parent.parent.name == wnids[order[0]]
        assert [len(t) for t in streams.test] == sizes  # one val image per class
