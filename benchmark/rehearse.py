"""`clipbench bench --rehearse`: a CIFAR-100-sized stream at 224 px, written and run on this machine.

Real scale, rehearsed where there is no GPU and no CIFAR: `write_stream` writes 100 classes of 500 training and
100 test JPEGs each at 224 x 224 px (`--scale` shrinks the counts) in the `lamda_folder` layout
(`<root>/train/<class>/*.jpg`, `<root>/test/<class>/*.jpg`: how the LAMDA/PROOF/C3Box archives ship CIFAR-100 and
every other CLIP class-incremental dataset as files, and what a user's own image folders look like). The pictures
are Debian's openclipart PNGs (real images of every PIL mode), each written as a different random crop, so no two
files are alike. `rehearse` then reads the stream as a protocol does and reports:

- decode: the decoded-image store filling from the files (images/s, `workers` processes) and its size on disk;
- memory: the resident set after the store is filled and at the end (peak); the store is memory-mapped, so it
  does not grow with the images (compare two `--scale`s);
- time to the first training step: a fresh model (open_clip, random weights) from nothing to one optimizer step
  on a batch of 64, with the store cold (decoding first) and warm (already filled: the next run of a grid);
- evaluation throughput: images/s of the image encoder over the test set (on the CPU: this process's threads;
  on a GPU when `--device cuda`).

`scripts/gpu_check.sh` runs the same at ViT-B/16 on a GPU when one is lent.
"""

from __future__ import annotations

import os
import resource
import shutil
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from .errors import ClipbenchError

OPENCLIPART = Path("/usr/share/openclipart/png")
CLASSES, TRAIN_PER_CLASS, TEST_PER_CLASS, SIZE = 100, 500, 100, 224


MAX_PIXELS = 4_000_000  # a few of the clip-art PNGs are posters of 200 megapixels: left out


def _pictures() -> List[Path]:
    from PIL import Image

    files = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        for f in sorted(OPENCLIPART.rglob("*.png")) if OPENCLIPART.is_dir() else []:
            try:
                with Image.open(f) as img:  # the header only
                    if img.size[0] * img.size[1] <= MAX_PIXELS:
                        files.append(f)
            except (OSError, Image.DecompressionBombError):  # unreadable, or too large for PIL to open at all
                continue
    if not files:
        raise ClipbenchError(f"bench --rehearse: no pictures under {OPENCLIPART}; install Debian's openclipart-png "
                             "(make setup does)")
    return files


def _write_one(job: Tuple[str, str, int]) -> int:
    """One JPEG: picture `src` on white, a random crop of 60-100 % of its side, resized to SIZE px; its bytes."""
    from PIL import Image

    src, dst, seed = job
    rng = np.random.default_rng(seed)
    with Image.open(src) as img:
        img = img.convert("RGBA")
        canvas = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(canvas, img).convert("RGB")
    w, h = img.size
    side = max(8, int(min(w, h) * rng.uniform(0.6, 1.0)))
    x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    img = img.crop((x, y, x + side, y + side)).resize((SIZE, SIZE), Image.BICUBIC)
    img.save(dst, "JPEG", quality=90)
    return os.path.getsize(dst)


def write_stream(root: Path, scale: float = 1.0, workers: int = 2) -> Dict[str, Any]:
    """Write the stream under `root` (see the module docstring); returns counts, seconds and megabytes."""
    pictures = _pictures()
    train_n, test_n = max(1, round(TRAIN_PER_CLASS * scale)), max(1, round(TEST_PER_CLASS * scale))
    classes = CLASSES if scale >= 0.02 else 2
    jobs = []
    for split, per_class in (("train", train_n), ("test", test_n)):
        for c in range(classes):
            folder = root / split / f"class_{c:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                # a class draws from its own run of pictures: classes differ, images of one class resemble
                src = pictures[(c * 37 + k % 40) % len(pictures)]
                seed = (1 if split == "test" else 0) * 10**8 + c * 10**5 + k  # fixed: the same files every time
                jobs.append((str(src), str(folder / f"{k:05d}.jpg"), seed))
    start = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        written = sum(pool.map(_write_one, jobs, chunksize=64))
    return {"classes": classes, "train_images": classes * train_n, "test_images": classes * test_n,
            "size_px": SIZE, "write_s": round(time.perf_counter() - start, 1), "files_mb": round(written / 2**20, 1)}


