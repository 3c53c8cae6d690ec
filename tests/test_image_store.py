"""The decoded-image store: decoded once per (files, preprocessing), shared by runners, safe when they race."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal

import numpy as np
import pytest
import torch

from clipbench.decode import UndecodableImages, decode
from clipbench.image_store import ImageStore
from clipbench.preprocess import Preprocess
from clipbench.streams import FileReader, ImageSources
from real_images import bomb_png, sample_files

PRE = Preprocess("open_clip", (48, 48))


@pytest.fixture
def files(tmp_path):
    """Twenty real clip-art files of every PIL mode, copied (so a test may change them)."""
    out = []
    for k, src in enumerate(sample_files()[:20]):
        out.append(tmp_path / "img" / f"{k:02d}{src.suffix}")
        out[-1].parent.mkdir(exist_ok=True)
        shutil.copy2(src, out[-1])
    return out


def test_decoded_once_then_read_back_equal_to_decoding_in_process(files, tmp_path):
    sources = ImageSources(FileReader(), files)
    store = ImageStore(tmp_path / "cache", workers=2)
    first = store.get(sources, PRE)
    assert store.decoded == len(files)
    again = ImageStore(tmp_path / "cache", workers=2)  # another runner on the same machine
    second = again.get(sources, PRE)
    assert again.decoded == 0 and torch.equal(first, second)
    assert torch.equal(second, decode(sources, PRE))  # workers and store change nothing in the pixels
    assert isinstance(second.numpy().base, np.memmap) or second.numpy().base is not None  # file-backed, not a copy
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_other_preprocessing_or_changed_file_is_decoded_again(files, tmp_path):
    store = ImageStore(tmp_path / "cache", workers=1)
    sources = ImageSources(FileReader(), files)
    store.get(sources, PRE)
    store.get(sources, Preprocess("open_clip", (48, 48), interpolation="bilinear"))
    assert store.decoded == 2 * len(files)
    shutil.copy2(files[1], files[0])  # new contents under an old name
    os.utime(files[0], ns=(1, 1))
    changed = store.get(sources, PRE)
    assert store.decoded == 3 * len(files) and torch.equal(changed[0], changed[1])


def test_a_subset_is_its_own_set(files, tmp_path):
    store = ImageStore(tmp_path / "cache", workers=1)
    whole = store.get(ImageSources(FileReader(), files), PRE)
    part = store.get(ImageSources(FileReader(), files)[torch.tensor([3, 7])], PRE)
    assert torch.equal(part, whole[[3, 7]])


def _race(cache, files, queue):
    store = ImageStore(cache, workers=1)
    images = store.get(ImageSources(FileReader(), files), PRE)
    queue.put((store.decoded, int(images.numpy().sum())))  # numpy: torch kernels can deadlock after fork


def test_concurrent_runners_decode_a_set_once(files, tmp_path):
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_race, args=(tmp_path / "cache", files, queue)) for _ in range(3)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert sorted(decoded for decoded, _ in results) == [0, 0, len(files)]  # one decoded, two waited and read
    assert len({total for _, total in results}) == 1


def test_undecodable_files_leave_nothing_in_the_store(files, tmp_path):
    bad = [bomb_png(tmp_path / "img" / "huge.png"), tmp_path / "img" / "empty.png"]
    bad[1].write_bytes(b"")
    store = ImageStore(tmp_path / "cache", workers=2)
    with pytest.raises(UndecodableImages) as err:
        store.get(ImageSources(FileReader(), files + bad), PRE)
    assert all(str(p) in str(err.value) for p in bad) and "2 image(s) cannot be decoded" in str(err.value)
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and p.suffix != ".lock"]


def _killed_while_decoding(cache, files):
    import clipbench.image_store as image_store

    def decode_then_die(*args):
        image_store.decode_into.__wrapped__(*args)
        os.kill(os.getpid(), signal.SIGKILL)  # kill -9 after the first chunk, the temporary file half written

    decode_then_die.__wrapped__ = image_store.decode_into
    image_store.decode_into = decode_then_die
    ImageStore(cache, workers=1).get(ImageSources(FileReader(), files * 4), PRE)


def test_a_decode_killed_midway_leaves_a_temporary_the_next_runner_removes(files, tmp_path):
    from clipbench.store import remove_stale_temporaries

    child = multiprocessing.get_context("fork").Process(target=_killed_while_decoding, args=(tmp_path / "cache", files))
    child.start()
    child.join(timeout=300)
    assert child.exitcode == -signal.SIGKILL
    [left] = (tmp_path / "cache").rglob("*.tmp")
    size = len(files) * 4 * 3 * 48 * 48
    assert left.stat().st_size == size
    live = left.with_name(left.name.replace(f"@{child.pid}.", f"@{os.getpid()}."))  # the same, by a live decoder
    shutil.copy(left, live)
    assert remove_stale_temporaries(tmp_path) == (1, size)
    assert not left.exists() and live.exists()
    live.unlink()
    store = ImageStore(tmp_path / "cache", workers=1)  # the set was never finished: decoded again
    assert torch.equal(store.get(ImageSources(FileReader(), files * 4), PRE)[:len(files)],
                       decode(ImageSources(FileReader(), files), PRE))


def test_joined_images_slice_as_one_tensor_would():
    from clipbench.streams import JoinedImages

    parts = [torch.randint(0, 256, (n, 3, 4, 4), dtype=torch.uint8) for n in (5, 0, 3, 7)]
    whole, joined = torch.cat(parts), JoinedImages(parts)
    assert len(joined) == 15 and joined.shape == whole.shape and joined.dtype == torch.uint8
    for a, b in ((0, 4), (3, 9), (4, 15), (8, 15), (0, 15), (14, 20)):
        assert torch.equal(joined[a:b], whole[a:b]), (a, b)
    assert joined[0:5].data_ptr() == parts[0].data_ptr()  # inside one part: a view, no copy


def _clipart_protocol(root):
    from clipbench.protocols.catalog import ProtocolDef

    return ProtocolDef(name="cached_clipart", version=1, kind="class_incremental", builder="datasets", params={
        "target": {"adapter": "image_folder", "root": str(root), "test_fraction": 0.25},
        "n_experiences": 1, "train_per_class": 3, "templates": ["a photo of a {c}."]})


def test_runs_decode_each_set_once_after_subsampling_into_the_cache_dir(files, tmp_path, monkeypatch):
    """Two methods on one image folder: the first run decodes only the subsampled images (3 per class for
    training, the test quarter), into --cache-dir; the second decodes nothing and reads the same files."""
    from clipbench.protocols import catalog
    from helpers import run_cli

    root = tmp_path / "folder"
    for k, f in enumerate(files[:16]):
        (root / f"class{k % 2}").mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, root / f"class{k % 2}" / f.name)
    proto = _clipart_protocol(root)
    monkeypatch.setitem(catalog._protocols(), proto.name, proto)
    cache, results = tmp_path / "cache", tmp_path / "results"
    args = ("--protocol", "cached_clipart", "--suite", "tiny", "--results", results, "--quiet", "--cache-dir", cache,
            "--workers", "2")
    assert run_cli("run", "--method", "finetune", *args) == 0
    sets = sorted((cache / "images").glob("*.u8"))
    shapes = sorted(tuple(json.loads(p.with_suffix(".json").read_text())["shape"])[0] for p in sets)
    assert shapes == [2 * 2, 2 * 3]  # test: a quarter of 8 per class; train: 3 per class, not the other 3
    before = {p: p.stat().st_mtime_ns for p in sets}
    assert run_cli("run", "--method", "zeroshot", *args) == 0
    assert {p: p.stat().st_mtime_ns for p in sorted((cache / "images").glob("*.u8"))} == before
    assert not (results / "cache" / "images").exists()  # --cache-dir replaced the default
    assert run_cli("run", "--method", "finetune", *args[:-2], "--workers", "0") == 2


def test_joined_images_index_as_one_tensor_would_and_concat_copies_nothing():
    from clipbench.feed import DeviceFeeder
    from clipbench.streams import JoinedImages, LabelledImages

    parts = [torch.randint(0, 256, (n, 3, 4, 4), dtype=torch.uint8) for n in (5, 0, 3, 7)]
    whole, joined = torch.cat(parts), JoinedImages(parts)
    index = torch.randperm(15)[:9]
    assert torch.equal(joined[index], whole[index])
    mask = torch.rand(15) > 0.5
    assert torch.equal(joined[mask], whole[mask])
    assert torch.equal(joined[6], whole[6]) and torch.equal(joined[-1], whole[-1])
    staged = torch.empty(9, 3, 4, 4, dtype=torch.uint8)
    assert torch.equal(joined.take(index, out=staged), whole[index]) and staged.data_ptr() == joined.take(index, staged).data_ptr()
    assert torch.equal(DeviceFeeder("cpu", 9, (3, 4, 4), torch.uint8).gather(joined, index), whole[index])
    # replay: the training set joined with a memory stays the tensors it was made of (no copy in RAM)
    train = LabelledImages(parts[3], torch.zeros(7, dtype=torch.long))
    memory = LabelledImages(parts[0], torch.ones(5, dtype=torch.long))
    both = LabelledImages.concat([LabelledImages.concat([train, memory]), memory])
    assert isinstance(both.images, JoinedImages) and len(both) == 17
    assert [p.data_ptr() for p in both.images.parts] == [parts[3].data_ptr(), parts[0].data_ptr(), parts[0].data_ptr()]
    assert torch.equal(both.images[0:17], torch.cat([parts[3], parts[0], parts[0]]))
