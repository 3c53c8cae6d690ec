"""The grid on Slurm (a real single-node cluster started by the tests) and on a local Ray cluster."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import cluster
from helpers import SMALL, records, run_cli, strip_volatile

GRID = ["run", "--method", "finetune", "lwf", "--protocol", "tiny_shapes", "--suite", "tiny", "--quiet", "--set", *SMALL]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    why = cluster.available()
    if why:
        pytest.skip(why)
    folder = tmp_path_factory.mktemp("slurm")
    env = cluster.start(folder)
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = env["SLURM_CONF"]
    yield env
    cluster.stop(folder, env)
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old


def by_method(results: Path):
    return {r["spec"]["method"]: strip_volatile(r) for r in records(results).values()}


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory):
    results = tmp_path_factory.mktemp("local")
    assert run_cli(*GRID, "--results", results) == 0
    return by_method(results)


def test_grid_through_slurm_equals_local(slurm, tmp_path, local_reference):
    results = tmp_path / "slurm-results"
    assert run_cli(*GRID, "--results", results, "--executor", "slurm", "--wait", "--mem-gb", "1") == 0
    assert by_method(results) == local_reference
    submitted = json.loads((results / "slurm" / "submitted.json").read_text())
    assert len(submitted) == 2 and len({j.split("_")[0] for j in submitted.values()}) == 1  # one job array


def test_requeued_slurm_job_finishes_from_its_checkpoint(slurm, tmp_path):
    slow = ["run", "--method", "finetune", "--protocol", "tiny_shapes", "--suite", "tiny", "--quiet",
            "--set", "train.epochs=12", "protocols.tiny_shapes.train_per_class=16"]
    results, reference = tmp_path / "requeued", tmp_path / "reference"
    assert run_cli(*slow, "--results", results, "--executor", "slurm", "--mem-gb", "1") == 0
    job = next(iter(json.loads((results / "slurm" / "submitted.json").read_text()).values()))
    deadline = time.time() + 180
    while time.time() < deadline:
        progress = list(results.glob("runs/**/progress.json"))
        if progress and json.loads(progress[0].read_text())["completed_experiences"] >= 1:
            break
        time.sleep(0.2)
    else:
        pytest.fail("the Slurm job never finished an experience")
    assert not records(results)
    # what Slurm sends before preemption or the time limit: submitit checkpoints, requeues and exits
    subprocess.run(["scancel", "--signal=USR2", job], check=True, env=slurm)
    deadline = time.time() + 120
    while time.time() < deadline:
        state = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, env=slurm).stdout
        if "PENDING" in state:
            break
        time.sleep(0.2)
    # a requeued job waits behind a start-time delay; let it start now
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True, env=slurm)
    deadline = time.time() + 300
    while time.time() < deadline and not records(results):
        time.sleep(1)
    [done] = records(results).values()
    log = "".join(p.read_text() for p in (results / "slurm").glob("*/*_log.err"))
    assert "Requeued job" in log and "resuming from experience" in log
    assert run_cli(*slow, "--results", reference) == 0
    [ref] = records(reference).values()
    assert strip_volatile(done) == strip_volatile(ref)


def test_grid_through_ray_equals_local(tmp_path, local_reference):
    pytest.importorskip("ray")
    results = tmp_path / "ray-results"
    assert run_cli(*GRID, "--results", results, "--executor", "ray", "--cpus", "1") == 0
    assert by_method(results) == local_reference


def test_local_executor_needs_neither_engine(tmp_path):
    code = ("import sys; sys.modules['ray'] = None; sys.modules['submitit'] = None\n"
            "from clipbench.cli import main\n"
            f"sys.exit(main({GRID + ['--results', str(tmp_path)]!r}))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
    assert len(records(tmp_path)) == 2
