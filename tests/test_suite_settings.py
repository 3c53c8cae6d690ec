"""A suite's `settings:` block: dotted keys layered after its train/eval and before --config / --set."""

from pathlib import Path

import pytest

import clipbench.plan as planner
from clipbench.errors import ClipbenchError
from clipbench.protocols.catalog import load_suite_file
from clipbench.plan import plan

TINY = Path(planner.__file__).parent.parent / "protocols" / "suites" / "tiny.yaml"


def _suite_file(tmp_path, extra: str) -> Path:
    path = tmp_path / "tiny_with_settings.yaml"
    path.write_text(TINY.read_text() + extra)
    return path


def _plan_with(monkeypatch, path: Path, methods, sets=()):
    suite = load_suite_file(path)
    monkeypatch.setattr(planner, "get_suite", lambda name: suite)
    return plan(suite.name, methods, ["tiny_shapes"], sets=list(sets))


def test_cil_cifar100_sets_zscl_cil_values():
    specs = {s.method: s for s in plan("cil_cifar100", ["zscl", "lwf_vr", "lwf_zscl", "finetune"], ["cifar100_10steps"],
                                       strict_weights=False)}
    zscl = specs["zscl"].method_config
    assert (zscl["image_weight"], zscl["text_weight"], zscl["we_every"], zscl["l2"]) == (5, 5, 10, 0)
    for name in ("lwf_vr", "lwf_zscl"):
        assert (specs[name].method_config["image_weight"], specs[name].method_config["text_weight"]) == (5, 5)
    [cil_icarl] = plan("cil_cifar100", ["icarl_zscl"], ["cifar100_10steps"], strict_weights=False)
    assert cil_icarl.method_config["variant"] == "cil" and cil_icarl.method_config["distill_weight"] == 5.0


def test_mtil_sets_zscl_mtil_values_only():
    specs = {s.method: s.method_config for s in plan("mtil", ["zscl", "icarl_zscl"], ["mtil_order1"], strict_weights=False)}
    assert (specs["zscl"]["image_weight"], specs["zscl"]["we_every"], specs["zscl"]["l2"]) == (1.0, 0, 1.0)
    icarl = specs["icarl_zscl"]
    assert (icarl["variant"], icarl["memory_size"], icarl["distill_weight"]) == ("mtil", 10000, 1)


def test_settings_layer_after_train_and_before_set(tmp_path, monkeypatch):
    path = _suite_file(tmp_path, "settings:\n  methods.zscl.l2: 0.25\n  train.lr: 0.5\n")
    [spec] = _plan_with(monkeypatch, path, ["zscl"])
    assert spec.method_config["l2"] == 0.25 and spec.train["lr"] == 0.5  # over the suite's train.lr 1e-3
    [spec] = _plan_with(monkeypatch, path, ["zscl"], sets=["methods.zscl.l2=0.75"])
    assert spec.method_config["l2"] == 0.75
    [spec] = _plan_with(monkeypatch, path, ["finetune"])  # settings of methods not run are accepted
    assert spec.method == "finetune"


def test_unknown_settings_key_fails_with_did_you_mean(tmp_path, monkeypatch):
    path = _suite_file(tmp_path, "settings:\n  methods.zscl.l3: 0\n")
    with pytest.raises(ClipbenchError, match=r"unknown setting 'methods.zscl.l3' in the `settings:` of suite 'tiny'. "
                                             r"Did you mean 'methods.zscl.l2'"):
        _plan_with(monkeypatch, path, ["finetune"])


def test_methods_is_only_the_list(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(TINY.read_text().replace("methods: all", "methods: {lwf: {alpha: 2.0}}"))
    with pytest.raises(ClipbenchError, match="`methods:` is `all` or a list of method names; put hyperparameters under "
                                             "`settings:`"):
        load_suite_file(path)
    path.write_text(TINY.read_text() + "settings:\n  methods:\n    zscl:\n      l2: 0\n")
    with pytest.raises(ClipbenchError, match="`settings:` maps dotted keys"):
        load_suite_file(path)
