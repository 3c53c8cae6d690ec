"""What a run prints and logs: no warning a user cannot act on, progress bars (rate and ETA) only on a
terminal, and Avalanche's loggers behind `--log`."""

import csv
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from clipbench.engine import EnginePlugin
from helpers import SMALL, run_cli

CLIPBENCH = str(Path(sys.executable).parent / "clipbench")
TWO_EXPERIENCES = [*SMALL, "protocols.tiny_shapes.n_experiences=2"]


def run_quietly(*args: str) -> subprocess.CompletedProcess:
    """`clipbench` in a fresh process, its output a pipe (not a terminal), every warning shown once."""
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    return subprocess.run([CLIPBENCH, *map(str, args)], capture_output=True, text=True, env=env, timeout=1200)


def assert_no_warning(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stderr
    lines = (proc.stdout + proc.stderr).splitlines()
    assert not [line for line in lines if "warn" in line.lower()], proc.stderr
    assert "\r" not in proc.stderr and "it/s" not in proc.stderr and "step/s" not in proc.stderr  # no bars off a terminal
    assert "complete in" in proc.stderr


def test_a_tiny_run_off_a_terminal_prints_no_warning_no_bar_and_logs_its_training_loss(tmp_path):
    kinds = "csv,tensorboard" if importlib.util.find_spec("tensorboard") else "csv"
    proc = run_quietly("run", "--suite", "tiny", "--method", "finetune", "--protocol", "tiny_shapes",
                       "--results", tmp_path, "--log", kinds, "--set", *TWO_EXPERIENCES)
    assert_no_warning(proc)
    [logs] = list(tmp_path.glob("runs/tiny_shapes/finetune/*/*/logs"))
    with open(logs / "csv" / "training_results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["training_exp"] for r in rows] == ["0", "1"]  # one row per epoch of each experience
    assert all(float(r["training_loss"]) > 0 for r in rows)
    if "tensorboard" in kinds:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(logs / "tensorboard"))
        events.Reload()
        losses = events.Scalars("Loss_MB/train_phase/train_stream")
        steps = [e.step for e in losses]
        # the second experience's steps follow the first's (Avalanche's own clock restarts)
        assert steps == sorted(steps) and len(set(steps)) == len(steps) and all(e.value > 0 for e in losses)


@pytest.mark.slow
def test_a_mini_run_prints_no_warning(tmp_path):
    small = ["protocols.mini_fashion_ost.train_per_class=100", "protocols.mini_fashion_ost.test_per_class=50"]
    proc = run_quietly("run", "--suite", "mini", "--method", "zeroshot", "finetune", "--protocol", "mini_fashion_ost",
                       "--seeds", "0", "--results", tmp_path, "--set", *small)
    assert_no_warning(proc)
    assert proc.stderr.count("complete in") == 2


def test_unknown_or_missing_loggers_stop_before_anything_runs(tmp_path, capsys, monkeypatch):
    results = tmp_path / "results"
    args = ["run", "--suite", "tiny", "--method", "finetune", "--protocol", "tiny_shapes", "--results", results]
    assert run_cli(*args, "--log", "csv,tensorbord") == 2
    assert "unknown logger 'tensorbord'. Did you mean 'tensorboard'?" in capsys.readouterr().err
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    assert run_cli(*args, "--log", "wandb") == 2
    assert "--log wandb needs the package 'wandb', which is not installed: pip install wandb" in capsys.readouterr().err
    assert not results.exists()


class _Strategy:
    loss = torch.tensor(0.5)


def test_the_training_bar_shows_rate_eta_and_loss_on_a_terminal(capsys):
    plugin = EnginePlugin([], total_iterations=3, progress=True, desc="train exp 0")
    for _ in range(3):
        time.sleep(0.11)  # tqdm redraws at most every 0.1 s
        plugin.after_training_iteration(_Strategy())
    plugin.after_training_exp(_Strategy())
    err = capsys.readouterr().err
    assert "train exp 0" in err and "step/s" in err and "loss=0.500" in err
    assert "<00:00" in err  # elapsed<remaining: the ETA
    quiet = EnginePlugin([], total_iterations=3, progress=False, desc="train exp 0")
    quiet.after_training_iteration(_Strategy())
    assert capsys.readouterr().err == ""
