import dataclasses

import pytest

from clipbench.errors import ClipbenchError
from clipbench.plan import plan
from clipbench.spec import DEFAULTS, RunSpec


def _spec(**over):
    base = dict(suite="s", method="m", method_version=1, method_config={"part": "whole", "a": 1},
                protocol="p", protocol_version=1, protocol_kind="class_incremental", protocol_params={"x": 1, "y": [1, 2]},
                model={"arch": "a", "pretrained": None, "weights": "random-init"}, seed=0,
                train={"lr": 1e-3, "epochs": 1}, eval={"batch_size": 8}, precision="fp32")
    base.update(over)
    return RunSpec(**base)


def test_id_is_independent_of_key_order_and_data_root():
    a = _spec(protocol_params={"x": 1, "y": [1, 2]}, data_root="/a")
    b = _spec(protocol_params={"y": [1, 2], "x": 1}, data_root="/b")
    assert a.id == b.id and len(a.id) == 12


@pytest.mark.parametrize("change", [
    {"seed": 1}, {"train": {"lr": 1e-4, "epochs": 1}}, {"method_version": 2},
    {"model": {"arch": "a", "pretrained": None, "weights": "other"}}, {"method_config": {"part": "image", "a": 1}},
])
def test_id_changes_with_any_setting(change):
    assert _spec().id != _spec(**change).id


def test_spec_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        _spec().seed = 3


def test_precedence_suite_then_config_then_set(tmp_path):
    # tiny suite says lr 1e-3 and batch 16; the config file changes both; --set wins over the file.
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  lr: 5e-4\n  batch_size: 8\n")
    [suite_only] = plan("tiny", ["finetune"], ["tiny_shapes"])
    [with_file] = plan("tiny", ["finetune"], ["tiny_shapes"], config_file=str(cfg))
    [with_set] = plan("tiny", ["finetune"], ["tiny_shapes"], config_file=str(cfg), sets=["train.lr=2e-4"])
    assert (suite_only.train["lr"], suite_only.train["batch_size"]) == (1e-3, 16)
    assert (with_file.train["lr"], with_file.train["batch_size"]) == (5e-4, 8)
    assert (with_set.train["lr"], with_set.train["batch_size"]) == (2e-4, 8)
    assert suite_only.train["weight_decay"] == 0.0  # from clipbench's defaults


def test_method_and_protocol_settings_are_settable():
    [s] = plan("tiny", ["finetune"], ["tiny_shapes"], sets=["methods.finetune.part=image", "protocols.tiny_shapes.train_per_class=8"])
    assert s.method_config["part"] == "image" and s.protocol_params["train_per_class"] == 8


def test_unknown_set_key_fails_with_did_you_mean():
    with pytest.raises(ClipbenchError, match="unknown setting 'train.lrr'.*Did you mean 'train.lr'"):
        plan("tiny", ["finetune"], ["tiny_shapes"], sets=["train.lrr=1"])


def test_invalid_part_fails_clearly():
    with pytest.raises(ClipbenchError, match="part must be one of"):
        plan("tiny", ["finetune"], ["tiny_shapes"], sets=["methods.finetune.part=legs"])


def test_malformed_config_names_file_and_line(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("train:\n  lr: 1e-3\n  batch_size: [8\n")
    with pytest.raises(ClipbenchError) as err:
        plan("tiny", ["finetune"], ["tiny_shapes"], config_file=str(cfg))
    assert f"{cfg}:" in str(err.value) and "malformed YAML" in str(err.value)


@pytest.mark.parametrize("setting, allowed", [
    ("train.lr=abc", "train.lr='abc' is not allowed: expected a number > 0"),
    ("train.lr=0", "train.lr=0 is not allowed: expected a number > 0"),
    ("train.lr=true", "train.lr=True is not allowed"),
    ("train.epochs=-1", "train.epochs=-1 is not allowed: expected an integer >= 1"),
    ("train.epochs=1.5", "train.epochs=1.5 is not allowed"),
    ("train.batch_size=0", "train.batch_size=0 is not allowed"),
    ("train.iterations=-5", "train.iterations=-5 is not allowed: expected an integer >= 0"),
    ("train.warmup_steps=2.5", "train.warmup_steps=2.5 is not allowed"),
    ("train.label_smoothing=1", "train.label_smoothing=1 is not allowed: expected a number in [0, 1)"),
    ("train.label_smoothing=-0.1", "train.label_smoothing=-0.1 is not allowed"),
    ("train.grad_clip=-1", "train.grad_clip=-1 is not allowed"),
    ("train.weight_decay=.nan", "train.weight_decay=nan is not allowed"),
    ("train.step_gamma=0", "train.step_gamma=0 is not allowed: expected a number in (0, 1]"),
    ("train.schedule=linear", "train.schedule='linear' is not allowed: expected one of constant, step, cosine"),
    ("train.optimizer=lamb", "train.optimizer='lamb' is not allowed: expected one of adamw, adam, sgd"),
    ("train.augment=randaugment", "train.augment='randaugment' is not allowed: expected one of none, clclip, zscl"),
    ("train.ce_classes=all", "train.ce_classes='all' is not allowed: expected one of seen, current"),
    ("eval.batch_size=0", "eval.batch_size=0 is not allowed: expected an integer >= 1"),
])
def test_every_train_setting_is_type_and_range_checked(setting, allowed):
    with pytest.raises(ClipbenchError) as err:
        plan("tiny", ["finetune"], ["tiny_shapes"], sets=[setting])
    assert allowed in str(err.value) and "\n" not in str(err.value)


def test_valid_train_settings_pass():
    [s] = plan("tiny", ["finetune"], ["tiny_shapes"], sets=[
        "train.optimizer=adam", "train.schedule=cosine", "train.warmup_steps=3", "train.label_smoothing=0.2",
        "train.grad_clip=1", "train.augment=zscl", "train.iterations=7", "train.lr=1", "train.step_gamma=1"])
    assert (s.train["optimizer"], s.train["iterations"], s.train["lr"]) == ("adam", 7, 1)


def test_unknown_train_key_from_a_method_or_suite_fails():
    from clipbench.spec import validate_train

    with pytest.raises(ClipbenchError, match="unknown setting 'train.warmup'"):
        validate_train({**DEFAULTS["train"], "warmup": 100}, {"batch_size": 8})
