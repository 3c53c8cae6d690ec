"""Failures leave nothing wrong, lost or unreadable behind (issue 19): divergence, settings that cannot
train, file modes, unreadable checkpoints, interruptions and unwritable folders, leftovers, costs."""

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest
import torch
from helpers import SMALL, records, run_cli

from clipbench import claims
from clipbench.errors import Diverged, StorageError, is_write_failure, storage_error
from clipbench.evaluator import _finite
from clipbench.leaderboard import load
from clipbench.store import ResultStore, remove_stale_temporaries

TINY = ["run", "--method", "finetune", "--protocol", "tiny_shapes", "--suite", "tiny"]


def test_diverged_run_is_recorded_as_diverged_and_stays_out_of_the_leaderboard(results, capsys):
    # two steps per experience: the first update leaves the weights non-finite, the second step's loss shows it
    sets = [*SMALL, "train.lr=1e30", "protocols.tiny_shapes.train_per_class=16"]
    assert run_cli(*TINY, "--results", results, "--set", *sets) == 1
    err = capsys.readouterr().err
    assert "DIVERGED: non-finite training loss at experience 1, step 2" in err and "1 diverged" in err
    [record] = records(results).values()
    assert record["status"] == "diverged" and record["metrics"] == {}
    assert (record["error"]["experience"], record["error"]["step"]) == (1, 2)
    assert not load(results).entries, "a diverged run never enters a leaderboard cell"
    assert run_cli("status", "--suite", "tiny", "--method", "finetune", "--protocol", "tiny_shapes",
                   "--results", results, "--set", *sets) == 0
    out = capsys.readouterr().out
    assert "1 diverged" in out and "0 complete" in out and "non-finite training loss" in out


def test_non_finite_features_at_evaluation_are_divergence():
    with pytest.raises(Diverged, match="non-finite image features at evaluation after experience 3"):
        _finite(torch.tensor([[0.5, float("nan")]]), "image features", 3)
    assert _finite(torch.ones(2), "scores", 1).sum() == 2


