"""Row 0 (the pretrained model on every set) is measured once per suite and shared by all methods."""

from clipbench import evaluator
from helpers import SMALL, records, run_cli


def test_row_zero_measured_once_and_shared(results, monkeypatch):
    calls = []
    original = evaluator.Evaluator._features

    def counting(self):
        calls.append(self.method.name)
        return original(self)

    monkeypatch.setattr(evaluator.Evaluator, "_features", counting)
    assert run_cli("run", "--method", "finetune", "lwf", "--protocol", "tiny_shapes", "--suite", "tiny",
                   "--results", results, "--quiet", "--set", *SMALL) == 0
    # finetune: row 0 + 3 rows; lwf: 3 rows only, its row 0 came from the cache
    assert calls.count("finetune") == 4 and calls.count("lwf") == 3
    recs = {r["spec"]["method"]: r for r in records(results).values()}
    assert recs["finetune"]["raw"]["acc_matrix"][0] == recs["lwf"]["raw"]["acc_matrix"][0]
    assert recs["finetune"]["raw"]["zeroshot"]["shapes"][0] == recs["lwf"]["raw"]["zeroshot"]["shapes"][0]
    assert len(list((results / "cache").glob("row0-*.json"))) == 1


def test_row_zero_key_follows_model_data_and_settings():
    from clipbench.evaluator import row_zero_key
    from clipbench.plan import plan

    [a] = plan("tiny", ["finetune"], ["tiny_shapes"])
    [b] = plan("tiny", ["lwf"], ["tiny_shapes"])
    [c] = plan("tiny", ["finetune"], ["tiny_shapes"], seeds=[1])
    [d] = plan("tiny", ["finetune"], ["tiny_shapes"], sets=["protocols.tiny_shapes.test_per_class=5"])
    [e] = plan("tiny", ["finetune"], ["tiny_shapes"], sets=["precision=amp_bf16"])
    assert row_zero_key(a, "cpu") == row_zero_key(b, "cpu")
    assert len({row_zero_key(x, "cpu") for x in (a, c, d, e)}) == 4


def test_a_cached_row_zero_of_another_shape_is_measured_again(results):
    """A row cached before a held-out set was added (or on sets of other sizes) is never read back as if it
    fitted: it is measured again, and the record equals one made without any cache."""
    import json

    from clipbench.evaluator import row_zero_key
    from clipbench.plan import plan

    args = ("run", "--method", "finetune", "--protocol", "tiny_shapes", "--suite", "tiny", "--quiet", "--set", *SMALL)
    assert run_cli(*args, "--results", results / "clean") == 0
    (clean,) = records(results / "clean").values()
    [spec] = plan("tiny", ["finetune"], ["tiny_shapes"], sets=SMALL)
    stale = results / "stale"
    path = stale / "cache" / f"row0-{row_zero_key(spec, 'cpu')}.json"
    path.parent.mkdir(parents=True)
    # what an older cache held: no `shape`, and no held-out set that was added since
    path.write_text(json.dumps({"acc": [0.5, 0.5, 0.5], "zeroshot": {}, "retrieval": {}}))
    assert run_cli(*args, "--results", stale) == 0
    (record,) = records(stale).values()
    assert record["raw"]["acc_matrix"] == clean["raw"]["acc_matrix"]
    assert record["metrics"]["zs_retention"] == clean["metrics"]["zs_retention"]
    assert json.loads(path.read_text())["shape"]["zeroshot"] == {"shapes": 16}  # rewritten with what it measured
