"""Bad and unusual input, given as a new user gives it (issue 31): each case in `CASES` ends in one line on
stderr naming the thing and the fix, exit 2, no traceback, and nothing written under the results folder.
docs/failures.md ("When things go wrong") states how many cases this file tries: `test_the_docs_state_the_count`.

Beside them, what a user keeps next to clipbench's files stays (`leaderboard --out`, the stale-temporary
sweep), flags given twice keep every value or are refused, and the data fingerprint follows what the
format reads (symlinked class folders, unrelated files, names that are not UTF-8)."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Dict, List, Tuple, Union

import pytest

from clipbench.protocols import catalog
from helpers import run_cli

FAILURES_PAGE = Path(__file__).resolve().parent.parent / "docs" / "failures.md"


@pytest.fixture(autouse=True)
def own_catalog(monkeypatch):
    monkeypatch.setenv(catalog.INCLUDE_ENV, "")  # restored after the test, whatever the CLI adds

PROTOCOL = ("version: 1\nkind: class_incremental\nbuilder: synthetic_shapes\n"
            "params: {colours: [red, green, blue, yellow], n_experiences: 2, train_per_class: 4, test_per_class: 2,"
            " heldout_per_class: 2, retrieval_images: 4, image_size: 32}\n")
SUITE = ("description: mine\nmodel: {arch: clipbench-tiny, pretrained: null}\nprotocols: [tiny_shapes]\n"
         "methods: [zeroshot]\n")


def _bomb(key: str = "x", levels: int = 12) -> str:
    """Nested aliases under `key`: under 1 KB of YAML, 10**levels values when expanded."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "\n".join(lines) + f"\n{key}: *a{levels - 1}\n"


RUN_P = ["run", "--suite", "tiny", "--method", "zeroshot", "--protocol", "{tmp}/p.yaml"]
RUN_S = ["run", "--suite", "{tmp}/s.yaml", "--all"]
RUN_C = ["run", "--suite", "tiny", "--method", "finetune", "--protocol", "tiny_shapes", "--config", "{tmp}/c.yaml"]

