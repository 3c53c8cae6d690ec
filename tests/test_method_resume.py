"""Methods that keep state between experiences (exemplar memories, per-experience draws, teachers, merged
and sequential weights, protected subspaces) resume from a checkpoint with exactly the weights and numbers
of an uninterrupted run."""

import json

import pytest
import torch

from clipbench.methods.base import METHODS
from clipbench.store import ResultStore
from helpers import SMALL, method_settings, records, run_cli, strip_volatile

ARGS = ["run", "--protocol", "tiny_shapes", "--suite", "tiny", "--quiet", "--set", *SMALL]


class Crash(RuntimeError):
    pass


@pytest.mark.parametrize("name", ["icarl_zscl", "lwf_vr", "lwf_zscl", "zscl", "agem", "ewc", "magmax", "keeplora",
                                  "engine", "bofa", "rapf", "proof", "mg_clip", "clap4clip", "attriclip", "l2p",
                                  "dualprompt", "coda_prompt", "area", "gift"])
def test_crash_at_third_experience_then_resume_equals_uninterrupted(name, tmp_path, monkeypatch):
    cls = METHODS.get(name)
    original = cls.before_training_exp

    def crash_at_third(self, strategy, **kwargs):
        if strategy.experience.current_experience == 2:
            raise Crash("stopped on purpose")
        return original(self, strategy, **kwargs)

    crashed, clean = tmp_path / "crashed", tmp_path / "clean"
    args = [*ARGS, *method_settings(name, tmp_path)]  # more --set values (ENGINE: its descriptor file)
    monkeypatch.setattr(ResultStore, "clear_progress", lambda self, spec: None)  # keep the final weights to compare
    monkeypatch.setattr("clipbench.runner.checkpoint_due", lambda completed, total: True)  # ... and save it
    monkeypatch.setattr(cls, "before_training_exp", crash_at_third)
    assert run_cli(*args, "--method", name, "--results", crashed) == 1
    [failed] = records(crashed).values()
    assert failed["status"] == "failed" and "stopped on purpose" in failed["error"]["message"]
    [progress] = crashed.glob("runs/**/progress.json")
    assert json.loads(progress.read_text())["completed_experiences"] == 2  # kept: the rerun starts from it
    monkeypatch.setattr(cls, "before_training_exp", original)
    assert run_cli(*args, "--method", name, "--results", crashed) == 0  # resumes from experience 2
    assert run_cli(*args, "--method", name, "--results", clean) == 0
    [resumed] = records(crashed).values()
    [reference] = records(clean).values()
    assert strip_volatile(resumed) == strip_volatile(reference)
    final = [torch.load(next(root.glob("runs/**/checkpoint.pt")), weights_only=False) for root in (crashed, clean)]
    assert final[0]["completed"] == final[1]["completed"] == 3
    assert all(torch.equal(final[0]["model"][k], final[1]["model"][k]) for k in final[1]["model"])
