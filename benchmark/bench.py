"""`clipbench bench [--quick]`: how close clipbench comes to the limit of the model it runs.

Every figure is a ratio measured side by side in this process on the same model and data, each
side timed `repeats` times interleaved and the best kept (other work on the machine only slows
a side down):

- eval_vs_bare: images/s of clipbench's zero-shot image encoding (uint8 batches normalised and
  resized on the fly, inference mode) over a bare `encode_image` loop on pre-normalised tensors.
- train_vs_bare: samples/s of the engine's training (Avalanche loop, `finetune` plugin, the
  engine's plugin) over a bare PyTorch loop doing the same forward, backward and AdamW step;
  `train_vs_bare_by_method` gives the same for every registered method (its own extra work shows).
- grid_forward_ratio: images through the vision tower during a grid, with evaluation sharing
  (row 0 cached per suite, an untrained model encoded once) over the same grid without it.
- peak_rss_mb: the resident-memory high-water mark of a separate process running one suite run.
- On a GPU: ViT-B-32 training throughput in bf16 and its share of the device's peak (not measured on CPU).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List

import torch
import torch.nn.functional as F

from . import runner
from .engine import CLIPClassifier, train_experience
from .evaluate import encode_images
from .models import load_model
from .runner import execute, plan, seed_everything
from .store import ResultStore


def _best(fns: List[Callable[[], float]], repeats: int) -> List[float]:
    """Interleave the timed functions `repeats` times; the best (shortest) time of each."""
    times = [[] for _ in fns]
    for _ in range(repeats):
        for k, fn in enumerate(fns):
            times[k].append(fn())
    return [min(t) for t in times]


def _timed(fn: Callable[[], Any]) -> Callable[[], float]:
    def run() -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    return run


def eval_ratio(loaded, images: torch.Tensor, batch: int, repeats: int) -> Dict[str, float]:
    from clipbench.protocols.data import to_model_input

    x = torch.cat([to_model_input(images[s:s + batch], loaded.image_size, loaded.mean, loaded.std)
                   for s in range(0, len(images), batch)])

    def bare():
        with torch.inference_mode():
            for s in range(0, len(x), batch):
                loaded.clip.encode_image(x[s:s + batch])

    def ours():
        encode_images(loaded, images, batch)

    loaded.clip.eval()
    t_bare, t_ours = _best([_timed(bare), _timed(ours)], repeats)
    return {"eval_vs_bare": round(t_bare / t_ours, 3), "eval_bare_images_per_s": round(len(images) / t_bare, 1)}


def _fresh(arch: str, names: List[str]):
    seed_everything(0, "bench")
    loaded = load_model(arch, None)
    return loaded, CLIPClassifier(loaded, names, "a photo of a {c}.")


def train_ratio(arch: str, streams, repeats: int) -> Dict[str, Any]:
    """Samples/s of the engine (per method) over a bare loop, on experience 0 of `streams`.

    Both sides build a fresh model outside the timer and are warmed up once before timing.
    """
    from clipbench.methods.base import METHODS
    from clipbench.protocols.data import to_model_input

    data, names = streams.train[0], streams.class_names
    n_active = streams.experience_classes[0][-1] + 1
    settings = {"epochs": 1, "batch_size": 32, "lr": 1e-4, "weight_decay": 0.0, "optimizer": "adamw"}

    def bare() -> float:
        loaded, model = _fresh(arch, names)
        model.num_active = n_active
        model.train()
        opt = torch.optim.AdamW(model.image_parameters() + model.text_parameters(), lr=settings["lr"], weight_decay=0.0)
        x = to_model_input(data.images, loaded.image_size, loaded.mean, loaded.std)
        start = time.perf_counter()
        perm = torch.randperm(len(x))
        for s in range(0, len(x), 32):
            b = perm[s:s + 32]
            loss = F.cross_entropy(model(x[b]), data.labels[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        return (time.perf_counter() - start) / len(x)  # seconds per sample

    def engine(name: str) -> Callable[[], float]:
        def run() -> float:
            cls = METHODS.get(name)
            loaded, model = _fresh(arch, names)
            method = cls(cls.Config())
            method.setup(model, streams)
            train_data = method.training_data(streams, 0)
            active = max(n_active, int(train_data.labels.max()) + 1)
            seconds = train_experience(model, method, train_data, 0, active, settings, "cpu", progress=False)
            return seconds / len(train_data)
        return run

    bare(), engine("finetune")()  # warm-up: first calls pay for allocator and autograd set-up
    t_bare, t_ft = _best([bare, engine("finetune")], repeats)
    methods = [m for m in METHODS.names() if METHODS.get(m).trains]
    by_method = {name: round(t_bare / engine(name)(), 3) for name in methods}
    return {"train_vs_bare": round(t_bare / t_ft, 3), "train_bare_samples_per_s": round(1 / t_bare, 1),
            "train_vs_bare_by_method": by_method}


def grid_forward_ratio(suite: str, methods: List[str], protocol: str, sets: List[str]) -> Dict[str, Any]:
    """Images through the vision tower in a grid with evaluation sharing over the same grid without it."""
    counts = {}
    original_load = runner.load_model

    def counting_load(*args, **kwargs):
        loaded = original_load(*args, **kwargs)
        tower = getattr(loaded.clip.visual, "trunk", loaded.clip.visual)
        tower.register_forward_pre_hook(lambda mod, inp: counts.__setitem__("n", counts.get("n", 0) + len(inp[0])))
        return loaded

    runner.load_model = counting_load
    try:
        results = {}
        for share in (True, False):
            counts["n"] = 0
            runner.SHARE_EVALUATION = share
            with tempfile.TemporaryDirectory() as tmp:
                specs = plan(suite, methods, [protocol], sets=sets)
                execute(specs, ResultStore(tmp), "cpu", progress=False, argv=["bench"], quiet=True)
            results[share] = counts["n"]
    finally:
        runner.load_model = original_load
        runner.SHARE_EVALUATION = True
    return {"grid_forward_ratio": round(results[True] / results[False], 3),
            "grid_forward_passes": {"shared": results[True], "unshared": results[False],
                                    "grid": f"{suite}/{protocol}: {', '.join(methods)}"}}


def child_peak_rss(args: List[str]) -> float:
    """Peak resident memory (MB) of a separate `clipbench` process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    subprocess.run([sys.executable, "-m", "clipbench.cli", *args], check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(after, before) / 1024.0, 1)


