"""A run killed with SIGKILL mid-stream resumes from its last finished experience, with equal numbers."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import records, run_cli, strip_volatile

ARGS = ["run", "--method", "finetune", "--protocol", "tiny_shapes", "--suite", "tiny", "--quiet",
        # enough epochs that an experience takes a few seconds, so the kill lands mid-stream
        "--set", "train.epochs=12", "protocols.tiny_shapes.train_per_class=16"]


def _progress_files(results: Path):
    return list(results.glob("runs/**/progress.json"))


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    proc = subprocess.Popen([sys.executable, "-m", "clipbench.cli", *ARGS, "--results", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    done = 0
    while time.time() < deadline and proc.poll() is None:
        files = _progress_files(killed)
        if files:
            done = json.loads(files[0].read_text())["completed_experiences"]
            if done >= 1:
                break
        time.sleep(0.02)
    assert proc.poll() is None, f"run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 1 <= done < 3
    assert not records(killed), "a killed run must not leave a record"

    # the status command sees it as partial
    assert run_cli("status", "--suite", "tiny", "--results", killed) == 0

    assert run_cli(*ARGS, "--results", killed) == 0  # resumes
    assert run_cli(*ARGS, "--results", clean) == 0  # uninterrupted
    [resumed] = records(killed).values()
    [reference] = records(clean).values()
    assert resumed["status"] == reference["status"] == "complete"
    assert strip_volatile(resumed) == strip_volatile(reference)
    assert not _progress_files(killed), "progress and checkpoint are removed once complete"