Files = Dict[str, Union[str, bytes]]
# (id, files written under tmp_path, argv ({tmp}: tmp_path; --results {tmp}/results is added), what stderr says)
CASES: List[Tuple[str, Files, List[str], str]] = [
    # names that become parts of paths (item 5, 15)
    ("protocol name escapes", {"p.yaml": "name: ../../escaped\n" + PROTOCOL}, RUN_P,
     "p.yaml:1: protocol name '../../escaped' cannot be used"),
    ("protocol name a number", {"p.yaml": "name: 12345\n" + PROTOCOL}, RUN_P, "protocol name 12345 cannot be used"),
    ("protocol name null", {"p.yaml": "name: null\n" + PROTOCOL}, RUN_P, "protocol name None cannot be used"),
    ("protocol name with a slash", {"p.yaml": "name: a/b\n" + PROTOCOL}, RUN_P, "protocol name 'a/b' cannot be used"),
    ("protocol name two lines", {"p.yaml": 'name: "a\\nb"\n' + PROTOCOL}, RUN_P, "protocol name 'a\\nb' cannot be used"),
    ("protocol name a dot", {"p.yaml": "name: .\n" + PROTOCOL}, RUN_P, "protocol name '.' cannot be used"),
    ("suite name escapes", {"s.yaml": "name: ../x\n" + SUITE}, RUN_S, "s.yaml:1: suite name '../x' cannot be used"),
    # protocol versions (item 10)
    ("version a word", {"p.yaml": "name: mine\n" + PROTOCOL.replace("version: 1", "version: one")}, RUN_P,
     "p.yaml:2: version must be an integer >= 1"),
    ("version infinite", {"p.yaml": "name: mine\n" + PROTOCOL.replace("version: 1", "version: .inf")}, RUN_P,
     "version must be an integer >= 1 (bump it whenever the protocol's numbers could change), got inf"),
    ("version overflows", {"p.yaml": "name: mine\n" + PROTOCOL.replace("version: 1", "version: 1e400")}, RUN_P,
     "version must be an integer >= 1"),
    ("version zero", {"p.yaml": "name: mine\n" + PROTOCOL.replace("version: 1", "version: 0")}, RUN_P,
     "version must be an integer >= 1"),
    # suite seeds and data_root (item 10)
    ("suite seeds a word", {"s.yaml": "name: mine\n" + SUITE + "seeds: [a]\n"}, RUN_S,
     "s.yaml:6: seeds: expected a list of distinct integers >= 0, e.g. [0, 1, 2], got ['a']"),
    ("suite seeds a number", {"s.yaml": "name: mine\n" + SUITE + "seeds: 5\n"}, RUN_S, "got 5"),
    ("suite seeds null", {"s.yaml": "name: mine\n" + SUITE + "seeds: null\n"}, RUN_S, "seeds: expected a list"),
    ("suite seeds a fraction", {"s.yaml": "name: mine\n" + SUITE + "seeds: [1.9]\n"}, RUN_S, "got [1.9]"),
    ("suite seeds repeated", {"s.yaml": "name: mine\n" + SUITE + "seeds: [0, 0]\n"}, RUN_S, "got [0, 0]"),
    ("suite seeds empty", {"s.yaml": "name: mine\n" + SUITE + "seeds: []\n"}, RUN_S, "got []"),
    ("suite data_root a list", {"s.yaml": "name: mine\n" + SUITE + "data_root: [a, b]\n"}, RUN_S,
     "s.yaml:6: data_root: expected one folder, got ['a', 'b']"),
    # YAML aliases (item 8)
    ("alias bomb in a protocol", {"p.yaml": "name: bomb\n" + PROTOCOL + _bomb("description")}, RUN_P,
     "p.yaml:10: YAML aliases (*name) here expand to more than 100000 values"),
    ("alias bomb in a suite", {"s.yaml": "name: mine\n" + SUITE + _bomb()}, RUN_S, "expand to more than"),
    ("alias bomb in --config", {"c.yaml": _bomb()}, RUN_C, "expand to more than"),
    ("alias holding itself", {"p.yaml": "name: mine\n" + PROTOCOL + "description: &d [*d]\n"}, RUN_P,
     "p.yaml:6: a YAML alias (*name) refers to a value that contains it"),
    ("YAML nested too deeply", {"p.yaml": "name: mine\n" + PROTOCOL + "description: " + "[" * 20000 + "]" * 20000},
     RUN_P, "p.yaml: YAML nested too deeply"),
    # --config dotted keys (item 4)
    ("config dotted key not a number", {"c.yaml": "train.lr: abc\n"}, RUN_C,
     "c.yaml:1: train.lr='abc' is not allowed: expected a number > 0"),
    ("config dotted key of a method", {"c.yaml": "methods.finetune.train.lr: -1\n"}, RUN_C,
     "c.yaml:1: methods.finetune.train.lr=-1 is not allowed"),
    ("config key nested and dotted", {"c.yaml": "train:\n  lr: 0.1\ntrain.lr: 0.5\n"}, RUN_C,
     "c.yaml:3: setting 'train.lr' is given twice (nested and dotted); keep one"),
    ("config dotted key unknown", {"c.yaml": "train.lrr: 0.5\n"}, RUN_C, "c.yaml:1: unknown setting 'train.lrr'"),
]


def _write(tmp_path: Path, files: Files) -> None:
    for name, text in files.items():
        path = tmp_path / name
        path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)


@pytest.mark.parametrize("files, argv, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_nothing_written(files, argv, message, tmp_path, capsys):
    _write(tmp_path, files)
    results = tmp_path / "results"
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    started = time.perf_counter()
    assert run_cli(*argv, "--results", results) == 2
    assert time.perf_counter() - started < 20
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not results.exists(), "refused before anything is written"
    assert not (tmp_path.parent / "escaped").exists() and not list(tmp_path.parent.glob("runs"))


def test_the_docs_state_the_count():
    """docs/failures.md's count: the cases above, `leaderboard`'s (LEADERBOARD_CASES) and flags given twice (REPEATS)."""
    count = re.search(r"(\d+) cases of bad input \(`tests/test_bad_inputs\.py`\)", FAILURES_PAGE.read_text())
    tried = len(CASES) + len(LEADERBOARD_CASES) + len(REPEATS)
    assert count and int(count.group(1)) == tried, f"docs/failures.md should say {tried}"


# ---- --config: a dotted key is applied as --set applies it (item 4)

def test_a_dotted_key_in_config_is_applied_as_set_applies_it(tmp_path):
    from clipbench.plan import plan

    (tmp_path / "dotted.yaml").write_text("train.lr: 0.5\nmethods.finetune.train.epochs: 2\n")
    (tmp_path / "nested.yaml").write_text("train:\n  lr: 0.5\nmethods:\n  finetune:\n    train:\n      epochs: 2\n")
    specs = {name: plan("tiny", ["finetune"], ["tiny_shapes"], None, str(tmp_path / f"{name}.yaml"), [])[0]
             for name in ("dotted", "nested")}
    set_spec = plan("tiny", ["finetune"], ["tiny_shapes"], None, None,
                    ["train.lr=0.5", "methods.finetune.train.epochs=2"])[0]
    assert specs["dotted"].train["lr"] == 0.5 and specs["dotted"].train["epochs"] == 2
    assert specs["dotted"].id == specs["nested"].id == set_spec.id


# ---- the data fingerprint: what the format reads (items 3, 14, 10)

def _image_folder(root: Path, classes=("red", "green", "blue"), per_class: int = 4) -> Path:
    from PIL import Image

    colours = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "grey": (128, 128, 128)}
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (16, 16), colours[name]).save(root / name / f"{i}.png")
    return root