def run(quick: bool) -> Dict[str, Any]:
    """Measure and return every figure (see the module docstring)."""
    from clipbench.protocols.catalog import get_protocol

    torch.manual_seed(0)
    started = time.perf_counter()
    per_class = 128 if quick else 256  # experience 0 holds 2 classes: 8 or 16 batches of 32
    params = dict(get_protocol("tiny_shapes").params, train_per_class=per_class, test_per_class=8,
                  heldout_per_class=8, retrieval_images=16, reference_pairs=32)
    streams = get_protocol("tiny_shapes").build(None, 0, params)
    loaded = load_model("clipbench-tiny", None)
    images = torch.cat([t.images for t in streams.train])
    out: Dict[str, Any] = {"model": "clipbench-tiny (3.4M parameters, 32 px)", "torch_threads": torch.get_num_threads()}
    out.update(eval_ratio(loaded, images[:512].repeat(2 if quick else 8, 1, 1, 1), 64, 3 if quick else 5))
    out.update(train_ratio("clipbench-tiny", streams, 3 if quick else 5))
    small = ["protocols.tiny_shapes.train_per_class=8", "protocols.tiny_shapes.test_per_class=4"]
    if quick:
        out.update(grid_forward_ratio("tiny", ["zeroshot", "finetune", "lwf"], "tiny_shapes", small))
        with tempfile.TemporaryDirectory() as tmp:
            out["peak_rss_mb"] = child_peak_rss(["run", "--method", "finetune", "--protocol", "tiny_shapes", "--suite",
                                                 "tiny", "--results", tmp, "--quiet", "--set", *small])
        out["peak_rss_of"] = "one tiny-suite run in a child process (--quick)"
    else:
        out.update(grid_forward_ratio("mini", ["zeroshot", "finetune", "lwf", "er"], "mini_fashion_mst", []))
        with tempfile.TemporaryDirectory() as tmp:
            out["peak_rss_mb"] = child_peak_rss(["run", "--method", "finetune", "--protocol", "mini_fashion_mst",
                                                 "--suite", "mini", "--results", tmp, "--quiet"])
        out["peak_rss_of"] = "one mini-suite run (finetune, mini_fashion_mst) in a child process"
    out["gpu"] = None if not torch.cuda.is_available() else "not measured by this build"
    out["seconds"] = round(time.perf_counter() - started, 1)
    return out


def main(quick: bool) -> int:
    print(json.dumps(run(quick), indent=1))
    return 0
