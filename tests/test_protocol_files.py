"""Protocol and suite files: inheritance (`include:`), every key checked with file, line and did-you-mean,
and the user's own files in the catalog (`--protocol FILE`, `--suite FILE`, `--include DIR`, CLIPBENCH_INCLUDE)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from clipbench.errors import ClipbenchError
from clipbench.protocols import catalog
from clipbench.protocols.catalog import get_protocol, load_protocol_file, load_suite_file
from helpers import run_cli, snapshot

DEFS = Path(catalog.__file__).parent / "defs"
SUITES = Path(catalog.__file__).parent / "suites"

# Each refactored protocol's definition (name, version, kind, builder, params, train, headline,
# description), fingerprinted as the sha256 of its canonical JSON, computed from the files as they were
# BEFORE they were rewritten to share `_mtil.yaml`, `_cifar100.yaml` and `_paper_heldout.yaml` through
# `include:` (clipbench at 358cc2f and after the House move, b42328e). Tests cannot read the old files from
# git, so the fingerprints are stored: equal fingerprints mean equal params, so unchanged run ids.
# Since issue 23 the MTIL, X-TAIL-free MTIL variants, CIFAR-100 and TinyImageNet protocols declare their reference
# sets (`reference`, `references`) and MTIL reads Flowers through `flowers102`: their fingerprints were taken then.
BEFORE_INCLUDE = {
    "mtil_order1": "42b7255f4d732e60", "mtil_order2": "a25d9f094b1c4394",
    "cifar100_10steps": "e19e2c479a1e31dd", "cifar100_20steps": "933f9ca3770b997d",
    "cifar100_50steps": "1a193aa79680ac7c", "paper_coco_ost": "c6b6c5ca03945cd5",
    "paper_coco_mst": "7b7d47877f90b17b", "paper_eurosat_mst": "144e7461441fc3cd",
    # the MTIL-derived protocols and TinyImageNet, rewritten after they landed (main at cce30ef)
    "mtil_cil_order1": "e78dca10aec610a1", "mtil_cil_order2": "382b3f288f17a9f2",
    "mtil_fewshot_order1": "753853d13d0e61fb", "tinyimagenet_100_10steps": "3a6811e081366dff",
    "tinyimagenet_100_20steps": "4ef4fe012a0c32a8", "tinyimagenet_100_5steps": "b53fba17b9890cb7",
}
# Changed on purpose since (issue 24, versions bumped): MTIL takes ZSCL's splits (_mtil.yaml v3) and the CIFAR-100
# protocols the raw class names the class-incremental references prompt (_cifar100.yaml v3).
BEFORE_INCLUDE.update({
    "mtil_order1": "f49ae13317659e0d", "mtil_order2": "3eebfa2e87ecbee9", "cifar100_10steps": "468bb781a86eb4d0",
    "cifar100_20steps": "ab103ac30db9813e", "cifar100_50steps": "cfd57b04e64982d2",
    "mtil_cil_order1": "944088618e5075a2", "mtil_cil_order2": "4c54471f875abbb4", "mtil_fewshot_order1": "2bcd0cb2b015b47f",
})


def _without_sources(value):
    """`value` without dataset specs' `source:` keys (added later: they name where `clipbench data fetch` downloads
    the files from, and change no data read)."""
    if isinstance(value, dict):
        return {k: _without_sources(v) for k, v in value.items() if not (k == "source" and "adapter" in value)}
    if isinstance(value, list):
        return [_without_sources(v) for v in value]
    return value


def _fingerprint(name: str) -> str:
    p = get_protocol(name)
    d = {"name": p.name, "version": p.version, "kind": p.kind, "builder": p.builder, "params": _without_sources(p.params),
         "train": p.train, "headline": list(p.headline), "description": p.description}
    return hashlib.sha256(json.dumps(d, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


@pytest.mark.parametrize("name", sorted(BEFORE_INCLUDE))
def test_shared_blocks_leave_each_protocol_as_it_was(name):
    assert "include" in (DEFS / f"{name}.yaml").read_text()
    assert _fingerprint(name) == BEFORE_INCLUDE[name]


def test_fragments_are_not_protocols():
    assert not any(n.startswith("_") for n in catalog.protocol_names())
    assert "mtil_order1" in catalog.protocol_names()


def test_include_merges_mappings_and_replaces_the_rest(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "_shapes.yaml").write_text(
        "version: 1\nkind: class_incremental\nbuilder: synthetic_shapes\n"
        "params:\n  colours: [red, green]\n  n_experiences: 2\n  image_size: 32\n")
    child = tmp_path / "mine.yaml"
    child.write_text("include: base/_shapes.yaml\nname: mine\nparams:\n  colours: [red, blue, cyan, white]\n")
    proto = load_protocol_file(child)
    assert proto.params == {"colours": ["red", "blue", "cyan", "white"], "n_experiences": 2, "image_size": 32}
    (tmp_path / "base" / "_shapes.yaml").write_text("include: ../mine.yaml\n")
    with pytest.raises(ClipbenchError, match="include cycle"):
        load_protocol_file(child)


def _protocol_file(tmp_path, text: str, name: str = "mine.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# three colours for the builder's default 3 experiences (two were refused once experiences had to cover the classes)
SHAPES = "name: mine\nversion: 1\nkind: class_incremental\nbuilder: synthetic_shapes\nparams:\n  colours: [red, green, blue]\n"


@pytest.mark.parametrize("text, message", [
    (SHAPES + "  n_experience: 2\n", r"mine.yaml:7: unknown key 'n_experience' in the params of builder "
                                     r"'synthetic_shapes'. Did you mean 'n_experiences'\?"),
    (SHAPES + "  n_experiences: two\n", r"mine.yaml:7: the params of builder 'synthetic_shapes'.n_experiences='two' is "
                                        r"not allowed: expected an integer"),
    (SHAPES.replace("builder:", "bulider:"), r"mine.yaml:4: unknown key 'bulider' in a protocol file. "
                                             r"Did you mean 'builder'\?"),
    (SHAPES.replace("synthetic_shapes", "synthetic_shape"), r"mine.yaml:4: unknown dataset builder 'synthetic_shape'"),
    (SHAPES + "train:\n  lr: 1\n  epoch: 2\n", r"mine.yaml:9: unknown key 'epoch' in train. Did you mean 'epochs'\?"),
    (SHAPES + "  colours: [blue]\n", r"mine.yaml:7: key 'colours' appears twice \(first on line 6\)"),
])
def test_protocol_file_mistakes_name_file_line_and_fix(tmp_path, text, message):
    with pytest.raises(ClipbenchError, match=message):
        load_protocol_file(_protocol_file(tmp_path, text))


FOLDER = ("name: mine\nversion: 1\nkind: class_incremental\nbuilder: datasets\nparams:\n  target:\n"
          "    adapter: image_folder\n    root: /data/mine\n")


@pytest.mark.parametrize("text, message", [
    # a misspelt key inside a dataset spec would be ignored: the run would measure other data than the file says
    (FOLDER + "    test_fration: 0.2\n", r"mine.yaml:9: unknown key 'test_fration' in a dataset spec of format "
                                        r"'image_folder'. Did you mean 'test_fraction'\?"),
    (FOLDER + "    trian_root: /data/train\n", r"mine.yaml:9: unknown key 'trian_root' .*Did you mean 'train_root'\?"),
    (FOLDER + "  zeroshot:\n    other:\n      adapter: csv\n      list: a.csv\n      templats: ['{c}']\n",
     r"mine.yaml:13: unknown key 'templats' in a dataset spec of format 'csv'. Did you mean 'templates'\?"),
    (FOLDER.replace("image_folder", "image_fodler"), r"mine.yaml:7: unknown dataset format 'image_fodler'"),
])
def test_dataset_spec_mistakes_name_file_line_and_fix(tmp_path, text, message):
    with pytest.raises(ClipbenchError, match=message):
        load_protocol_file(_protocol_file(tmp_path, text))


def test_dataset_spec_key_set_on_the_command_line_is_checked(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(catalog.INCLUDE_ENV, "")  # restored after the test, whatever the CLI adds
    path = _protocol_file(tmp_path, FOLDER)
    results = tmp_path / "results"
    assert run_cli("run", "--method", "zeroshot", "--suite", "tiny", "--protocol", path, "--results", results,
                   "--set", "protocols.mine.target={test_fration: 0.3}") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "protocols.mine.target.test_fration" in err
    assert "Did you mean 'test_fraction'?" in err and not results.exists()


def test_every_key_a_format_reads_is_accepted(tmp_path):
    text = FOLDER + ("    train_root: /data/train\n    test_root: /data/test\n    class_ids: [a, b]\n"
                     "    limit_per_class: 3\n    templates: ['{c}']\n    names: [A, B]\n")
    assert load_protocol_file(_protocol_file(tmp_path, text)).params["target"]["limit_per_class"] == 3


def test_required_builder_params(tmp_path):
    text = "name: mine\nversion: 1\nkind: class_incremental\nbuilder: datasets\nparams:\n  n_experiences: 2\n"
    with pytest.raises(ClipbenchError, match=r"mine.yaml:5: builder 'datasets' needs params: target"):
        load_protocol_file(_protocol_file(tmp_path, text))


def _suite_text(**replace: str) -> str:
    text = (SUITES / "tiny.yaml").read_text()
    for old, new in replace.items():
        text = text.replace(old, new)
    return text


@pytest.mark.parametrize("old, new, message", [
    ("train:", "trian:", r"tiny.yaml:\d+: unknown key 'trian' in a suite file. Did you mean 'train'\?"),
    ("  lr: 1.0e-3", "  lrr: 1.0e-3", r"unknown key 'lrr' in train. Did you mean 'lr'\?"),
    ("  arch: clipbench-tiny", "  arc: clipbench-tiny", r"unknown key 'arc' in model. Did you mean 'arch'\?"),
    ("methods: all", "methods: {lwf: {alpha: 2.0}}", r"tiny.yaml:\d+: `methods:` is `all` or a list of method names; "
                                                     r"put hyperparameters under `settings:` as `methods.<name>.<field>"),
])
def test_suite_file_mistakes_name_file_line_and_fix(tmp_path, old, new, message):
    path = tmp_path / "tiny.yaml"
    path.write_text(_suite_text(**{old: new}))
    with pytest.raises(ClipbenchError, match=message):
        load_suite_file(path)


def test_misspelt_suite_key_exits_2_with_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(catalog.INCLUDE_ENV, "")  # restored after the test, whatever the CLI adds
    path = tmp_path / "my_suite.yaml"
    path.write_text(_suite_text(**{"name: tiny": "name: my_tiny", "train:": "trian:"}))
    results = tmp_path / "results"
    assert run_cli("run", "--all", "--suite", path, "--results", results, "--dry-run") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown key 'trian'" in err and f"{path}:" in err
    assert not results.exists()


@pytest.mark.parametrize("setting, message", [
    ("train.lr=abc", "train.lr='abc' is not allowed"),
    ("methods.lwf.alpha=abc", "methods.lwf.alpha='abc' in --set is not allowed: expected a number"),
    ("protocols.tiny_shapes.n_experiences=1.5", "expected an integer"),
    ("precision=fp16", "expected one of fp32, amp_bf16"),
])
def test_wrong_setting_types_exit_2_writing_nothing(tmp_path, capsys, setting, message):
    results = tmp_path / "results"
    done = results / "runs" / "tiny_shapes" / "lwf" / "clipbench-tiny" / "seed0-000000000000" / "run.json"
    done.parent.mkdir(parents=True)
    done.write_text('{"status": "complete"}')  # stands for earlier work: must stay as it is
    before = snapshot(results)
    capsys.readouterr()
    assert run_cli("run", "--method", "lwf", "--protocol", "tiny_shapes", "--suite", "tiny", "--results", results,
                   "--set", setting) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert snapshot(results) == before


def test_config_file_value_of_the_wrong_type_names_its_line(tmp_path):
    from clipbench.plan import plan

    cfg = tmp_path / "c.yaml"
    cfg.write_text("methods:\n  lwf:\n    alpha: [1]\n")
    with pytest.raises(ClipbenchError, match=r"c.yaml:3: methods.lwf.alpha=\[1\] in .* expected a number"):
        plan("tiny", ["lwf"], ["tiny_shapes"], config_file=str(cfg))


def test_suite_settings_type_checked_with_line(tmp_path, monkeypatch):
    from clipbench import plan as plan_module

    path = tmp_path / "s.yaml"
    path.write_text(_suite_text() + "settings:\n  methods.lwf.alpha: high\n")
    suite = load_suite_file(path)
    monkeypatch.setattr(plan_module, "get_suite", lambda name: suite)
    with pytest.raises(ClipbenchError, match=r"s.yaml:\d+: methods.lwf.alpha='high' in the `settings:` of suite"):
        plan_module.plan("tiny", ["finetune"], ["tiny_shapes"])


# ---- the user's files in the catalog


def _user_folder(tmp_path) -> Path:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "_base.yaml").write_text("version: 1\nkind: class_incremental\nbuilder: synthetic_shapes\n"
                                       "params:\n  colours: [red, green, blue, yellow]\n  n_experiences: 2\n")
    (folder / "four_colours.yaml").write_text("include: _base.yaml\nname: four_colours\n")
    (folder / "my_suite.yaml").write_text(_suite_text(**{"name: tiny": "name: my_suite",
                                                         "protocols: [tiny_shapes, tiny_shapes_til]":
                                                         "protocols: [four_colours]"}))
    return folder


def test_include_folder_and_environment_add_protocols_and_suites(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(catalog.INCLUDE_ENV, "")  # restored after the test, whatever the CLI adds
    folder = _user_folder(tmp_path)
    assert "four_colours" not in catalog.protocol_names()
    assert run_cli("list", "protocols", "--include", folder) == 0
    assert "four_colours" in capsys.readouterr().out
    monkeypatch.setenv(catalog.INCLUDE_ENV, str(folder))
    assert catalog.get_suite("my_suite").protocols == ["four_colours"]
    assert catalog.get_protocol("four_colours").params["n_experiences"] == 2
    assert "_base" not in catalog.protocol_names()


def test_protocol_file_where_a_name_goes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(catalog.INCLUDE_ENV, "")  # restored after the test, whatever the CLI adds
    folder = _user_folder(tmp_path)
    results = tmp_path / "results"
    assert run_cli("run", "--method", "finetune", "--suite", "tiny", "--protocol", folder / "four_colours.yaml",
                   "--results", results, "--dry-run") == 0
    assert "four_colours" in capsys.readouterr().out
    assert run_cli("status", "--method", "finetune", "--suite", folder / "my_suite.yaml", "--results", results) == 0
    assert "missing   four_colours" in capsys.readouterr().out
    assert run_cli("run", "--method", "finetune", "--protocol", folder / "my_suite.yaml", "--dry-run") == 2
    assert "is a suite file; pass it with --suite" in capsys.readouterr().err
    assert run_cli("run", "--method", "finetune", "--protocol", tmp_path / "nowhere.yaml", "--dry-run") == 2
    assert "protocol file" in capsys.readouterr().err


def test_a_user_file_may_not_take_a_builtin_name(tmp_path, monkeypatch):
    monkeypatch.setenv(catalog.INCLUDE_ENV, str(_protocol_file(tmp_path, SHAPES.replace("name: mine", "name: tiny_shapes"))))
    with pytest.raises(ClipbenchError, match=r"protocol 'tiny_shapes' clashes with the built-in protocol of that name"):
        catalog.protocol_names()
