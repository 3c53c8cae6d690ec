"""`clipbench run --jobs N`: the calling process and N - 1 worker processes share the runs (clipbench.workers)."""

import multiprocessing
import time

import pytest

from helpers import SMALL, records, run_cli


@pytest.fixture
def jobs_unset(monkeypatch):
    monkeypatch.delenv("CLIPBENCH_JOBS")


def test_the_calling_process_runs_runs_beside_its_worker(tmp_path, monkeypatch, jobs_unset):
    """Both processes take runs from one order: the caller runs some (not all), the worker the rest, every run
    once, and the workers are gone afterwards."""
    import clipbench.runner as runner

    here = []
    real = runner.run_one

    def run_here(spec, *args, **kwargs):
        # tiny runs take under a second: from its second run on, this process lets the worker (seconds to
        # import) finish one first, or it would run them all itself, as it should
        deadline = time.monotonic() + 120
        while here and len(list(tmp_path.glob("runs/**/run.json"))) <= len(here) and time.monotonic() < deadline:
            time.sleep(0.1)
        here.append(spec.method)
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(runner, "run_one", run_here)
    methods = ["zeroshot", "finetune", "lwf", "er", "ewc", "imm"]
    assert run_cli("run", "--method", *methods, "--suite", "tiny", "--protocol", "tiny_shapes", "--results",
                   str(tmp_path), "--quiet", "--jobs", "2", "--set", *SMALL) == 0
    done = records(tmp_path)
    assert sorted(r["spec"]["method"] for r in done.values()) == sorted(methods)
    assert all(r["status"] == "complete" and r["provenance"]["torch_threads"] == 1 for r in done.values())
    assert 1 <= len(here) < len(methods) and len(set(here)) == len(here)
    assert not multiprocessing.active_children()


def test_a_command_refused_after_its_workers_started_writes_nothing_and_stops_them(tmp_path, jobs_unset, capsys):
    """`--jobs 2` starts a worker before planning; a plan refused then (an unknown method) still exits 2 with one
    line, writes nothing, and leaves no worker behind."""
    results = tmp_path / "results"
    assert run_cli("run", "--method", "no_such_method", "--suite", "tiny", "--results", str(results), "--jobs",
                   "2") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no_such_method" in err[0]
    assert not results.exists()
    assert not multiprocessing.active_children()
