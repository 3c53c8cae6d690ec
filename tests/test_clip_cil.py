"""The `clip_cil` and `clip_cil_rapf` suites: PyCIL's seed-1993 class orders (checked against numpy and against
the orders PROOF's logs print), each protocol's steps, names and templates, the dry runs naming every dataset file,
the `last_all` metric, and PROOF's logged numbers beside `proof` runs in the leaderboard."""

from __future__ import annotations

import numpy as np
import pytest

from clipbench.leaderboard import load_reported, write
from clipbench.protocols.builders.dataset_specs import experience_sizes
from clipbench.protocols.catalog import get_protocol, get_suite, suite_names
from clipbench.protocols.metrics import compute_metrics
from helpers import run_cli
from test_leaderboard import record, table_line, write_records
from test_reported_moe_adapters_cil import SHIPPED, _section

# (classes, first task, increment, PROOF's number of classes, labels.json name of its first class) per protocol
CLIP_CIL = {
    "clipcil_cifar100_b0inc10": (100, 10, 10, "apple"), "clipcil_cifar100_b50inc10": (100, 50, 10, "apple"),
    "clipcil_aircraft_b0inc10": (100, 10, 10, "707-320"), "clipcil_aircraft_b50inc10": (100, 50, 10, "707-320"),
    "clipcil_cars_b0inc10": (100, 10, 10, "AM General Hummer SUV 2000"),
    "clipcil_cars_b50inc10": (100, 50, 10, "AM General Hummer SUV 2000"),
    "clipcil_food_b0inc10": (100, 10, 10, "apple pie"), "clipcil_food_b50inc10": (100, 50, 10, "apple pie"),
    "clipcil_ucf_b0inc10": (100, 10, 10, "Apply Eye Makeup"), "clipcil_ucf_b50inc10": (100, 50, 10, "Apply Eye Makeup"),
    "clipcil_imagenet_r_b0inc20": (200, 20, 20, "goldfish"), "clipcil_imagenet_r_b100inc20": (200, 100, 20, "goldfish"),
    "clipcil_cub_b0inc20": (200, 20, 20, "Black footed Albatross"),
    "clipcil_cub_b100inc20": (200, 100, 20, "Black footed Albatross"),
    "clipcil_objectnet_b0inc20": (200, 20, 20, "air freshener"),
    "clipcil_objectnet_b100inc20": (200, 100, 20, "air freshener"),
    "clipcil_sun_b0inc30": (300, 30, 30, "abbey"), "clipcil_sun_b150inc30": (300, 150, 30, "abbey"),
}
# The CIFAR-100 order zhoudw-zdw/PROOF at 0bb2052 logs in logs/proof/cifar224/0/10/cifarb0.log (data_manager.py line)
PROOF_CIFAR_ORDER = [68, 56, 78, 8, 23, 84, 90, 65, 74, 76, 40, 89, 3, 92, 55, 9, 26, 80, 43, 38, 58, 70, 77, 1, 85,
                     19, 17, 50, 28, 53, 13, 81, 45, 82, 6, 59, 83, 16, 15, 44, 91, 41, 72, 60, 79, 52, 20, 10, 31, 54,
                     37, 95, 14, 71, 96, 98, 97, 2, 64, 66, 42, 22, 35, 86, 24, 34, 87, 21, 99, 0, 88, 27, 18, 94, 11,
                     12, 47, 25, 30, 46, 62, 69, 36, 61, 7, 63, 75, 5, 32, 4, 51, 48, 73, 93, 39, 67, 29, 49, 57, 33]
# ...and the first ten of the 200-class order, logs/proof/imagenetr/0/20/imgb0.log and logs/proof/cub/0/20/cubb0.log
PROOF_200_FIRST_TEN = [168, 136, 51, 9, 183, 101, 171, 99, 42, 159]


def test_the_suites_exist_with_their_backbones():
    assert {"clip_cil", "clip_cil_rapf"} <= set(suite_names())
    assert get_suite("clip_cil").protocols == list(CLIP_CIL)
    assert get_suite("clip_cil").model == {"arch": "ViT-B-16", "pretrained": "laion400m_e32"}
    assert get_suite("clip_cil_rapf").model == {"arch": "ViT-B-16", "pretrained": "openai"}
    train = get_suite("clip_cil").train  # PROOF's exps/cifar.json
    assert (train["epochs"], train["batch_size"], train["lr"], train["weight_decay"], train["optimizer"]) == (5, 64, 1e-3, 0.05, "sgd")


