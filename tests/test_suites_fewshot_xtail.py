"""The xtail, mtil_fewshot, mtil_cil and cil_tinyimagenet suites: listed, their dry runs name every asset (the
weights and each dataset file or folder), and they carry their references' training settings."""

from __future__ import annotations

import pytest

from clipbench.protocols.catalog import get_protocol, get_suite, suite_names
from helpers import run_cli

SUITES = {"xtail": ["xtail_order1", "xtail_order2"], "mtil_fewshot": ["mtil_fewshot_order1"],
          "mtil_cil": ["mtil_cil_order1", "mtil_cil_order2"],
          "cil_tinyimagenet": ["tinyimagenet_100_5steps", "tinyimagenet_100_10steps", "tinyimagenet_100_20steps"]}


def test_the_new_suites_exist_with_their_protocols():
    assert set(SUITES) <= set(suite_names())
    for name, protocols in SUITES.items():
        suite = get_suite(name)
        assert suite.protocols == protocols and suite.model == {"arch": "ViT-B-16", "pretrained": "openai"}


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_dry_run_names_every_asset(suite, tmp_path, capsys):
    results = tmp_path / "results"
    assert run_cli("run", "--suite", suite, "--method", "zeroshot", "--results", results, "--dry-run") == 0
    out = capsys.readouterr().out
    assert "model ViT-B-16 / openai" in out  # the weights, found or how to get them
    for protocol in SUITES[suite]:
        assert f"assets of {protocol} (data_root: data)" in out
        rows = get_protocol(protocol).assets("data")
        assert rows and all(row["path"] in out for row in rows)
        assert f"  {protocol}" in out.split("model ViT-B-16")[0]  # in the plan
    assert not results.exists()


def test_dry_run_lists_the_xtail_files_by_name(tmp_path, capsys):
    assert run_cli("run", "--suite", "xtail", "--method", "zeroshot", "--protocol", "xtail_order1",
                   "--results", tmp_path, "--dry-run") == 0
    out = capsys.readouterr().out
    for path in ("data/xtail/caltech101/split_zhou_Caltech101.json", "data/xtail/caltech101/101_ObjectCategories",
                 "data/xtail/dtd/split_zhou_DescribableTextures.json", "data/xtail/eurosat/2750",
                 "data/xtail/oxford_flowers/jpg", "data/xtail/food-101/images", "data/xtail/oxford_pets/images",
                 "data/xtail/stanford_cars/split_zhou_StanfordCars.json", "data/xtail/sun397/SUN397"):
        assert path in out
    assert "task Aircraft" in out and "fgvc-aircraft-2013b" in out and "task MNIST" in out


def test_suites_carry_their_references_settings():
    fewshot = get_suite("mtil_fewshot")
    assert fewshot.train["iterations"] == 500 and fewshot.train["label_smoothing"] == 0.2
    assert fewshot.settings["methods.moe_adapters.threshold"] == pytest.approx(0.0585)
    tiny = get_suite("cil_tinyimagenet")
    assert tiny.train["lr"] == pytest.approx(7.1e-6) and tiny.train["batch_size"] == 64
    assert tiny.recipes["moe_adapters_cil"]["train"]["lr"] == pytest.approx(1e-3)  # its recipe (recipe: reference)
    assert tiny.settings["methods.zscl.we_every"] == 10
    assert get_suite("cil_cifar100").recipes["moe_adapters_cil"]["train"]["batch_size"] == 128