@pytest.mark.parametrize("args, message", [
    (["--set", "train.epochs=-1"], "train.epochs=-1 is not allowed: expected an integer >= 1"),
    (["--set", "train.epochs=0"], "train.epochs=0 is not allowed"),
    (["--set", "train.batch_size=0"], "train.batch_size=0 is not allowed: expected an integer >= 1"),
    (["--set", "eval.batch_size=-4"], "eval.batch_size=-4 is not allowed"),
    (["--set", "train.lr=0"], "train.lr=0 is not allowed: expected a number > 0"),
    (["--set", "train.lr=-1e-3"], "train.lr=-0.001 is not allowed"),
    (["--set", "methods.finetune.train.lr=0"], "train.lr=0 is not allowed"),
    (["--seeds", "0", "-1"], "seed -1 in --seeds is not allowed: expected an integer >= 0"),
])
def test_settings_that_cannot_train_are_refused_before_anything_runs(args, message, results, capsys):
    results.mkdir()
    (results / "keep.txt").write_text("untouched")
    assert run_cli(*TINY, "--results", results, *args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert [p.name for p in results.rglob("*")] == ["keep.txt"]


@pytest.mark.parametrize("flag", ["--workers", "--threads"])
def test_a_refused_flag_leaves_even_stale_temporaries_alone(flag, results, capsys):
    leftover = results / f".run.json.{claims.host_tag()}@{_dead_pid()}.abc.tmp"  # a killed write's, removable
    results.mkdir()
    leftover.write_text("{")
    assert run_cli(*TINY, "--results", results, flag, "0") == 2
    err = capsys.readouterr().err
    assert f"{flag} must be 1 or more, got 0" in err and len(err.strip().splitlines()) == 1
    assert [p.name for p in results.iterdir()] == [leftover.name], "refused up front: nothing written or removed"


def run_interrupted(results, monkeypatch, *args: str) -> None:
    """A tiny run stopped by Ctrl-C (KeyboardInterrupt) right after its next experience's checkpoint."""
    save = ResultStore.save_progress

    def save_then_stop(self, spec, checkpoint, completed, total):
        save(self, spec, checkpoint, completed, total)
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(ResultStore, "save_progress", save_then_stop)
        assert run_cli(*TINY, "--results", results, "--quiet", "--set", *SMALL, *args) == 130


def test_records_checkpoints_and_caches_follow_the_umask(results, tmp_path, monkeypatch):
    dead = f"{claims.host_tag()}@{_dead_pid()}"
    leftover = results / "cache" / f".row0-0.json.{dead}.abc.tmp"  # a killed write's
    # and a killed decode's, in a decoded-image store kept outside the results folder
    images = tmp_path / "shared-cache" / "images" / f".0123abcd.u8.{dead}.decoding.tmp"
    for path in (leftover, images):
        path.parent.mkdir(parents=True)
        path.write_text("{")
    monkeypatch.setenv("CLIPBENCH_CACHE", str(tmp_path / "shared-cache"))
    old = os.umask(0o022)
    try:
        run_interrupted(results, monkeypatch)  # to see the checkpoint too
        assert not leftover.exists(), "a runner starting on the folder removes a dead writer's temporary file"
        assert not images.exists(), "... and those of its decoded-image store"
        [checkpoint] = results.glob("runs/**/checkpoint.pt")
        assert stat.S_IMODE(checkpoint.stat().st_mode) == 0o644
        assert run_cli(*TINY, "--results", results, "--quiet", "--set", *SMALL) == 0
        os.umask(0o027)
        assert run_cli(*TINY, "--results", results, "--quiet", "--seeds", "1", "--set", *SMALL) == 0
    finally:
        os.umask(old)
    modes = {p.parent.name[:5]: stat.S_IMODE(p.stat().st_mode) for p in results.glob("runs/**/run.json")}
    assert modes == {"seed0": 0o644, "seed1": 0o640}
    caches = {stat.S_IMODE(p.stat().st_mode) for p in results.glob("cache/*.json")}
    assert caches and caches <= {0o644, 0o640}


def test_unreadable_progress_or_checkpoint_is_named_and_the_rerun_completes(results, monkeypatch, capsys):
    run_interrupted(results, monkeypatch)
    [progress] = results.glob("runs/**/progress.json")
    checkpoint = progress.with_name("checkpoint.pt")
    progress.write_text('{"completed_exp')
    run_interrupted(results, monkeypatch)  # resumes from the checkpoint, then writes progress again
    err = capsys.readouterr().err
    assert f"progress file {progress} cannot be read; the run resumes from its checkpoint" in err
    assert json.loads(progress.read_text())["completed_experiences"] == 2

    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])  # truncated
    assert run_cli(*TINY, "--results", results, "--quiet", "--set", *SMALL) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"clipbench: warning: checkpoint {checkpoint} cannot be read (")
    assert err[0].endswith("removed: the run restarts from its first experience")
    assert "If you are seeing this error" not in err[0], "torch's cause, without its advice about saving"
    [record] = records(results).values()
    assert record["status"] == "complete" and len(record["raw"]["acc_matrix"]) == 4
    assert not checkpoint.exists() and not progress.exists()


def test_results_given_as_a_file_is_one_line(results, capsys):
    results.parent.mkdir(exist_ok=True)
    results.write_text("not a folder")
    assert run_cli(*TINY, "--results", results, "--quiet", "--set", *SMALL) == 2
    err = capsys.readouterr().err
    assert err == f"clipbench: error: results folder {results} is a file, not a folder: give --results a folder " \
                  "(it is created if missing)\n"
    assert results.read_text() == "not a folder"


def test_read_only_results_folder_is_one_line(results, monkeypatch, capsys):
    results.mkdir()
    if os.getuid() != 0:  # the real thing
        results.chmod(0o555)
        cause = f"cannot write {results}: permission denied"
    else:  # root writes anywhere: a read-only run folder inside, as the file system reports it
        real_open = os.open

        def read_only(path, *args, **kwargs):
            if str(path).endswith("claim.json"):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(os, "open", read_only)
        cause = "claim.json: permission denied"
    try:
        assert run_cli(*TINY, "--results", results, "--quiet", "--set", *SMALL) == 2
    finally:
        results.chmod(0o755)
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("clipbench: error: cannot write ") and cause in err
    assert not records(results)


