"""The reproduction check: published records rerun from this checkout must give every metric exactly."""

import copy
import json
from pathlib import Path

import pytest
import torch
from helpers import run_cli

from clipbench.published import SAMPLE, check, compare, main, made_on

ROOT = Path(__file__).resolve().parents[1]


def test_check_reruns_a_record_and_names_every_difference(tmp_path):
    published, work = tmp_path / "published", tmp_path / "work"
    assert run_cli("run", "--method", "finetune", "--protocol", "tiny_shapes", "--suite", "tiny", "--quiet",
                   "--results", published) == 0
    sample = [("finetune", "tiny_shapes", 0), ("lwf", "tiny_shapes", 0)]
    problems = check(published, sample, work)
    assert problems == [f"lwf x tiny_shapes seed 0: no complete published record under {published}"]

    [path] = published.glob("runs/**/run.json")
    record = json.loads(path.read_text())
    changed = copy.deepcopy(record)
    changed["raw"]["acc_matrix"][-1][0] += 0.01
    path.write_text(json.dumps(changed))
    problems = check(published, sample[:1], work)  # the rerun is complete in `work`: read back, not rerun
    assert problems and all(p.startswith(f"{path}: metric ") for p in problems)
    assert any(p.startswith(f"{path}: metric last: published ") for p in problems)

    rerun = json.loads(next(work.glob("runs/**/run.json")).read_text())
    assert compare(record, rerun) == []
    changed = copy.deepcopy(record)
    changed["spec"]["train"]["lr"] = 0.5
    del changed["raw"]["zeroshot"]  # published before a metric's inputs were recorded
    problems = compare(changed, rerun)
    assert f"setting train.lr 0.5 vs {rerun['spec']['train']['lr']!r}" in problems
    assert "metric zs_acc only in the rerun" in problems


def test_a_difference_made_on_another_kernel_family_says_so(tmp_path, capsys):
    published = tmp_path / "published"
    assert run_cli("run", "--method", "finetune", "--protocol", "tiny_shapes", "--suite", "tiny", "--quiet",
                   "--results", published) == 0
    sample = ["finetune:tiny_shapes:0"]
    assert made_on(published, [("finetune", "tiny_shapes", 0)]) == {torch.backends.cpu.get_cpu_capability()}
    [path] = published.glob("runs/**/run.json")
    record = json.loads(path.read_text())
    here = torch.backends.cpu.get_cpu_capability()
    other = next(family for family in ("AVX512", "AVX2", "DEFAULT") if family != here)  # one this machine is not
    record["provenance"]["cpu"]["torch_capability"] = other  # as if made on another machine
    record["raw"]["acc_matrix"][-1][0] += 0.01  # ... whose rounding moved a number
    path.write_text(json.dumps(record))
    assert main(["--published", str(published), "--sample", *sample]) == 1
    out = capsys.readouterr().out
    assert "metric last: published" in out
    assert f"made on {other} kernels, this machine has {here}" in out


@pytest.mark.slow
def test_published_sample_reproduces_from_this_checkout(tmp_path):
    """Fails while results/published holds records of older evaluation code: regenerate them then."""
    assert check(ROOT / "results" / "published", SAMPLE, tmp_path) == []