def _image_protocol(tmp_path: Path, images: Path) -> Path:
    path = tmp_path / "mine.yaml"
    path.write_text(f"name: mine\nversion: 1\nkind: class_incremental\nbuilder: datasets\nparams:\n"
                    f"  target: {{adapter: image_folder, root: '{images}', test_fraction: 0.5}}\n"
                    f"  n_experiences: 1\n  templates: ['a photo of a {{c}}.']\n")
    return path


def _data(protocol: Path) -> Dict[str, str]:
    from clipbench.plan import plan

    return plan("tiny", ["zeroshot"], [catalog.protocol_ref(str(protocol))], strict_weights=False)[0].data


def test_files_the_format_does_not_read_leave_the_data_as_it_was(tmp_path):
    images = _image_folder(tmp_path / "imgs")
    protocol = _image_protocol(tmp_path, images)
    before = _data(protocol)
    (images / "notes.txt").write_text("mine")
    (images / "red" / ".DS_Store").write_bytes(b"\0\1")
    (images / "green" / "README").write_text("where these came from")
    assert _data(protocol) == before, "no image changed"
    (images / "blue" / "4.png").write_bytes((images / "blue" / "0.png").read_bytes())
    assert _data(protocol) != before, "an added image is other data"


def test_a_symlinked_class_folder_is_part_of_the_data(tmp_path):
    images = _image_folder(tmp_path / "imgs", ("red", "green"))
    elsewhere = _image_folder(tmp_path / "shared", ("blue",))
    (images / "blue").symlink_to(elsewhere / "blue", target_is_directory=True)
    (images / "red" / "loop").symlink_to(images, target_is_directory=True)  # a link back up: read once
    protocol = _image_protocol(tmp_path, images)
    before = _data(protocol)
    (elsewhere / "blue" / "4.png").write_bytes((elsewhere / "blue" / "0.png").read_bytes())
    assert _data(protocol) != before, "an image added in the linked folder is other data"
    from clipbench.protocols.fingerprint import _lines

    lines = _lines(images, {".png"})
    assert sum(line.startswith("blue/") for line in lines) == 5 and len(lines) == 5 + 2 * 4


def test_a_file_name_that_is_not_utf8_runs_and_shows_in_status(tmp_path, capsys):
    images = _image_folder(tmp_path / "imgs")
    (images / "red").joinpath(b"caf\xe9.png".decode("utf-8", "surrogateescape")).write_bytes(
        (images / "red" / "0.png").read_bytes())
    protocol = _image_protocol(tmp_path, images)
    results = tmp_path / "results"
    for argv in (["run", "--dry-run"], ["run", "--quiet", "--threads", "1"], ["status"]):
        assert run_cli(*argv, "--suite", "tiny", "--method", "zeroshot", "--protocol", protocol, "--results", results) == 0
    out = capsys.readouterr().out
    assert "1 complete" in out and "Traceback" not in out


# ---- never delete what clipbench did not write (items 1, 2)

