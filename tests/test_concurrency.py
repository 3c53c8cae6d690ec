"""Several runners on one results folder, and shards of a plan."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from clipbench import claims
from clipbench.errors import ClipbenchError
from clipbench.plan import plan, shard
from helpers import SMALL, records, run_cli


def test_shards_partition_the_plan_exactly():
    specs = plan("tiny", None, None, seeds=[0, 1])
    for n in (1, 2, 3, 7):
        parts = [shard(specs, i, n) for i in range(n)]
        ids = [s.id for p in parts for s in p]
        assert sorted(ids) == sorted(s.id for s in specs) and len(ids) == len(set(ids))
    with pytest.raises(ClipbenchError):
        shard(specs, 3, 3)


def test_shard_auto_reads_the_array_index(monkeypatch, results, capsys):
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    assert run_cli("run", "--all", "--suite", "tiny", "--shard", "auto", "--dry-run", "--results", results) == 0
    out = capsys.readouterr().out
    total = len(plan("tiny"))
    assert f"plan: {len(range(1, total, 3))} run(s)" in out


def test_claim_blocks_a_second_taker_and_a_dead_runner_claim_expires(tmp_path):
    path = tmp_path / "claim.json"
    assert claims.acquire(path)
    assert not claims.acquire(path)  # this live process holds it
    claims.release(path)
    assert not path.exists()
    # a claim left by a process that died on this host is taken over
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "since": time.time()}))
    assert claims.is_stale(path) and claims.acquire(path)
    # a claim from another host is respected until it goes silent for `ttl` seconds
    path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "since": time.time()}))
    assert not claims.acquire(path, ttl=60)
    old = time.time() - 120
    os.utime(path, (old, old))
    assert claims.acquire(path, ttl=60)


def test_two_concurrent_runners_never_run_the_same_run_twice(tmp_path):
    results = tmp_path / "results"
    methods = ["zeroshot", "finetune", "lwf", "imm"]
    cmd = [sys.executable, "-m", "clipbench.cli", "run", "--method", *methods, "--suite", "tiny",
           "--results", str(results), "--set", *SMALL]
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    logs = [p.communicate(timeout=300)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), logs
    ran = [line.split("(")[1].split(")")[0] for log in logs for line in log.splitlines() if line.endswith(": running")]
    assert len(ran) == len(set(ran)), "a run was executed by both runners"
    recs = records(results)
    assert len(recs) == len(plan("tiny", methods, sets=SMALL)) and all(r["status"] == "complete" for r in recs.values())
    assert not list(results.glob("runs/**/claim.json"))
