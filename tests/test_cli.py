"""The CLI in-process, as a user would call it."""

import json

import pytest
import torch

from helpers import SMALL, records, run_cli, snapshot


def test_list_methods_json(capsys):
    assert run_cli("list", "methods", "--json") == 0
    names = {m["name"] for m in json.loads(capsys.readouterr().out)}
    assert {"zeroshot", "finetune"} <= names


def test_list_suites_and_protocols(capsys):
    assert run_cli("list", "suites") == 0
    assert "tiny" in capsys.readouterr().out
    assert run_cli("list", "protocols", "--json") == 0
    assert "tiny_shapes" in {p["name"] for p in json.loads(capsys.readouterr().out)}


def test_run_all_tiny_writes_complete_records_then_rewrites_nothing(results, capsys):
    # every registered method on the suite's task-incremental protocol, small (test_methods_contract runs each
    # method on the class-incremental one; `make test-slow` runs the whole grid at full size)
    small = [s.replace("tiny_shapes.", "tiny_shapes_til.") for s in SMALL]
    assert run_cli("run", "--all", "--suite", "tiny", "--protocol", "tiny_shapes_til", "--results", results, "--quiet",
                   "--set", *small) == 0
    recs = records(results)
    from clipbench.methods.base import METHODS

    assert len(recs) == len(METHODS.names())
    from clipbench.plan import not_applicable
    from clipbench.spec import RunSpec

    for rec in recs.values():
        reason = not_applicable(RunSpec.from_dict(rec["spec"]))  # what the method declares for this pair
        if reason is not None:  # n/a by declaration: a record that says why, nothing ran
            assert rec["status"] == "n/a" and rec["reason"] == reason
            continue
        assert rec["status"] == "complete"
        assert set(rec) >= {"schema_version", "status", "spec", "raw", "metrics", "provenance"}
        assert len(rec["raw"]["acc_matrix"]) == 4  # row 0 + 3 experiences
        assert {"last", "avg", "bwt", "zs_retention", "i2t_r1"} <= set(rec["metrics"])
        prov = rec["provenance"]
        assert {"git_commit", "git_dirty", "versions", "device", "precision", "argv", "started", "ended"} <= set(prov)
        assert {"python", "torch", "open_clip", "avalanche", "clipbench"} <= set(prov["versions"])
        # the kernel family a CPU run is bit-exact on
        assert prov["cpu"]["torch_capability"] == torch.backends.cpu.get_cpu_capability() and prov["cpu"]["model"]
    before = snapshot(results)
    assert run_cli("run", "--all", "--suite", "tiny", "--protocol", "tiny_shapes_til", "--results", results,
                   "--set", *small) == 0
    assert "already complete" in capsys.readouterr().err
    assert snapshot(results) == before


@pytest.mark.slow
def test_run_all_tiny_full_grid_completes(results):
    assert run_cli("run", "--all", "--suite", "tiny", "--results", results, "--quiet") == 0
    from clipbench.methods.base import METHODS

    recs = records(results)
    assert len(recs) == 2 * len(METHODS.names()) and all(r["status"] == "complete" for r in recs.values())


def test_zeroshot_rows_are_the_untrained_model(results):
    assert run_cli("run", "--method", "zeroshot", "--protocol", "tiny_shapes", "--suite", "tiny",
                   "--results", results, "--quiet", "--set", *SMALL) == 0
    [rec] = records(results).values()
    assert rec["metrics"]["zs_retention"] == 1.0
    zs = rec["raw"]["zeroshot"]["shapes"]
    assert len(set(zs)) == 1 and len(zs) == 4


def test_finetune_changes_the_model(results):
    assert run_cli("run", "--method", "finetune", "--protocol", "tiny_shapes", "--suite", "tiny",
                   "--results", results, "--quiet", "--set", *SMALL, "train.epochs=3") == 0
    [rec] = records(results).values()
    assert len(set(rec["raw"]["zeroshot"]["shapes"])) > 1 or len(set(map(tuple, rec["raw"]["acc_matrix"]))) > 1
    assert rec["costs"]["trainable_params"] > 0 and rec["costs"]["extra_memory_mb"] == 0.0


def test_dry_run_prints_plan_and_runs_nothing(results, capsys):
    assert run_cli("run", "--all", "--suite", "tiny", "--results", results, "--dry-run") == 0
    out = capsys.readouterr().out
    assert "finetune" in out and "[missing]" in out
    assert not results.exists()


def test_status_and_leaderboard(results, capsys):
    run_cli("run", "--method", "zeroshot", "--suite", "tiny", "--results", results, "--quiet", "--set", *SMALL)
    capsys.readouterr()
    assert run_cli("status", "--suite", "tiny", "--results", results) == 0
    out = capsys.readouterr().out
    assert "complete" in out and "missing" in out
    assert run_cli("leaderboard", "--results", results, "--print") == 0
    out = capsys.readouterr().out
    assert "| zeroshot" in out and "last" in out