@pytest.mark.parametrize("name", sorted(CLIP_CIL))
def test_pycil_protocol(name):
    n, first, inc, first_name = CLIP_CIL[name]
    proto = get_protocol(name)
    params = proto.params
    order = params["class_order"]
    np.random.seed(1993)  # C3Box utils/data_manager.py, DataManager._setup_data, as it draws the order
    assert order == np.random.permutation(n).tolist()
    sizes = experience_sizes(n, params)
    assert sizes == [first] + [inc] * ((n - first) // inc) and sum(sizes) == n
    names = params["target"]["names"]
    assert len(names) == n == len(set(names)) and names[0] == first_name
    templates = params["templates"]
    assert templates and all(t.count("{c}") == 1 and "{}" not in t for t in templates)
    assert proto.headline == ("avg", "last_all") and proto.kind == "class_incremental"


def test_orders_are_the_ones_proof_logged():
    assert get_protocol("clipcil_cifar100_b0inc10").params["class_order"] == PROOF_CIFAR_ORDER
    for name in ("clipcil_imagenet_r_b0inc20", "clipcil_cub_b0inc20", "clipcil_objectnet_b100inc20"):
        assert get_protocol(name).params["class_order"][:10] == PROOF_200_FIRST_TEN
    # the templates the code evaluates with, `templates.json`'s counts (C3Box at 1378ab2)
    counts = {"cifar100": 18, "cub": 1, "imagenet_r": 7, "objectnet": 7, "aircraft": 2, "cars": 8, "food": 1,
              "ucf": 48, "sun": 2}
    for key, count in counts.items():
        assert len(get_protocol(f"clipcil_{key}_b0inc{ {'cub': 20, 'imagenet_r': 20, 'objectnet': 20, 'sun': 30}.get(key, 10)}")
                   .params["templates"]) == count


def test_rapf_and_mgclip_settings():
    icarl = get_protocol("cifar100_10steps").params["class_order"]
    for steps in (10, 20, 50):
        params = get_protocol(f"rapf_cifar100_{steps}steps").params
        assert params["class_order"] == icarl and icarl[:10] == [87, 0, 52, 58, 44, 91, 68, 97, 51, 15]  # RAPF's file
        assert params["templates"] == ["a good photo of a {c}."] and params["n_experiences"] == steps
        assert params["target"]["names"][1] == "aquarium_fish"  # torchvision's class names
    rapf, mg = (get_protocol(f"imagenet_r_{m}_10steps").params for m in ("rapf", "mgclip"))
    assert rapf["class_order"][:10] == [29, 75, 18, 9, 62, 46, 133, 54, 89, 24]
    assert mg["class_order"][:10] == [150, 119, 193, 2, 75, 179, 129, 68, 145, 53]
    assert sorted(rapf["class_order"]) == sorted(mg["class_order"]) == list(range(200))
    assert rapf["target"] == mg["target"] and rapf["target"]["split_blob"].startswith("0fd1a573")
    assert experience_sizes(200, rapf) == [20] * 10
    in100 = get_protocol("imagenet100_10steps").params
    assert in100["class_order"] == np.random.RandomState(1993).permutation(100).tolist()
    assert in100["target"]["names"][:2] == ["tench", "goldfish"] and len(in100["target"]["names"]) == 100


@pytest.mark.parametrize("suite", ["clip_cil", "clip_cil_rapf"])
def test_dry_run_lists_every_protocol_and_asset(suite, tmp_path, capsys):
    results = tmp_path / "results"
    assert run_cli("run", "--all", "--suite", suite, "--results", results, "--dry-run") == 0
    out = capsys.readouterr().out
    model = get_suite(suite).model
    assert f"model ViT-B-16 / {model['pretrained']}" in out
    plan = out.split(f"model ViT-B-16 / {model['pretrained']}")[0]
    for protocol in get_suite(suite).protocols:
        assert f"  {protocol} finetune" in plan
        assert f"assets of {protocol} (data_root: data)" in out
        rows = get_protocol(protocol).assets("data")
        assert rows and all(row["path"] in out and row["how"] in out for row in rows)
    if suite == "clip_cil":
        for folder in ("cifar100", "lamda/aircraft", "lamda/cars", "lamda/food101", "lamda/ucf", "lamda/imagenet-r",
                       "lamda/cub", "lamda/objectnet", "lamda/sun"):
            assert f"data/{folder} " in out  # the nine datasets
    else:
        for path in ("data/rapf/imgr_train_test_split.txt", "data/rapf/train_100.txt", "data/rapf/val_100.txt",
                     "data/imagenet-r", "data/imagenet-1k"):
            assert path in out
    assert not results.exists()


def test_last_all_counts_every_test_image_once():
    raw = {"acc_matrix": [[0.0, 0.0], [0.9, 0.0], [0.8, 0.5]], "test_sizes": [30, 10]}
    values = compute_metrics(raw, ["avg", "last_all", "last"])["values"]
    assert values["last_all"] == pytest.approx((30 * 0.8 + 10 * 0.5) / 40)
    assert values["last"] == pytest.approx(0.65)  # each experience weighing the same
    assert values["avg"] == pytest.approx((0.9 + (30 * 0.8 + 10 * 0.5) / 40) / 2)  # C3Box's Avg: the first step too
    equal = compute_metrics({**raw, "test_sizes": [10, 10]}, ["last_all", "last"])["values"]
    assert equal["last_all"] == pytest.approx(equal["last"])


# protocol -> (avg, last_all, epochs, batch, optimizer) read from zhoudw-zdw/PROOF at 0bb2052, logs/proof/**.log
PROOF_LOGS = {
    "clipcil_cifar100_b0inc10": (86.77, 79.11, 5, 64, "sgd"), "clipcil_cifar100_b50inc10": (83.32, 79.73, 5, 64, "sgd"),
    "clipcil_aircraft_b0inc10": (64.61, 55.81, 10, 64, "sgd"), "clipcil_aircraft_b50inc10": (63.6, 58.81, 10, 64, "adamw"),
    "clipcil_cars_b0inc10": (92.7, 88.39, 10, 64, "sgd"), "clipcil_cars_b50inc10": (90.23, 88.32, 10, 64, "sgd"),
    "clipcil_ucf_b0inc10": (94.34, 90.6, 10, 64, "sgd"), "clipcil_ucf_b50inc10": (93.56, 91.32, 10, 64, "sgd"),
    "clipcil_imagenet_r_b0inc20": (84.19, 78.5, 10, 48, "sgd"), "clipcil_imagenet_r_b100inc20": (81.06, 78.03, 10, 48, "sgd"),
    "clipcil_cub_b0inc20": (84.87, 79.86, 10, 64, "sgd"), "clipcil_cub_b100inc20": (81.3, 78.92, 10, 64, "sgd"),
    "clipcil_objectnet_b0inc20": (56.17, 43.66, 10, 64, "sgd"), "clipcil_objectnet_b100inc20": (49.78, 43.81, 10, 64, "sgd"),
    "clipcil_sun_b0inc30": (83.75, 76.91, 10, 64, "sgd"), "clipcil_sun_b150inc30": (80.15, 76.13, 10, 64, "sgd"),
}


def test_each_logged_proof_run_has_its_row():
    docs = {d["protocol"]: d for d in map(load_reported, sorted(SHIPPED.glob("proof_clipcil_*.yaml")))}
    assert set(docs) == set(PROOF_LOGS)  # Food is left out: its logs are a sweep whose configs differ from exps/food*.json
    for protocol, (avg, last, epochs, batch, optimizer) in PROOF_LOGS.items():
        doc = docs[protocol]
        assert doc["suite"] == "clip_cil" and doc["model"] == "ViT-B-16" and "0bb2052" in doc["source"]
        [row] = doc["rows"].values()
        assert row["method"] == "proof" and row["metrics"] == {"avg": avg, "last_all": last}
        settings = row["settings"]
        assert settings["model.pretrained"] == "laion400m_e32" and settings["train.epochs"] == epochs
        assert settings["train.batch_size"] == batch and settings["train.optimizer"] == optimizer


def test_leaderboard_shows_proofs_row_beside_proof(tmp_path):
    suite = get_suite("clip_cil")
    recs = []
    for method, value in (("proof", 0.80), ("finetune", 0.40)):
        rec = record(method, 0, value, 0.5, model="ViT-B-16", suite="clip_cil", protocol="clipcil_cifar100_b0inc10",
                     train=dict(suite.train))
        rec["spec"]["model"]["pretrained"] = "laion400m_e32"
        rec["raw"]["acc_matrix"] = [[0.1, 0.1], [0.9, 0.1], [value, value]]
        recs.append(rec)
    write_records(tmp_path / "results", recs)
    write(tmp_path / "results", tmp_path / "lb")
    section = _section(tmp_path / "lb" / "clip_cil.md", "clipcil_cifar100_b0inc10")
    line = table_line(section, "PROOF")
    assert line[1] == "proof"
    assert line[2:] == ["86.8", "85.0", "-1.8", "79.1", "80.0", "+0.9"]  # avg (0.9 + 0.8) / 2, last_all 0.8
    assert "40.0" not in section  # finetune's own numbers never sit beside PROOF's
    other = _section(tmp_path / "lb" / "clip_cil.md", "clipcil_imagenet_r_b0inc20")  # no proof run there
    assert table_line(other, "PROOF")[1].startswith("-[^")


def test_a_class_order_may_name_some_of_the_classes():
    """A protocol cut to a few classes of its order (the smoke runs do) leaves the other classes out."""
    import torch

    from clipbench.protocols.builders.dataset_specs import split_by_class
    from clipbench.streams import LabelledImages

    data = LabelledImages(torch.zeros(6, 3, 2, 2, dtype=torch.uint8), torch.tensor([0, 5, 9, 5, 0, 2]))
    parts = split_by_class(data, [5, 0], [1, 1])
    assert [p.labels.tolist() for p in parts] == [[0, 0], [1, 1]]
