"""The leaderboard on real tiny-suite runs: unlike runs never share a cell, the raw record holds what the
founding paper's metrics need, costs say what inference needs, and a corrupt record is named by `status`."""

import json

import pytest

from clipbench.leaderboard import load
from clipbench.protocols.metrics import METRICS
from helpers import SMALL, records, run_cli
from test_metrics import reference_get_acc_bwt


def test_two_learning_rates_never_share_a_cell(results, tmp_path, capsys):
    for lr in ("0.001", "0.05"):
        assert run_cli("run", "--method", "finetune", "--protocol", "tiny_shapes", "--suite", "tiny", "--seeds", "0",
                       "--results", results, "--quiet", "--set", *SMALL, f"train.lr={lr}") == 0
    recs = list(records(results).values())
    assert len(recs) == 2
    out = tmp_path / "lb"
    assert run_cli("leaderboard", "--results", results, "--out", out) == 0
    text = (out / "tiny.md").read_text()
    assert "| finetune \\[train.lr=0.001\\] |" in text and "| finetune \\[train.lr=0.05\\]  |" in text
    rows = [r for r in json.loads((out / "leaderboard.json").read_text()) if r["metric"] == "last"]
    assert sorted((r["variant"], r["n_seeds"]) for r in rows) == [("train.lr=0.001", 1), ("train.lr=0.05", 1)]
    by_lr = {r["spec"]["train"]["lr"]: r["raw"]["acc_matrix"][-1] for r in recs}
    for r in rows:  # each cell is its own run's number, never a mean of the two
        final = by_lr[0.001 if r["variant"] == "train.lr=0.001" else 0.05]
        assert r["mean"] == pytest.approx(sum(final) / len(final))
    # inference needs nothing beyond the model for finetune: recorded as "" and shown as "none"
    assert all(r["costs"]["inference_extras"] == "" for r in recs)
    assert "| none " in text


def test_raw_holds_per_class_accuracy_over_all_classes_per_row(results):
    assert run_cli("run", "--method", "finetune", "--protocol", "tiny_shapes", "--suite", "tiny", "--results", results,
                   "--quiet", "--set", *SMALL, "train.epochs=2") == 0
    [rec] = records(results).values()
    raw = rec["raw"]
    n_classes = len(raw["class_names"])
    assert len(raw["class_acc_all"]) == len(raw["acc_matrix"]) == 4
    assert all(len(row) == n_classes and all(0.0 <= a <= 1.0 for a in row) for row in raw["class_acc_all"])
    # the experience just learned, every class scored: its per-class mean is at most the seen-classes accuracy
    for i, classes in enumerate(raw["experience_classes"]):
        phase = sum(raw["class_acc_all"][i + 1][c] for c in classes) / len(classes)
        assert phase <= raw["acc_matrix"][i + 1][i] + 1e-9
    acc, bwt = reference_get_acc_bwt(raw["class_acc_all"][1:], len(raw["experience_classes"]))
    assert rec["metrics"]["ut_acc"] == pytest.approx(acc) and rec["metrics"]["ut_bwt"] == pytest.approx(bwt)
    assert METRICS.get("ut_acc").compute(raw)["ut_acc"] == pytest.approx(acc)


def _truncate(text: str) -> str:
    return text[:-200]


def _drop_raw(text: str) -> str:  # valid JSON that says complete, without what a table needs
    return json.dumps({k: v for k, v in json.loads(text).items() if k != "raw"})


@pytest.mark.parametrize("damage, why", [(_truncate, "not valid JSON"),
                                         (_drop_raw, "complete but no raw accuracy matrix")])
def test_corrupt_record_is_reported_by_status_and_leaderboard(damage, why, results, capsys):
    run = ["run", "--method", "zeroshot", "--protocol", "tiny_shapes", "--suite", "tiny", "--results", results, "--quiet"]
    assert run_cli(*run) == 0
    [path] = sorted(results.glob("runs/**/run.json"))
    path.write_text(damage(path.read_text()))
    capsys.readouterr()
    assert run_cli("status", "--suite", "tiny", "--results", results) == 0
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if "zeroshot" in l and "tiny_shapes " in l)
    assert line.split()[0] == "corrupt" and str(path) in line and why in line
    assert "1 corrupt" in out
    assert run_cli("leaderboard", "--results", results, "--print") == 0
    captured = capsys.readouterr()
    assert f"corrupt record {path}" in captured.err and why in captured.err and "No complete runs found" in captured.out
    assert load(results).corrupt[0][0].endswith("run.json")
    assert run_cli(*run) == 0 and json.loads(path.read_text())["status"] == "complete"  # `run` redoes it


def test_per_class_accuracy_scores_every_class():
    import torch

    from clipbench.evaluate import per_class_accuracy

    classes = torch.eye(4)
    # images of classes 0, 0, 1, 3; the second class-0 image is nearest class 2 (scored though "unseen")
    images = torch.tensor([[1.0, 0, 0, 0], [0.4, 0, 0.9, 0], [0, 1.0, 0, 0], [0, 0.2, 0, 0.8]])
    labels = torch.tensor([0, 0, 1, 3])
    assert per_class_accuracy(images, labels, classes) == [0.5, 1.0, None, 1.0]
