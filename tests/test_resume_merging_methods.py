"""Methods whose evaluated weights are not the ones training continues from (MagMax keeps theta_t
beside the merged model; KeepLoRA keeps its protected subspaces) resume to identical numbers."""

import pytest

from clipbench.methods.base import METHODS
from helpers import SMALL, records, run_cli, strip_volatile

ARGS = ["run", "--protocol", "tiny_shapes", "--suite", "tiny", "--set", *SMALL]


@pytest.mark.parametrize("name", ["magmax", "keeplora"])
def test_interrupted_run_resumes_to_the_uninterrupted_numbers(name, tmp_path, monkeypatch, capsys):
    cls = METHODS.get(name)
    original = cls.before_training_exp

    def crash_at_third(self, strategy, **kwargs):
        if strategy.experience.current_experience == 2:
            raise RuntimeError("interrupted")
        return original(self, strategy, **kwargs)

    monkeypatch.setattr(cls, "before_training_exp", crash_at_third)
    assert run_cli(*ARGS, "--method", name, "--results", tmp_path / "resumed", "--quiet") == 1  # failed, checkpoint kept
    monkeypatch.setattr(cls, "before_training_exp", original)
    capsys.readouterr()
    assert run_cli(*ARGS, "--method", name, "--results", tmp_path / "resumed") == 0
    assert "resuming from experience 2/3" in capsys.readouterr().err
    assert run_cli(*ARGS, "--method", name, "--results", tmp_path / "clean", "--quiet") == 0
    [resumed], [clean] = records(tmp_path / "resumed").values(), records(tmp_path / "clean").values()
    assert resumed["status"] == clean["status"] == "complete"
    assert strip_volatile(resumed) == strip_volatile(clean)
