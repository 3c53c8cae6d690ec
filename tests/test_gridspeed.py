"""The grid's speed-ups change no number: each one against the computation it replaced."""

import os

import pytest
import torch
from torch import nn

from clipbench.evaluate import any_training, encoding_mode


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.Sequential(nn.Dropout(0.5), nn.Linear(4, 2)), nn.BatchNorm1d(2))


def _flags(module: nn.Module):
    return [m.training for m in module.modules()]


def test_encoding_mode_ends_as_eval_then_train_did():
    """Whatever the modes before, every module ends where `eval()` then `train(was)` leave it, and is in eval
    mode inside the block."""
    cases = []
    for setup in ("all_eval", "all_train", "root_eval_child_train", "root_train_child_eval"):
        net = _net()
        net.train(setup in ("all_train", "root_train_child_eval"))
        if setup == "root_eval_child_train":
            net[1][0].train()
        if setup == "root_train_child_eval":
            net[1].eval()
        reference = _net()
        reference.load_state_dict(net.state_dict())
        for a, b in zip(reference.modules(), net.modules()):
            a.training = b.training
        was = reference.training
        reference.eval()
        reference.train(was)
        with encoding_mode(net):
            assert not any_training(net)
        assert _flags(net) == _flags(reference), setup
        cases.append(setup)
    assert len(cases) == 4


def test_encoding_mode_sets_back_a_module_the_block_switched_to_training():
    net = _net().eval()
    with encoding_mode(net):
        net[1][0].train()
    assert not any_training(net)


def test_any_training_sees_a_deep_module():
    net = _net().eval()
    assert not any_training(net)
    net[1][0].training = True
    assert any_training(net)


def test_ddas_reads_the_mini_towers_features_to_the_bit():
    """DDAS's default extractor and the mini image tower read before its ReLU6 are one computation: features
    taken from the tower's passes (in other batch groupings) equal the extractor's own."""
    from clipbench.methods import ddas
    from clipbench.models import load_model

    loaded = load_model("clipbench-mini", "bundled:mini/projections-v2.pt", "cpu")
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 256, (19, 3, 28, 28), dtype=torch.uint8, generator=g)
    b = torch.randint(0, 256, (5, 3, 40, 40), dtype=torch.uint8, generator=g)
    selector = ddas.DDAS("efficientnet_lite0", (96, 96), torch.device("cpu"), 0.0655)
    ddas._FEATURES.clear()
    own = torch.cat([selector.features(a), selector.features(b)])
    ddas._FEATURES.clear()
    with torch.no_grad():
        loaded.clip.visual.pooled(a[3:])  # the tower's passes: other batches of 16 than the extractor's
        loaded.clip.visual.pooled(a[:3])
        loaded.clip.visual.pooled(b[2:])
        loaded.clip.visual.pooled(b[:2])
    computed = []
    selector.extractor.register_forward_hook(lambda *args: computed.append(1))
    shared = torch.cat([selector.features(a), selector.features(b)])
    assert not computed  # every row came from the tower's passes
    assert torch.equal(own, shared)


def test_warming_the_text_cache_changes_no_feature():
    """Texts computed all at once (grouped by length over the set) have the features they get a few at a time."""
    from clipbench import mini_model
    from clipbench.models import load_model

    loaded = load_model("clipbench-mini", "bundled:mini/projections-v2.pt", "cpu")
    texts = [f"a photo of a {w} {v}." for w in ("red", "small", "very old") for v in ("shoe", "bag", "t-shirt top")]
    texts += ["a sketch", "an emoji of a smiling face with open mouth and tightly-closed eyes"]
    tokens = loaded.tokenizer(texts)
    store = mini_model._CACHE[f"{mini_model.tower_fingerprint()}:text:{mini_model.CONTEXT_LENGTH}"]
    keys = mini_model._row_keys(tokens)
    for k in keys:
        store.pop(k, None)
    with torch.no_grad():
        few = torch.cat([loaded.clip.text.pooled(tokens[i:i + 2]) for i in range(0, len(texts), 2)])
    for k in keys:
        store.pop(k, None)
    loaded.warm_texts(texts)
    assert all(k in store for k in keys)
    with torch.no_grad():
        assert torch.equal(loaded.clip.text.pooled(tokens), few)