def test_leaderboard_out_removes_only_what_it_wrote(tmp_path, capsys):
    from test_leaderboard import record, write_records

    results, out = tmp_path / "results", tmp_path / "lb"
    write_records(results, [record(m, s, 0.8, 0.5) for m in ("alpha", "gamma") for s in range(2)])
    picture = (tmp_path / "mine.png")
    from PIL import Image

    Image.new("RGB", (4, 4)).save(picture)
    mine = [out / "NOTES.md", out / "mine.png", out / "demo" / "NOTES.md", out / "demo" / "proto" / "mine.png",
            out / "demo" / "pics" / "deep" / "mine.png", out / "demo" / "proto.md.bak"]
    for path in mine:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(picture.read_bytes())
    assert run_cli("leaderboard", "--results", results, "--out", out) == 0
    gamma = sorted(out.rglob("*gamma*"))
    assert gamma and all(p.exists() for p in mine)
    for path in results.glob("runs/proto/gamma/*"):
        path.joinpath("run.json").unlink()
    assert run_cli("leaderboard", "--results", results, "--out", out) == 0
    assert not any(p.exists() for p in gamma), "its own pages and pictures of runs gone are removed"
    assert all(p.exists() for p in mine), "the user's files stay"
    assert run_cli("leaderboard", "--results", results, "--out", out, "--check") == 0, "the user's files are not its"


def test_the_stale_temporary_sweep_removes_only_clipbench_temporaries(tmp_path, capsys):
    from helpers import SMALL

    from clipbench import claims
    from test_failures import _dead_pid

    results = tmp_path / "results"
    hours_ago = time.time() - claims.DEFAULT_TTL - 60
    mine = [results / ".draft.tmp", results / "notes" / ".my.draft.tmp", results / "runs" / ".x.abcdef12.tmp",
            results / ".run.json.tmp"]
    theirs = [results / "runs" / f".run.json.{claims.host_tag()}@{_dead_pid()}.k2j_x9ab.tmp",
              results / "runs" / ".progress.json.q8w7e6ab.tmp"]  # a killed write's, and an older version's (aged)
    for path in mine + theirs:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("draft")
        os.utime(path, (hours_ago, hours_ago))
    assert run_cli("run", "--suite", "tiny", "--method", "zeroshot", "--protocol", "tiny_shapes", "--quiet",
                   "--results", results, "--set", *SMALL) == 0
    assert "removed 2 temporary file(s)" in capsys.readouterr().err
    assert all(p.exists() for p in mine) and not any(p.exists() for p in theirs)


# ---- leaderboard: an unknown suite or results folder (item 7)

LEADERBOARD_CASES = [
    (["--suite", "tinyy"], "unknown suite 'tinyy'. Did you mean 'tiny'?"),
    (["--suite", "demoo", "--print"], "unknown suite 'demoo'. Did you mean 'demo'?"),
    (["--results", "{tmp}/resluts"], "--results {tmp}/resluts: no such folder"),
    (["--results", "{tmp}/resluts", "--print"], "no such folder"),
]


@pytest.mark.parametrize("argv, message", LEADERBOARD_CASES)
def test_leaderboard_refuses_an_unknown_suite_or_results_folder(argv, message, tmp_path, capsys):
    from test_leaderboard import record, write_records

    results, out = tmp_path / "results", tmp_path / "lb"
    write_records(results, [record("alpha", 0, 0.8, 0.5)])
    out.mkdir()
    before = "[the leaderboard of every suite]"
    (out / "leaderboard.json").write_text(before)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    argv += [] if "--results" in argv else ["--results", str(results)]
    assert run_cli("leaderboard", "--out", out, *argv) == 2
    err = capsys.readouterr().err
    assert message.replace("{tmp}", str(tmp_path)) in err and len(err.strip().splitlines()) == 1
    assert (out / "leaderboard.json").read_text() == before and not (tmp_path / "resluts").exists()
    assert run_cli("leaderboard", "--results", results, "--suite", "demo", "--print") == 0, "a suite of the records"


# ---- flags given twice: every value kept, or refused (item 13)

REPEATS = [
    ["run", "--suite", "tiny", "--suite", "mini", "--all", "--dry-run"],
    ["run", "--all", "--suite", "tiny", "--results", "a", "--results", "b"],
    ["run", "--all", "--suite", "tiny", "--config", "a.yaml", "--config", "b.yaml"],
    ["run", "--all", "--suite", "tiny", "--device", "cpu", "--device", "cuda"],
    ["run", "--all", "--suite", "tiny", "--threads", "1", "--threads", "2"],
    ["run", "--all", "--suite", "tiny", "--shard", "0/2", "--shard", "1/2"],
    ["status", "--suite", "tiny", "--results", "a", "--results", "b"],
    ["leaderboard", "--out", "a", "--out", "b"],
]