def test_full_disk_is_one_line_saying_so(results, monkeypatch, capsys):
    def full_disk(obj, fh):  # what torch's zip writer raises when the disk fills up under it
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", full_disk)
    assert run_cli(*TINY, "--results", results, "--quiet", "--set", *SMALL) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    [run_dir] = results.glob("runs/*/*/*/seed0-*")
    assert f"cannot write {run_dir / 'checkpoint.pt'}: the disk is full; " in err and "MB free there" in err
    assert sorted(p.name for p in run_dir.iterdir()) == [], "no record, no temporary file, the claim released"


def test_torch_write_failure_without_its_os_error_still_names_the_disk(tmp_path):
    err = storage_error(tmp_path / "checkpoint.pt", RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1 vs 2"))
    assert isinstance(err, StorageError) and "the disk is most likely full (torch: [enforce fail" in str(err)
    assert is_write_failure(RuntimeError("x")) is False


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_stale_temporary_files_are_removed_only_when_no_live_writer_holds_them(tmp_path):
    folder = tmp_path / "runs" / "p" / "m" / "model" / "seed0-abc"
    folder.mkdir(parents=True)
    here = claims.host_tag()
    names = {"dead": f".checkpoint.pt.{here}@{_dead_pid()}.k2j_x9.tmp",
             "live": f".run.json.{here}@{os.getppid()}.a1b2c3.tmp",
             "elsewhere": ".run.json.other-host@1.a1b2c3.tmp",  # another machine's runner: by age only
             "old_recent": ".progress.json.q8w7e6.tmp", "old_aged": ".run.json.zz9_yy.tmp",
             "elsewhere_aged": ".run.json.other-host@1.d4e5f6.tmp"}
    for name in names.values():
        (folder / name).write_bytes(b"x" * 10)
    hours_ago = time.time() - claims.DEFAULT_TTL - 60
    for key in ("old_aged", "elsewhere_aged"):
        os.utime(folder / names[key], (hours_ago, hours_ago))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / f".row0-1.json.{here}@{_dead_pid()}.abc.tmp").write_text("{")
    assert remove_stale_temporaries(tmp_path) == (4, 31)
    assert sorted(p.name for p in folder.iterdir()) == sorted(names[k] for k in ("live", "elsewhere", "old_recent"))
    assert not any((tmp_path / "cache").iterdir())


def test_costs_accumulate_over_the_processes_of_a_resumed_run(results, monkeypatch):
    run_interrupted(results, monkeypatch)
    [path] = results.glob("runs/**/checkpoint.pt")
    checkpoint = torch.load(path, weights_only=False)
    first = checkpoint["costs"]
    assert first["wall_seconds"] > 0 and first["processes"] == 1 and first["peak_rss_bytes"] > 2**20
    # an earlier process that took long and used much memory
    checkpoint["costs"] = {**first, "wall_seconds": 1000.0, "peak_rss_bytes": 2**40}
    torch.save(checkpoint, path)
    started = time.perf_counter()
    assert run_cli(*TINY, "--results", results, "--quiet", "--set", *SMALL) == 0
    took = time.perf_counter() - started
    [record] = records(results).values()
    costs = record["costs"]
    assert 1000.0 < costs["wall_seconds"] <= 1000.0 + took
    assert costs["peak_rss_mb"] == 2**20 and costs["processes"] == 2


@pytest.mark.slow
def test_ctrl_c_is_one_line_exit_130_and_the_run_resumes(results):
    args = [*TINY, "--quiet", "--results", str(results), "--set", "train.epochs=12",
            "protocols.tiny_shapes.train_per_class=16"]
    # SIGINT as a terminal has it, even when the tests themselves run in the background (which ignores it)
    proc = subprocess.Popen([sys.executable, "-m", "clipbench.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not list(results.glob("runs/**/progress.json")):
        time.sleep(0.02)
    assert proc.poll() is None, f"run ended before it could be interrupted: {proc.stderr.read()[-2000:]}"
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130
    assert err.splitlines() == ["clipbench: interrupted; finished experiences are kept: run the same command "
                                "again to resume"]
    assert not records(results) and not list(results.glob("runs/**/claim.json"))
    assert run_cli(*args) == 0
    [record] = records(results).values()
    assert record["status"] == "complete" and record["costs"]["processes"] == 2