def test_a_mini_model_copied_from_the_last_build_equals_a_fresh_build():
    """The second build from the same generator state is a copy: the same weights, the same generator states
    after it, and the same outputs; from another state it is built afresh."""
    import random

    import numpy as np

    from clipbench import mini_model
    from clipbench.models import load_model

    def build(seed):
        torch.manual_seed(seed), random.seed(seed), np.random.seed(seed)
        loaded = load_model("clipbench-mini", None, "cpu")  # random projections: drawn from the seeded generator
        return loaded, (torch.rand(3), random.random(), np.random.rand())

    mini_model._BUILT.clear()
    fresh, after_fresh = build(1)
    copied, after_copy = build(1)
    assert mini_model._BUILT["last"][2] is not copied.clip and copied.clip is not fresh.clip
    assert torch.equal(after_fresh[0], after_copy[0]) and after_fresh[1:] == after_copy[1:]
    a, b = fresh.clip.state_dict(), copied.clip.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    images = torch.randint(0, 256, (2, 3, 28, 28), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(fresh.clip.encode_image(images), copied.clip.encode_image(images))
        copied.clip.visual.head.proj.weight.add_(1.0)  # a run's training never reaches the next copy
    other, _ = build(2)
    assert not torch.equal(other.clip.visual.head.proj.weight, fresh.clip.visual.head.proj.weight)
    again, _ = build(1)
    assert torch.equal(again.clip.visual.head.proj.weight, fresh.clip.visual.head.proj.weight)


def test_default_jobs(monkeypatch):
    from clipbench.workers import default_jobs

    monkeypatch.setenv("CLIPBENCH_JOBS", "3")
    assert default_jobs("cpu", None, 100) == 3
    monkeypatch.delenv("CLIPBENCH_JOBS")
    assert default_jobs("cuda", None, 100) == 1  # one device: one process
    assert default_jobs("cpu", None, 3) == 1  # too few runs to repay a worker's start
    assert 1 <= default_jobs("cpu", None, 100) <= len(os.sched_getaffinity(0))
    assert default_jobs("cpu", 10_000, 100) == 1  # each worker its --threads cores
    quiet = default_jobs("cpu", None, 100)
    monkeypatch.setattr(os, "getloadavg", lambda: (1000.0, 0.0, 0.0))  # not the load: it would change the threads
    assert default_jobs("cpu", None, 100) == quiet


def test_run_threads():
    from clipbench.workers import run_threads

    assert run_threads(2, None) == run_threads(16, None) == 1  # the same whatever the core count
    assert run_threads(1, None) == 0  # one process: torch's default
    assert run_threads(4, 3) == run_threads(1, 3) == 3


def test_workers_take_known_long_runs_first(tmp_path):
    from clipbench.plan import plan
    from clipbench.workers import longest_first
    from clipbench.store import ResultStore, atomic_write_json

    specs = plan("tiny", ["zeroshot", "finetune", "lwf", "er"], ["tiny_shapes"])
    store = ResultStore(tmp_path)
    for spec, seconds in zip(specs[1:], (5.0, 9.0)):  # finetune 5 s, lwf 9 s (another seed's record), er unknown
        atomic_write_json(store.run_dir(spec).parent / "seed7-x" / "run.json", {"costs": {"wall_seconds": seconds}})
    order = [specs[i].method for i in longest_first(specs, store)]
    assert order == ["zeroshot", "er", "lwf", "finetune"]  # no record to go by first, in plan order


@pytest.mark.slow
def test_runs_in_worker_processes_give_the_records_of_one_process(tmp_path, monkeypatch):
    """`--jobs 2`: the same numbers as in one process, every run once, the summary in plan order."""
    from helpers import SMALL, records, run_cli

    monkeypatch.delenv("CLIPBENCH_JOBS")
    methods = ["zeroshot", "finetune", "lwf", "er"]
    for jobs, folder in ((1, "one"), (2, "two")):
        assert run_cli("run", "--method", *methods, "--suite", "tiny", "--protocol", "tiny_shapes", "--results",
                       str(tmp_path / folder), "--quiet", "--jobs", str(jobs), "--set", *SMALL) == 0
    one, two = records(tmp_path / "one"), records(tmp_path / "two")
    assert one.keys() == two.keys() and len(one) == len(methods)
    for key in one:
        assert one[key]["metrics"] == two[key]["metrics"] and one[key]["raw"]["acc_matrix"] == two[key]["raw"]["acc_matrix"]
        assert two[key]["provenance"]["torch_threads"] >= 1


def test_an_encoding_mode_inside_another_checks_nothing(monkeypatch):
    """An evaluation row holds the model in one `encoding_mode` and encodes thousands of times inside it: the
    inner blocks do not walk the modules again, and the outer block still ends as `eval(); train(was)`."""
    import clipbench.evaluate as evaluate

    net = _net().train()
    walks = []
    real = evaluate.any_training
    monkeypatch.setattr(evaluate, "any_training", lambda m: walks.append(m) or real(m))
    with encoding_mode(net):
        before = len(walks)
        for _ in range(3):
            with encoding_mode(net):
                assert not real(net)
        assert len(walks) == before  # nested: no walk
        with encoding_mode(net[1]):  # another module is checked as usual
            pass
        assert len(walks) > before
    assert _flags(net) == [True] * len(_flags(net))
    with encoding_mode(net):  # the outer block ended: a new one checks again
        pass
    assert len(walks) > before + 1


def test_no_checkpoint_after_the_last_experience(tmp_path, monkeypatch):
    """The record follows the last experience at once: checkpoints after every experience but the last."""
    from helpers import SMALL, records, run_cli

    from clipbench.store import ResultStore

    saved = []
    real = ResultStore.save_progress
    monkeypatch.setattr(ResultStore, "save_progress",
                        lambda self, spec, checkpoint, completed, total: saved.append((completed, total)) or
                        real(self, spec, checkpoint, completed, total))
    assert run_cli("run", "--method", "finetune", "--suite", "tiny", "--protocol", "tiny_shapes", "--results",
                   str(tmp_path), "--quiet", "--set", *SMALL) == 0
    [record] = records(tmp_path).values()
    total = len(record["raw"]["acc_matrix"]) - 1  # rows: before training, then one per experience
    assert total >= 2 and record["status"] == "complete"
    assert saved == [(k, total) for k in range(1, total)]
