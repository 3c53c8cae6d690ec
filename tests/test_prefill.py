"""A grid's processes compute the frozen towers' features together (clipbench.prefill): each its share, then
every share loaded everywhere; the rows equal those one process computes alone."""

from pathlib import Path

import pytest
import torch

from clipbench import mini_model, prefill
from clipbench.plan import plan
from clipbench.runner import RunOptions
from clipbench.store import atomic_torch_save


@pytest.fixture
def empty_caches():
    """Each phase of a test starts from empty tower caches, as a fresh process does (emptied in place: a
    built model holds its caches; the process's rows come back afterwards)."""
    kept = {name: dict(rows) for name, rows in mini_model._CACHE.items()}

    def clear():
        for rows in mini_model._CACHE.values():
            rows.clear()
    clear()
    yield clear
    clear()
    for name, rows in kept.items():
        mini_model._CACHE.setdefault(name, {}).update(rows)


def _mini_specs():
    return plan("mini", ["finetune", "zscl"], ["mini_fashion_ost"])  # zscl reads a reference set


def test_grid_inputs_are_the_images_and_texts_runs_encode(tmp_path):
    options = RunOptions(cache_dir=str(tmp_path / "cache"))
    loaded, images, texts = prefill.grid_inputs(_mini_specs(), tmp_path, options, "cpu")
    assert loaded is not None and images and all(x.dtype == torch.uint8 for x in images)
    assert sum(len(x) for x in images) > 1000  # training, test, zero-shot, retrieval and reference images
    assert any("t-shirt" in t.lower() for t in texts) and len(set(texts)) > 100
    tiny = plan("tiny", ["finetune"], ["tiny_shapes"])  # another model: no tower cache to fill
    assert prefill.grid_inputs(tiny, tmp_path, options, "cpu") == (None, [], [])


def test_two_shares_equal_one_process_computing_every_row(tmp_path, monkeypatch, empty_caches):
    specs = _mini_specs()
    options = RunOptions(cache_dir=str(tmp_path / "cache"))
    loaded, images, texts = prefill.grid_inputs(specs, tmp_path, options, "cpu")
    small = ([x[:37] for x in images[:3]], texts[:45])  # a few rows of each kind keep the test short
    monkeypatch.setattr(prefill, "grid_inputs", lambda *a: (loaded, *small))
    folder = tmp_path / "shared"
    dicts = [s.portable_dict() for s in specs]

    empty_caches()
    theirs = prefill._compute_share(specs, tmp_path, options, "cpu", 1, 2)  # "the other process"
    atomic_torch_save(folder / "part-1.pt", theirs)
    empty_caches()
    held = prefill.fill_share(dicts, str(tmp_path), options, "cpu", str(folder), 0, 2)
    shared = {part: dict(rows) for part, rows in prefill._caches().items()}
    assert (folder / "part-0.pt").is_file()

    empty_caches()
    with torch.no_grad():
        for x in small[0]:
            loaded.clip.visual.pooled(x)
        loaded.clip.text.pooled(loaded.tokenizer(sorted(set(small[1]))))
    whole = prefill._caches()
    for part in ("image", "preactivation", "text"):
        assert whole[part] and shared[part].keys() == whole[part].keys(), part
        assert all(torch.equal(shared[part][k], whole[part][k]) for k in whole[part]), part
        assert 0 < len(theirs[part]) < len(whole[part])  # split: each process computed part of the rows
    assert held == sum(len(rows) for rows in whole.values())


def test_a_share_that_fails_writes_an_empty_part_and_fails_nothing(tmp_path, monkeypatch, capsys):
    def broken(*args):
        raise OSError("no data here")

    monkeypatch.setattr(prefill, "grid_inputs", broken)
    dicts = [s.portable_dict() for s in _mini_specs()]
    assert prefill.fill_share(dicts, str(tmp_path), RunOptions(), "cpu", str(tmp_path / "s"), 0, 2) == 0
    assert torch.load(tmp_path / "s" / "part-0.pt", weights_only=True) == {}  # the others stop waiting
    assert "not shared (OSError: no data here)" in capsys.readouterr().err
