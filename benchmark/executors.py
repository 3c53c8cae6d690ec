"""Where runs execute: this process (default), a Slurm job array through submitit, or Ray tasks.

Every executor calls `runner.run_one` per run, so claims, checkpoints and records behave the same
everywhere: a requeued or retried run resumes from its last finished experience, and two
executors sharing a results folder never run the same run twice. submitit and ray are optional
extras (`pip install clipbench[slurm]`, `clipbench[ray]`), imported only when chosen.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any, Dict, Optional, Sequence, Tuple

from clipbench.protocols.catalog import Resources  # a suite's `resources:`, checked there

from .errors import ClipbenchError
from .runner import RunOptions, Summary, run_one, unfinished
from .spec import RunSpec
from .store import ResultStore, atomic_write_json


def _import(name: str, extra: str):
    try:
        return __import__(name)
    except ImportError:
        raise ClipbenchError(f"--executor {extra} needs the package '{name}': pip install 'clipbench[{extra}]'") from None


class SlurmRun:
    """The callable one Slurm array task runs; submitit requeues it on preemption or timeout."""

    def __init__(self, results: str, device: str, log: Tuple[str, ...] = ()):
        self.results, self.device, self.log = results, device, log

    def __call__(self, spec: Dict[str, Any]) -> str:
        return run_one(RunSpec.from_dict(spec), ResultStore(self.results), self.device, False,
                       ["clipbench", "slurm"], quiet=False, options=RunOptions(log=self.log))

    def checkpoint(self, spec: Dict[str, Any]):
        # state lives in the run's own checkpoint: requeue the same call, which resumes from it
        import submitit

        return submitit.helpers.DelayedSubmission(SlurmRun(self.results, self.device, self.log), spec)


def submit_slurm(specs: Sequence[RunSpec], store: ResultStore, resources: Resources, device: str, wait: bool,
                 log: Tuple[str, ...] = ()) -> Summary:
    """One job array for the plan's unfinished runs; records land in `store` (`log`: `--log`'s loggers)."""
    submitit = _import("submitit", "slurm")
    todo, summary = unfinished(specs, store)
    if not todo:
        return summary
    folder = store.root / "slurm"
    executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster="slurm", slurm_max_num_timeout=10)
    params: Dict[str, Any] = dict(slurm_array_parallelism=len(todo), cpus_per_task=resources.cpus,
                                  mem_gb=resources.mem_gb, timeout_min=resources.time_min)
    if resources.gpus:
        params["gpus_per_node"] = resources.gpus
    if resources.partition:
        params["slurm_partition"] = resources.partition
    executor.update_parameters(**params)
    jobs = executor.map_array(SlurmRun(str(store.root.resolve()), device, log), [s.portable_dict() for s in todo])
    submitted = {s.id: j.job_id for s, j in zip(todo, jobs)}
    previous = json.loads((folder / "submitted.json").read_text()) if (folder / "submitted.json").is_file() else {}
    atomic_write_json(folder / "submitted.json", {**previous, **submitted})
    print(f"submitted {len(jobs)} run(s) as Slurm job array {jobs[0].job_id.split('_')[0]}; "
          f"`clipbench status --results {store.root}` follows them", file=sys.stderr)
    if wait:
        for job in jobs:
            try:
                outcome = job.result()
            except Exception as err:  # the job itself died (not a failed run, which is a record)
                print(f"job {job.job_id}: {err}", file=sys.stderr)
                outcome = "failed"
            summary.add(outcome)
    return summary


def slurm_states(store: ResultStore) -> Dict[str, str]:
    """Run id -> Slurm state (PENDING, RUNNING, ...) of the jobs this results folder submitted."""
    path = store.root / "slurm" / "submitted.json"
    if not path.is_file():
        return {}
    submitted = json.loads(path.read_text())
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    states = dict(line.split()[:2] for line in out.splitlines() if line.strip())
    return {run_id: states[job] for run_id, job in submitted.items() if job in states}


def run_ray(specs: Sequence[RunSpec], store: ResultStore, resources: Resources, device: str,
            address: Optional[str], log: Tuple[str, ...] = ()) -> Summary:
    """Each unfinished run as a Ray task with its resources, on a running cluster or a local one."""
    ray = _import("ray", "ray")
    started_here = not ray.is_initialized()
    if started_here:
        kwargs: Dict[str, Any] = {"address": address} if address else {"include_dashboard": False}
        ray.init(log_to_driver=False, **kwargs)
    results = str(store.root.resolve())

    @ray.remote(num_cpus=resources.cpus, num_gpus=resources.gpus, max_retries=3)
    def task(spec: Dict[str, Any]) -> str:
        return run_one(RunSpec.from_dict(spec), ResultStore(results), device, False, ["clipbench", "ray"], quiet=True,
                       options=RunOptions(log=log))

    todo, summary = unfinished(specs, store)
    try:
        for outcome in ray.get([task.remote(s.portable_dict()) for s in todo]):
            summary.add(outcome)
    finally:
        if started_here:
            ray.shutdown()
    return summary
