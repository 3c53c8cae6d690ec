"""`clipbench bench --data DIR`: the data path on an ImageFolder (`DIR/<class>/<image>`), in bench's JSON.

- decode_vs_torchvision: images/s of the decoded-image store filling a fresh cache (`workers` processes)
  over torchvision's `ImageFolder` + `DataLoader` with as many workers, on the same files with the same
  model's evaluation transform (open_clip's `preprocess_val` of ViT-B-32, as a user would hand it to
  ImageFolder). The files are read once first, so both sides find them in the page cache; the two
  sides alternate (`bench._paired`, median of the pairs' ratios).
- warm_start_s: a run over the folder (ViT-B-32, random weights, `finetune`, 1 training step) fills the
  store and the row-0 cache; a second run on the same data (another learning rate: the grid's next
  cell) is timed from its start to its first training batch.
- peak_rss_mb: each run's resident-memory peak from its record (memory-mapped images count once touched).
- gpu (on a GPU only): ViT-B/16 bf16 training images/s fed from the store through `TensorBatches`
  (pinned memory, asynchronous copies), beside the same step on images already on the device
  (`bench.train_throughput`, with its share of the device's peak).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from . import avalanche_api
from .errors import ClipbenchError
from .image_store import ImageStore, default_workers
from .preprocess import Preprocess

ARCH = "ViT-B-32"
PROTOCOL = "bench_data_folder"


def _sources(root: Path):
    from clipbench.protocols.formats.image_folder import read

    data, names = read(root)
    if not len(data):
        raise ClipbenchError(f"--data {root}: no images in its class sub-folders (expected DIR/<class>/<image>)")
    return data, names


def decode_rates(root: Path, workers: int, repeats: int) -> Dict[str, Any]:
    """Store against torchvision ImageFolder + DataLoader, same files, same transform, same worker count."""
    import open_clip
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    from .bench import _paired

    data, _ = _sources(root)
    files = data.images.items
    for f in files:  # into the page cache: neither side pays for the disk
        Path(f).read_bytes()
    pre = Preprocess("open_clip", (224, 224))  # ViT-B-32's preprocess_cfg: shortest side, bicubic, centre crop
    transform = open_clip.image_transform(224, is_train=False)

    def store() -> float:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            ImageStore(tmp, workers).get(data.images, pre)
            return time.perf_counter() - start

    def torchvision() -> float:
        start = time.perf_counter()
        loader = DataLoader(ImageFolder(str(root), transform=transform), batch_size=64, num_workers=workers)
        for _ in loader:
            pass
        return time.perf_counter() - start

    ratio, t_tv = _paired(torchvision, store, repeats)
    return {"images": len(files), "workers": workers, "decode_vs_torchvision": round(ratio, 3),
            "torchvision_images_per_s": round(len(files) / t_tv, 1),
            "store_images_per_s": round(len(files) / t_tv * ratio, 1)}


def _register_protocol(root: Path) -> None:
    from clipbench.protocols import catalog

    catalog._protocols()[PROTOCOL] = catalog.ProtocolDef(  # this process only; nothing is written
        name=PROTOCOL, version=1, kind="class_incremental", builder="datasets",
        description="clipbench bench --data: one session over an image folder",
        params={"target": {"adapter": "image_folder", "root": str(root.absolute()), "test_fraction": 0.2},
                "n_experiences": 1, "test_per_class": 2, "templates": ["a photo of a {c}."]})


def warm_start(root: Path, workers: int, arch: str = ARCH) -> Dict[str, Any]:
    """Seconds from a second run's start to its first training batch, and both runs' peak memory."""
    from .plan import plan
    from .runner import RunOptions, execute
    from .store import ResultStore

    _register_protocol(root)
    first_batch: Dict[str, float] = {}
    original = avalanche_api.TensorBatches.__iter__

    def timed_iter(self):
        for k, batch in enumerate(original(self)):
            if k == 0:
                first_batch.setdefault("t", time.perf_counter())
            yield batch

    out: Dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = ResultStore(tmp)
        options = RunOptions(workers=workers)
        common = [f"model.arch={arch}", "train.iterations=1", "train.batch_size=8", "train.epochs=1"]
        avalanche_api.TensorBatches.__iter__ = timed_iter
        try:
            for k, lr in enumerate(("1e-5", "2e-5")):
                specs = plan("tiny", ["finetune"], [PROTOCOL], sets=[*common, f"train.lr={lr}"])
                first_batch.clear()
                start = time.perf_counter()
                execute(specs, store, "cpu", progress=False, argv=["bench"], quiet=True, options=options)
                if "t" not in first_batch:
                    raise RuntimeError("the bench run never reached a training batch")
                record = store.read_record(specs[0])
                out[f"{'first' if k == 0 else 'second'}_run"] = {
                    "to_first_batch_s": round(first_batch["t"] - start, 2),
                    "peak_rss_mb": record["costs"]["peak_rss_mb"], "wall_s": record["costs"]["wall_seconds"]}
        finally:
            avalanche_api.TensorBatches.__iter__ = original
    out["warm_start_s"] = out["second_run"]["to_first_batch_s"]
    out["peak_rss_mb"] = max(out["first_run"]["peak_rss_mb"], out["second_run"]["peak_rss_mb"])
    return out


def gpu_feed_throughput(root: Path, workers: int, arch: str = "ViT-B-16", batch: int = 256, steps: int = 20
                        ) -> Dict[str, Any]:
    """ViT-B/16 bf16 training images/s fed from the store (memory-mapped uint8, pinned, asynchronous)."""
    import torch.nn.functional as F

    from .engine import CLIPClassifier, make_optimizer
    from .evaluate import _autocast
    from .models import load_model
    from .runner import seed_everything

    data, names = _sources(root)
    seed_everything(0, "gpu-feed")
    loaded = load_model(arch, None, "cuda")
    with tempfile.TemporaryDirectory() as tmp:
        images = ImageStore(tmp, workers).get(data.images, loaded.preprocess)
        model = CLIPClassifier(loaded, names, "a photo of a {c}.").to("cuda").train()
        opt = make_optimizer(model.image_parameters() + model.text_parameters(), {"optimizer": "adamw", "lr": 1e-5})
        batches = avalanche_api.TensorBatches(images, data.labels, batch, batches=steps + 2, device="cuda")
        start = None
        for k, (x, y, _) in enumerate(batches):
            if k == 2:  # after two warm-up steps
                torch.cuda.synchronize()
                start = time.perf_counter()
            with _autocast("cuda", "amp_bf16"):
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / steps
    return {"arch": arch, "batch": batch, "fed_from_store_images_per_s": round(batch / seconds, 1)}


def run(root: str | Path, workers: Optional[int] = None, repeats: int = 3) -> Dict[str, Any]:
    """Every figure of the module docstring for the image folder `root`."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ClipbenchError(f"--data {root}: not a folder; give an image folder DIR/<class>/<image>")
    workers = workers or default_workers()
    out: Dict[str, Any] = {"folder": str(root), **decode_rates(root, workers, repeats), **warm_start(root, workers)}
    if torch.cuda.is_available():
        from .bench import train_throughput

        out["gpu"] = {**gpu_feed_throughput(root, workers),
                      "on_device": train_throughput("ViT-B-16", "cuda", 256, 20, "amp_bf16")}
        out["gpu"]["feed_vs_on_device"] = round(
            out["gpu"]["fed_from_store_images_per_s"] / out["gpu"]["on_device"]["samples_per_s"], 3)
    else:
        out["gpu"] = None
    return out