@pytest.mark.parametrize("argv", REPEATS, ids=[" ".join(a[:1] + a[-2:-1]) for a in REPEATS])
def test_a_flag_that_takes_one_value_is_refused_when_given_twice(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run_cli(*argv) == 2
    err = capsys.readouterr().err
    flag = next(a for a in argv if a.startswith("--") and argv.count(a) == 2)
    assert err.startswith(f"clipbench: error: {flag} given twice (") and err.endswith("; give it once\n")
    assert not any(tmp_path.iterdir()), "nothing written"


def test_repeated_set_method_protocol_seeds_and_include_keep_every_value(tmp_path, capsys):
    from clipbench.plan import plan

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for folder, name in (("a", "mine_a"), ("b", "mine_b")):
        (tmp_path / folder / f"{name}.yaml").write_text(f"name: {name}\n" + PROTOCOL)
    argv = ["--suite", "tiny", "--method", "finetune", "--method", "zeroshot", "--protocol", "tiny_shapes",
            "--protocol", "mine_a", "--protocol", "mine_b", "--seeds", "0", "--seeds", "1", "--seeds", "1",
            "--set", "train.lr=0.5", "--set", "train.epochs=2", "--method", "finetune",
            "--include", tmp_path / "a", "--include", tmp_path / "b", "--results", tmp_path / "results"]
    assert run_cli("run", *argv, "--dry-run") == 0
    out = capsys.readouterr().out
    expected = plan("tiny", ["finetune", "zeroshot"], ["tiny_shapes", "mine_a", "mine_b"], [0, 1], None,
                    ["train.lr=0.5", "train.epochs=2"], strict_weights=False)
    assert out.startswith(f"plan: {len(expected)} run(s)") and len(expected) == 2 * 3 * 2
    assert all(spec.id in out for spec in expected)
    assert all(spec.train["lr"] == 0.5 and spec.train["epochs"] == 2 for spec in expected if spec.method == "finetune")
    assert run_cli("status", *argv) == 0
    out = capsys.readouterr().out
    assert all(spec.id in out for spec in expected) and f"{len(expected)} missing" in out


# ---- messages (items 15, 16, 19, 20)

def test_a_reader_that_leaves_stops_the_output_quietly(tmp_path, monkeypatch, capsys):
    class Gone:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr("sys.stdout", Gone())
    assert run_cli("run", "--all", "--suite", "tiny", "--dry-run", "--results", tmp_path / "results") == 141
    assert capsys.readouterr().err == "", "as `yes | head -1`: nothing said"


def test_quiet_still_says_why_a_run_failed(results, monkeypatch, capsys):
    from helpers import SMALL

    from clipbench import runner

    def boom(*args, **kwargs):
        raise RuntimeError("the data went away")

    monkeypatch.setattr(runner, "_run_experiences", boom)
    assert run_cli("run", "--suite", "tiny", "--method", "zeroshot", "--protocol", "tiny_shapes", "--quiet",
                   "--results", results, "--set", *SMALL) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith("FAILED: RuntimeError: the data went away")


def test_status_says_partial_where_run_resumes_from_the_checkpoint(results, monkeypatch, capsys):
    from helpers import SMALL

    from test_failures import TINY, run_interrupted

    run_interrupted(results, monkeypatch)
    [progress] = results.glob("runs/**/progress.json")
    progress.write_text('{"completed_exp')
    status = ["status", "--suite", "tiny", "--method", "finetune", "--protocol", "tiny_shapes", "--results", results,
              "--set", *SMALL]
    capsys.readouterr()
    assert run_cli(*status) == 0
    out = capsys.readouterr().out
    assert "  partial " in out and "its progress file cannot be read; `run` resumes from its checkpoint" in out
    assert "1 partial" in out and "0 missing" in out
    assert TINY[1:3] == ["--method", "finetune"]


def test_a_protocol_without_heldout_sets_draws_its_curves_without_warnings(tmp_path):
    import warnings

    from test_leaderboard import record, write_records

    from clipbench.leaderboard import write

    recs = [record("alpha", 0, 0.8, 0.5), record("beta", 0, 0.7, 0.5)]
    for rec in recs:
        rec["raw"].pop("zeroshot")
    write_records(tmp_path / "results", recs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        files = write(tmp_path / "results", tmp_path / "lb")
    assert any(p.name == "proto_curves.png" for p in files)
