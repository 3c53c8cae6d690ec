"""`clipbench smoke`: every method x protocol of every real suite on the data it writes (issue 23).

The whole grid of each shipped real suite (and any suite added later: the catalog's suites but mini and
tiny) runs in `make test-slow`; `make test` runs a slice (one protocol, three methods, the data of its suite)."""

from __future__ import annotations

import math

import pytest

from clipbench.protocols.catalog import get_protocol
from clipbench.smoke import real_suites
from helpers import records, run_cli


def check_records(results, specs_seen: int = 0) -> dict:
    """Every record complete or n/a (with its reason), every headline metric finite; records by method x protocol."""
    found = {}
    for record in records(results).values():
        spec = record["spec"]
        assert record["status"] in ("complete", "n/a"), (spec["method"], spec["protocol"], record.get("error"))
        assert spec["limit"] == {"steps": 2} and spec["model"]["arch"] == "clipbench-smoke"
        if record["status"] == "n/a":
            assert record["reason"]
        else:
            for metric in get_protocol(spec["protocol"]).headline_metrics():
                assert math.isfinite(record["metrics"][metric]), (spec["method"], spec["protocol"], metric)
        found[(spec["method"], spec["protocol"])] = record["status"]
    return found


def test_smoke_slice(tmp_path, capsys):
    """One protocol of cil_cifar100, three methods (one reads reference pairs, one DDAS's TinyImageNet set)."""
    assert run_cli("smoke", "--suite", "cil_cifar100", "--protocol", "cifar100_10steps", "--method", "finetune", "zscl",
                   "moe_adapters", "--keep", tmp_path, "--threads", "1", "--quiet") == 0
    out = capsys.readouterr().out
    assert "| zscl " in out and "complete" in out and "nothing failed" in out
    found = check_records(tmp_path / "results")
    assert found == {(m, "cifar100_10steps"): "complete" for m in ("finetune", "zscl", "moe_adapters")}
    assert (tmp_path / "data" / "cifar100" / "cifar-100-python" / "meta").is_file()


def test_smoke_reports_a_failure_and_exits_1(tmp_path, capsys, monkeypatch):
    """A method that crashes is a failed cell with its error; the others still run."""
    from clipbench.methods.finetune import Finetune

    def crash(self, model, streams):
        raise RuntimeError("boom in setup")

    monkeypatch.setattr(Finetune, "setup", crash)
    assert run_cli("smoke", "--suite", "cil_cifar100", "--protocol", "cifar100_10steps", "--method", "finetune",
                   "zeroshot", "--keep", tmp_path, "--threads", "1", "--quiet") == 1
    out = capsys.readouterr().out
    assert "failed: RuntimeError: boom in setup" in out and "1 run(s) failed" in out
    assert {r["spec"]["method"]: r["status"] for r in records(tmp_path / "results").values()} == \
        {"finetune": "failed", "zeroshot": "complete"}


@pytest.mark.slow
@pytest.mark.parametrize("suite", real_suites())
def test_smoke_grid_of_every_real_suite(suite, tmp_path, capsys):
    assert run_cli("smoke", "--suite", suite, "--keep", tmp_path, "--threads", "1", "--quiet") == 0, \
        capsys.readouterr().out
    from clipbench.plan import plan

    found = check_records(tmp_path / "results")
    planned = {(s.method, s.protocol) for s in plan(suite)}
    assert set(found) == planned  # every method x protocol of the suite has its record