def _rss_mb() -> Dict[str, float]:
    """This process's resident memory now: anonymous (its own) and file-backed (memory-mapped store pages it has
    touched: page cache the kernel takes back under pressure), MB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile"):
                out[key] = round(int(value.split()[0]) / 1024, 1)
    return {"anon_mb": out.get("RssAnon", 0.0), "file_mb": out.get("RssFile", 0.0)}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _first_step(arch: str, images: torch.Tensor, labels: torch.Tensor, names: List[str], device: str
                ) -> Dict[str, float]:
    """Seconds from nothing to the first batch in hand (model built with random weights, batch gathered from the
    store) and to one optimizer step done (a batch of 64, every class prompt through the text tower)."""
    import torch.nn.functional as F

    from .avalanche_api import TensorBatches
    from .engine import CLIPClassifier, make_optimizer
    from .models import load_model

    start = time.perf_counter()
    torch.manual_seed(0)
    loaded = load_model(arch, None, device)
    model = CLIPClassifier(loaded, names, "a photo of a {c}.").to(device).train()
    opt = make_optimizer(model.image_parameters() + model.text_parameters(), {"optimizer": "adamw", "lr": 1e-5})
    for x, y, _ in TensorBatches(images, labels, 64, batches=1, device=device):
        batch = time.perf_counter() - start
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return {"to_first_batch_s": batch, "to_first_step_s": time.perf_counter() - start}


def rehearse(root: Path, arch: str = "ViT-S-32", workers: int = 2, eval_images: Optional[int] = None,
             cache: Optional[Path] = None, device: str = "cpu") -> Dict[str, Any]:
    """Read the stream under `root` as a protocol does, through the store, and measure (module docstring)."""
    from clipbench.protocols.formats.lamda_folder import read

    from .evaluate import encode_images
    from .image_store import ImageStore
    from .models import load_model

    (train, classes), (test, _) = read(root / "train"), read(root / "test")
    names = [c.replace("_", " ") for c in classes]
    preprocess = load_model(arch, None).preprocess
    own = cache is None
    cache = Path(tempfile.mkdtemp(prefix="clipbench-rehearse-")) if own else cache
    try:
        rss_before = _rss_mb()
        cold_start = time.perf_counter()
        store = ImageStore(cache, workers)
        train_images = store.get(train.images, preprocess, "decode train")
        decode_train_s = time.perf_counter() - cold_start
        start = time.perf_counter()
        test_images = store.get(test.images, preprocess, "decode test")
        decode_test_s = time.perf_counter() - start
        decoded = time.perf_counter() - cold_start
        cold = _first_step(arch, train_images, train.labels, names, device)
        rss_after_store = _rss_mb()
        warm_start = time.perf_counter()
        warm = ImageStore(cache, workers)  # the next run of a grid: the files are decoded already
        warm_images = warm.get(train.images, preprocess, "decode train")
        opened = time.perf_counter() - warm_start
        warm = _first_step(arch, warm_images, train.labels, names, device)
        store_mb = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()) / 2**20
        loaded = load_model(arch, None, device)
        n_eval = len(test_images) if eval_images is None else min(eval_images, len(test_images))
        start = time.perf_counter()
        encode_images(loaded, test_images[:n_eval], 256, device=device)
        eval_s = time.perf_counter() - start
        images = len(train_images) + len(test_images)
        return {
            "arch": arch, "device": device, "workers": workers, "torch_threads": torch.get_num_threads(),
            "decode_images_per_s": round(images / (decode_train_s + decode_test_s), 1),
            "decode_s": round(decode_train_s + decode_test_s, 1), "store_mb": round(store_mb, 1),
            "store_bytes_per_image": round(store_mb * 2**20 / images),
            "rss_before_store": rss_before, "rss_after_store": rss_after_store, "rss_at_end": _rss_mb(),
            "peak_rss_mb": round(_peak_rss_mb(), 1),
            # cold: the store filled first; warm: opened as the next run of a grid finds it
            "first_batch_cold_s": round(decoded + cold["to_first_batch_s"], 2),
            "first_step_cold_s": round(decoded + cold["to_first_step_s"], 2),
            "first_batch_warm_s": round(opened + warm["to_first_batch_s"], 2),
            "first_step_warm_s": round(opened + warm["to_first_step_s"], 2),
            "eval_images": n_eval, "eval_images_per_s": round(n_eval / eval_s, 1),
        }
    finally:
        if own:
            shutil.rmtree(cache, ignore_errors=True)


def run(scale: float = 1.0, workers: int = 2, arch: str = "ViT-S-32", eval_images: Optional[int] = None,
        folder: Optional[str] = None, device: str = "cpu") -> Dict[str, Any]:
    """Write the stream (into `folder`, or a temporary folder removed after) and rehearse it."""
    if not 0 < scale <= 1:
        raise ClipbenchError(f"--scale must be in (0, 1], got {scale}")
    root = Path(folder) if folder else Path(tempfile.mkdtemp(prefix="clipbench-stream-"))
    try:
        written = write_stream(root, scale, workers)
        return {"stream": {"scale": scale, "layout": "lamda_folder", **written},
                **rehearse(root, arch, workers, eval_images, device=device)}
    finally:
        if not folder:
            shutil.rmtree(root, ignore_errors=True)