BAD_INPUTS = [
    (["run", "--method", "finetun", "--suite", "tiny"], "unknown method 'finetun'"),
    (["run", "--all", "--suite", "tiny", "--protocol", "nope"], "unknown protocol 'nope'"),
    (["run", "--all", "--suite", "tinyy"], "unknown suite 'tinyy'. Did you mean 'tiny'"),
    (["run", "--all", "--suite", "tiny", "--set", "train.lrr=3"], "unknown setting 'train.lrr'"),
    (["run", "--all", "--suite", "tiny", "--set", "model.pretrained=/no/such/file.pt"], "checkpoint file not found"),
    (["run", "--all", "--suite", "tiny", "--set", "model.arch=ViT-B-32", "model.pretrained=openai"], "cannot be reached"),
]


@pytest.mark.parametrize("argv, message", BAD_INPUTS)
def test_bad_input_one_line_exit_2_no_record(argv, message, results, capsys):
    assert run_cli(*argv, "--results", results) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not records(results)


@pytest.mark.parametrize("setting, message", [
    ("train.lr=abc", "train.lr='abc' is not allowed: expected a number > 0"),
    ("train.epochs=-1", "train.epochs=-1 is not allowed: expected an integer >= 1"),
])
def test_bad_train_value_stops_before_anything_is_written(setting, message, results, capsys):
    assert run_cli("run", "--all", "--suite", "tiny", "--results", results, "--set", setting) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not results.exists() or not any(results.rglob("*"))


def test_malformed_config_yaml(results, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {lr: 1e-3\n")
    assert run_cli("run", "--all", "--suite", "tiny", "--config", bad, "--results", results) == 2
    err = capsys.readouterr().err
    assert f"{bad}:" in err and "malformed YAML" in err


def test_unreadable_checkpoint(results, tmp_path, capsys):
    ckpt = tmp_path / "broken.pt"
    ckpt.write_bytes(b"not a checkpoint")
    assert run_cli("run", "--method", "zeroshot", "--suite", "tiny", "--results", results, "--quiet",
                   "--set", f"model.pretrained={ckpt}") == 2
    assert "cannot load model" in capsys.readouterr().err
    assert not records(results)


def test_failed_invocation_never_touches_completed_records(results):
    assert run_cli("run", "--method", "zeroshot", "--suite", "tiny", "--results", results, "--quiet", "--set", *SMALL) == 0
    before = snapshot(results)
    assert run_cli("run", "--all", "--suite", "tiny", "--results", results, "--set", "bogus.key=1") == 2
    assert snapshot(results) == before


def test_methods_that_keep_state_report_its_memory(results):
    assert run_cli("run", "--method", "lwf", "er", "--protocol", "tiny_shapes", "--suite", "tiny", "--results", results,
                   "--quiet", "--set", *SMALL) == 0
    costs = {r["spec"]["method"]: r["costs"] for r in records(results).values()}
    assert costs["lwf"]["extra_memory_mb"] > 0  # its teacher
    assert costs["er"]["extra_memory_mb"] > 0  # its buffer


def test_methods_that_keep_exemplars_report_how_many(results):
    assert run_cli("run", "--method", "lwf", "er", "proof", "--protocol", "tiny_shapes", "--suite", "tiny", "--results",
                   results, "--quiet", "--set", *SMALL) == 0
    recs = {r["spec"]["method"]: r for r in records(results).values()}
    assert recs["lwf"]["costs"]["exemplars"] == 0
    seen = sum(recs["er"]["raw"]["train_sizes"])  # the budgets (200, 2000) exceed the tiny stream: every image kept
    assert recs["er"]["costs"]["exemplars"] == recs["proof"]["costs"]["exemplars"] == seen > 0


def test_provenance_is_the_code_loaded_at_start(results, monkeypatch):
    """A commit made while a grid runs must not be credited with its numbers."""
    from clipbench import provenance

    provenance.code_version.cache_clear()
    calls = []
    real_git = provenance._git
    monkeypatch.setattr(provenance, "_git", lambda *a: calls.append(a) or real_git(*a))
    assert run_cli("run", "--method", "zeroshot", "finetune", "--protocol", "tiny_shapes", "--suite", "tiny",
                   "--results", results, "--quiet", "--set", *SMALL) == 0
    assert len(calls) == 2  # rev-parse and status, once for the whole invocation
    for rec in records(results).values():
        assert rec["costs"]["peak_rss_mb"] > 100  # sampled while the run executed


def test_changed_results_do_not_make_the_code_dirty(tmp_path, monkeypatch):
    import subprocess

    from clipbench import provenance

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                       check=True, capture_output=True)

    for folder in ("benchmark", "methods", "results/published"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "methods" / "code.py").write_text("x = 1\n")
    (tmp_path / "results" / "published" / "run.json").write_text("{}\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "start")
    monkeypatch.setattr(provenance, "SOURCE_DIR", tmp_path / "benchmark")  # as installed: the package folder
    provenance.code_version.cache_clear()
    (tmp_path / "results" / "published" / "run.json").unlink()  # a grid regenerating published records
    assert provenance.code_version()["git_dirty"] is False
    provenance.code_version.cache_clear()
    (tmp_path / "methods" / "code.py").write_text("x = 2\n")  # code outside the package folder counts too
    assert provenance.code_version()["git_dirty"] is True
    provenance.code_version.cache_clear()
