"""Bad values in a user's protocol file, settings and data (issue 31: items 6, 9-12, 17, 18, 21): each is
refused before anything runs, dry run included: one line naming the file, the line where it is known and the
fix, exit 2, nothing written. `BAD_VALUES` is the list of cases tried (docs/suites.md names it)."""

from __future__ import annotations

import csv
import shutil
import time
from pathlib import Path
from typing import Any, Dict

import pytest
import yaml

from clipbench.errors import ClipbenchError
from clipbench.protocols import catalog
from clipbench.protocols.catalog import load_protocol_file
from clipbench.protocols.new_protocol import new_protocol
from helpers import records, run_cli
from test_new_protocol import captions_csv, clipart_folder


def protocol_file(tmp_path: Path, images: Path, params: Dict[str, Any] | None = None,
                  target: Dict[str, Any] | None = None, name: str = "mine") -> Path:
    """A `datasets` protocol over `images` (3 classes of 4 clip-art images: 1 test image each), with
    `params` and `target` keys laid over the working ones."""
    doc = {"name": name, "version": 1, "kind": "class_incremental", "builder": "datasets",
           "params": {"target": {"adapter": "image_folder", "root": str(images), "test_fraction": 0.25, **(target or {})},
                      "n_experiences": 3, "templates": ["a photo of a {c}."], **(params or {})}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture(autouse=True)
def own_catalog(monkeypatch):
    monkeypatch.setenv(catalog.INCLUDE_ENV, "")  # restored after each test, whatever the CLI adds


@pytest.fixture(scope="module")
def clipart(tmp_path_factory) -> Path:
    return clipart_folder(tmp_path_factory.mktemp("art"))


def refused(capsys, *argv: Any) -> str:
    """Run the CLI; it must exit 2 with one line (no traceback). Returns the line."""
    assert run_cli(*argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


# (case, params over the working ones, target spec keys over the working ones, the message, the key on whose line
# it is named: None where the problem is not one parameter's, and the file alone is named)
BAD_VALUES = [
    ("increments [0, 3]", {"increments": [0, 3]}, {}, "increments=[0, 3] is not allowed: expected a non-empty list of class counts", "increments"),
    ("increments [-1, 4]", {"increments": [-1, 4]}, {}, "each an integer >= 1", "increments"),
    ("increments [4, -1]", {"increments": [4, -1]}, {}, "each an integer >= 1", "increments"),
    ("increments []", {"increments": []}, {}, "expected a non-empty list of class counts", "increments"),
    ("increments not covering", {"increments": [1, 1]}, {}, "increments [1, 1] add up to 2 classes, but the target has 3", "increments"),
    ("n_experiences 0", {"n_experiences": 0}, {}, "n_experiences=0 is not allowed: expected an integer >= 1", "n_experiences"),
    ("n_experiences not dividing", {"n_experiences": 2}, {}, "n_experiences 2 does not split the 3 classes", "n_experiences"),
    ("n_experiences not dividing class_order", {"class_order": [0, 1, 2], "n_experiences": 2}, {},
     "n_experiences 2 does not split the 3 classes class_order lists", "n_experiences"),
    ("initial without increment", {"initial": 1}, {}, "give increment too", "initial"),
    ("test_fraction 0", {}, {"test_fraction": 0}, "test_fraction=0 is not allowed: expected a number between 0 and 1", "test_fraction"),
    ("test_fraction 1", {}, {"test_fraction": 1}, "0 leaves no test images, 1 no train images", "test_fraction"),
    ("test_fraction -0.5", {}, {"test_fraction": -0.5}, "test_fraction=-0.5 is not allowed", "test_fraction"),
    ("test_fraction text", {}, {"test_fraction": "a fifth"}, "test_fraction='a fifth' is not allowed", "test_fraction"),
    ("train_per_class -1", {"train_per_class": -1}, {}, "train_per_class=-1 is not allowed: expected an integer >= 1", "train_per_class"),
    ("test_per_class 0", {"test_per_class": 0}, {}, "test_per_class=0 is not allowed", "test_per_class"),
    ("limit_per_class 0", {}, {"limit_per_class": 0}, "limit_per_class=0 is not allowed", "limit_per_class"),
    ("class_order unknown id", {"class_order": [0, 1, 7]}, {}, "class id 7 is not a class of the target, which has 3 classes", "class_order"),
    ("class_order repeated id", {"class_order": [0, 1, 1]}, {}, "class id 1 appears 2 times", "class_order"),
    ("class_order negative id", {"class_order": [-1, 0, 1]}, {}, "class ids, integers >= 0", "class_order"),
    ("class_order empty", {"class_order": []}, {}, "a non-empty list of class ids", "class_order"),
    ("template {0}", {"templates": ["a photo of a {0}."]}, {}, "has {0}: the only field is {c}", "templates"),
    ("template {x}", {"templates": ["a photo of a {x}."]}, {}, "has {x}: the only field is {c}", "templates"),
    ("template unbalanced", {"templates": ["a photo of a {c."]}, {}, "has an unbalanced brace", "templates"),
    ("template without {c}", {"templates": ["a photo."]}, {}, "has no {c}: every class would get the same prompt", "templates"),
    ("templates empty", {"templates": []}, {}, "give at least one template", "templates"),
    ("templates not a list", {"templates": "a photo of a {c}."}, {}, "is not allowed", "templates"),
    ("train_template without {c}", {"train_template": "a photo."}, {}, "has no {c}", "train_template"),
    ("zero-shot template without {c}", {"zeroshot": {"art": {"adapter": "image_folder", "root": "ART", "split": "all",
                                                             "templates": ["clip art."]}}}, {}, "has no {c}", "templates"),
    ("kind unknown", {"kind": "domain_incremental"}, {}, "expected one of class_incremental, task_incremental", "kind"),
    ("names too few", {}, {"names": ["a", "b"]}, "target.names: 2 names for the 3 classes the dataset has", "names"),
    ("names the same prompt", {}, {"names": ["Cat", "cat", "dog"]}, "classes 'Cat' and 'cat' get the same prompt", None),
    ("no test images", {"train_per_class": 3}, {"test_fraction": 0.1}, "has no test images, so it would be scored 0.0", None),
]


@pytest.mark.parametrize("case, params, target, message, located", BAD_VALUES, ids=[c[0] for c in BAD_VALUES])
def test_a_bad_value_is_refused_when_the_protocol_is_read_or_planned(case, params, target, message, located, clipart,
                                                                     tmp_path):
    """What `run` and `run --dry-run` do with a protocol file before anything runs: read it (every value
    checked) and plan it (its streams listed, not decoded, and checked). The CLI's line is this error's."""
    if "zeroshot" in params:
        params["zeroshot"]["art"]["root"] = str(clipart)
    path = protocol_file(tmp_path, clipart, params, target)
    with pytest.raises(ClipbenchError) as err:
        load_protocol_file(path).check_data(None, 0)
    line = str(err.value)
    assert message in line and line.startswith(str(path)) and "\n" not in line, line
    if located:  # the parameter's own line (its last mention: a zero-shot set's templates follow the target's)
        number = max(n for n, text in enumerate(path.read_text().splitlines(), 1) if text.strip().startswith(f"{located}:"))
        assert line.startswith(f"{path}:{number}: "), line


@pytest.mark.parametrize("case", ["template without {c}", "class_order unknown id", "no test images"])
def test_the_cli_refuses_a_bad_value_in_one_line_dry_run_included(case, clipart, tmp_path, results, capsys):
    _, params, target, message, _ = next(c for c in BAD_VALUES if c[0] == case)
    path = protocol_file(tmp_path, clipart, params, target)
    for dry in (["--dry-run"], []):
        line = refused(capsys, "run", "--suite", "tiny", "--method", "zeroshot", "--protocol", path,
                       "--results", results, *dry)
        assert message in line and line.startswith(f"clipbench: error: {path}"), line
    assert not results.exists()


def test_a_template_without_c_ends_in_one_line_within_seconds(clipart, tmp_path, results, capsys):
    """The issue's headline case: before, every image was predicted as class 0 and the run completed."""
    path = protocol_file(tmp_path, clipart, {"templates": ["a photo."]})
    start = time.monotonic()
    line = refused(capsys, "run", "--suite", "tiny", "--method", "zeroshot", "finetune", "--protocol", path,
                   "--results", results)
    assert time.monotonic() - start < 10 and "has no {c}" in line and not results.exists()


@pytest.mark.parametrize("setting, message", [
    ("protocols.mine.n_experiences=0", "expected an integer >= 1"),
    ("protocols.mine.templates=['a photo.']", "has no {c}"),
    ("protocols.mine.class_order=[0, 0, 1]", "class id 0 appears 2 times"),
    ("protocols.mine.increments=[1, 1]", "add up to 2 classes, but the target has 3"),
    ("protocols.mine.initial=2", "give increment too"),
])
def test_a_bad_value_set_on_the_command_line_is_refused(setting, message, clipart, tmp_path, results, capsys):
    path = protocol_file(tmp_path, clipart)
    line = refused(capsys, "run", "--suite", "tiny", "--method", "zeroshot", "--protocol", path, "--results", results,
                   "--set", setting)
    assert message in line and not results.exists()


def test_classes_whose_prompts_read_the_same_are_refused(tmp_path, results, capsys):
    """`Cat` and `cat` (the tokenizer lower-cases): one of them could never be predicted."""
    art = clipart_folder(tmp_path)
    (art / "bird").rename(art / "Fruit")
    path = protocol_file(tmp_path, art)
    line = refused(capsys, "run", "--suite", "tiny", "--method", "zeroshot", "--protocol", path, "--results", results)
    assert "classes 'Fruit' and 'fruit' get the same prompt" in line and not results.exists()
    with pytest.raises(Exception, match="classes 'Fruit' and 'fruit' get the same prompt"):
        new_protocol("other", str(art), None, str(tmp_path / "p.yaml"))
    assert not (tmp_path / "p.yaml").exists()


def test_an_unknown_mtil_task_is_refused_at_its_line(clipart, tmp_path, capsys):
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump({"name": "m", "version": 1, "kind": "task_incremental", "builder": "mtil", "params": {
        "order": ["art", "photos"], "datasets": {"art": {"adapter": "image_folder", "root": str(clipart),
                                                         "test_fraction": 0.25}}}}, sort_keys=False))
    line = refused(capsys, "run", "--suite", "tiny", "--method", "zeroshot", "--protocol", path, "--dry-run")
    assert f"{path}:" in line and "task 'photos' is not one of the datasets (art)" in line


def test_a_captions_row_without_a_caption_is_refused(clipart, tmp_path, results, capsys):
    captions = captions_csv(tmp_path)
    rows = captions.read_text().splitlines()
    captions.write_text("\n".join(rows[:2] + [rows[2].split(",")[0] + ","] + rows[3:]) + "\n")
    with pytest.raises(Exception, match="row 3 has no caption"):
        new_protocol("mine", str(clipart), str(captions), str(tmp_path / "p.yaml"))
    assert not (tmp_path / "p.yaml").exists()
    path = protocol_file(tmp_path, clipart, {"retrieval": {"caps": {"adapter": "csv", "list": str(captions)}}})
    line = refused(capsys, "run", "--suite", "tiny", "--method", "zeroshot", "--protocol", path, "--results", results)
    assert "row 3 has no caption" in line and line.startswith(f"clipbench: error: {path}") and not results.exists()


def test_new_protocol_and_runs_agree_on_what_a_class_folder_is(tmp_path, results, capsys):
    """Item 9: a hidden folder, an empty one and a results folder inside the image folder are no classes, for
    `new protocol` and for the run of the file it writes."""
    art = clipart_folder(tmp_path)
    shutil.copytree(art / "bird", art / ".thumbnails")
    (art / "empty").mkdir()
    (art / "bird" / "._seagull.png").write_bytes(b"\x00\x05\x16\x07 resource fork")  # macOS leaves these
    path = new_protocol("mine", str(art), None, str(tmp_path / "p.yaml"))
    assert load_protocol_file(path).build(None, 0).class_names == ["bird", "flower", "fruit"]
    inside = art / "results"
    assert run_cli("run", "--suite", "tiny", "--method", "zeroshot", "--protocol", path, "--results", inside,
                   "--quiet", "--threads", "1") == 0
    [rec] = records(inside).values()
    assert rec["status"] == "complete" and rec["raw"]["class_names"] == ["bird", "flower", "fruit"]
    assert run_cli("run", "--suite", "tiny", "--method", "zeroshot", "--protocol", path, "--results", inside) == 0
    assert "1 already complete" in capsys.readouterr().err  # its own records are not data: the run id holds


def test_new_protocol_header_and_odd_class_names(tmp_path):
    """Item 21: no captions, no word of them; item 18: a class folder whose name holds a line break gives a file
    that reads back with that class."""
    art = clipart_folder(tmp_path)
    (art / "fruit").rename(art / "fruit\nbowl")
    path = new_protocol("mine", str(art), None, str(tmp_path / "p.yaml"))
    text = path.read_text()
    assert "caption" not in text.lower()
    assert load_protocol_file(path).build(None, 0).class_names == ["bird", "flower", "fruit\nbowl"]
    with_captions = new_protocol("mine2", str(art), str(captions_csv(tmp_path)), str(tmp_path / "q.yaml"))
    assert "retrieval: the captions CSV" in with_captions.read_text()


def test_text_that_is_not_utf8_is_one_line(clipart, tmp_path, capsys):
    """Item 10: a Latin-1 captions CSV given to `new protocol`, and a protocol file with a Latin-1 byte."""
    captions = captions_csv(tmp_path)
    captions.write_bytes(captions.read_bytes().replace(b"a drawing of a", "a drawing of a caf\xe9".encode("latin-1"), 1))
    line = refused(capsys, "new", "protocol", "mine", "--images", clipart, "--captions", captions, "--out", tmp_path / "p.yaml")
    assert f"{captions}:2: byte 0xe9 is not UTF-8" in line and not (tmp_path / "p.yaml").exists()
    path = protocol_file(tmp_path, clipart)
    path.write_bytes(path.read_bytes() + "description: caf\xe9\n".encode("latin-1"))
    line = refused(capsys, "run", "--suite", "tiny", "--method", "zeroshot", "--protocol", path, "--dry-run")
    assert f"{path}:{len(path.read_bytes().splitlines())}: byte 0xe9 is not UTF-8" in line


def test_a_captions_csv_with_a_byte_order_mark_reads(clipart, tmp_path):
    captions = captions_csv(tmp_path)
    captions.write_bytes(b"\xef\xbb\xbf" + captions.read_bytes())
    path = new_protocol("mine", str(clipart), str(captions), str(tmp_path / "p.yaml"))
    assert len(load_protocol_file(path).build(None, 0).retrieval_sets["mine_captions"].captions) == 8


def test_cache_dir_that_is_a_file_is_refused_up_front(tmp_path, results, capsys):
    """Item 12: before, NotADirectoryError mid-run and a failed record."""
    blocker = tmp_path / "cache"
    blocker.write_text("not a folder")
    for where in (blocker, blocker / "sub"):
        for dry in (["--dry-run"], []):
            line = refused(capsys, "run", "--suite", "tiny", "--method", "zeroshot", "--protocol", "tiny_shapes",
                           "--results", results, "--cache-dir", where, *dry)
            assert f"{blocker} is a file, not a folder" in line and not results.exists()


def test_dry_run_names_images_missing_from_a_captions_csv(clipart, tmp_path, capsys):
    """Item 17: the CSV is there, two images it lists are not."""
    captions = captions_csv(tmp_path)
    with open(captions, "a", newline="") as fh:
        csv.writer(fh).writerows([["gone.png", "a lost drawing"], ["gone2.png", "another"]])
    path = protocol_file(tmp_path, clipart, {"retrieval": {"caps": {"adapter": "csv", "list": str(captions)}}})
    assert run_cli("run", "--suite", "tiny", "--method", "zeroshot", "--protocol", path, "--dry-run") == 0
    out = capsys.readouterr().out
    assert f"MISSING retrieval caps" in out and f"2 image(s) it lists not found, e.g. {captions.parent / 'gone.png'}" in out


def test_every_shipped_protocol_passes_its_own_rules():
    """The rules refuse no protocol the project ships (their values are read and checked with the catalog)."""
    from clipbench.protocols.catalog import get_protocol, protocol_names

    assert all(get_protocol(n).version >= 1 for n in protocol_names())
    for name in ("tiny_shapes", "tiny_shapes_til"):  # mini_fashion_*: planned (and so checked) by the mini tests
        get_protocol(name).check_data(None, 0)
