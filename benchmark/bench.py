"""`clipbench bench [--quick]`: how close clipbench comes to the limit of the model it runs.

Every figure is a ratio measured side by side in this process on the same model and data: the
two sides are timed back to back several times and the median of the pairs' ratios is reported
(see `_paired`):

- eval_vs_bare: images/s of clipbench's zero-shot image encoding (uint8 batches normalised and
  resized on the fly, inference mode) over a bare `encode_image` loop on pre-normalised tensors.
- train_vs_bare: samples/s of the engine's training (Avalanche loop, `finetune` plugin, the
  engine's plugin) over a bare PyTorch loop doing the same forward, backward and AdamW step;
  `train_vs_bare_by_method` gives the same for every registered method (its own extra work shows).
- grid_forward_ratio: images asked of the vision tower during a grid, with evaluation sharing
  (row 0 cached per suite, an untrained model encoded once) over the same grid without it.
- grid_wall_over_work: a grid's wall time (planning, model loads, data, records, everything) over the sum
  of its runs' own training and evaluation seconds (`raw.train_seconds` + `raw.eval_seconds` of each
  record), with the processes `clipbench run` would use (`jobs`); 1/jobs would be a grid that does nothing
  but train and evaluate (`grid_overhead`). `--grid`
  measures the whole offline grid (`run --all`: every method, both mini protocols, one seed).
- peak_rss_mb: the resident-memory high-water mark of a separate process running one suite run.
- gpu (on a GPU only): ViT-B-32 training throughput in bf16 autocast, its FLOP/s and their share of the
  device's dense bf16 peak (`train_throughput`; null on a machine without CUDA).
"""

from __future__ import annotations

import contextlib
import gc
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from .engine import CLIPClassifier, make_optimizer, train_experience
from .evaluate import encode_images
from .models import LoadedModel, load_model
from .plan import plan
from .runner import RunOptions, execute, seed_everything
from .workers import default_jobs, run_threads
from .workers import execute as execute_jobs
from .spec import DEFAULTS
from .store import ResultStore


def _paired(bare: Callable[[], float], ours: Callable[[], float], repeats: int) -> Tuple[float, float]:
    """Time `bare` and `ours` back to back `repeats` times (alternating which goes first).

    Returns the median over the pairs of t_bare / t_ours, and the best bare time. A ratio within
    a pair compares the two sides under the same machine conditions, so slow drifts of the whole
    machine (a shared VM speeds up and slows down by 10% or more) cancel out.
    """
    ratios, bare_times = [], []
    with _no_gc():
        for k in range(repeats):
            if k % 2:
                t_ours, t_bare = ours(), bare()
            else:
                t_bare, t_ours = bare(), ours()
            ratios.append(t_bare / t_ours)
            bare_times.append(t_bare)
    return statistics.median(ratios), min(bare_times)


@contextlib.contextmanager
def _no_gc():
    """Python's cyclic garbage collector off while timing (as `timeit` does): a collection landing in
    one side's timed run would be charged to it at random."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _timed(fn: Callable[[], Any]) -> Callable[[], float]:
    def run() -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    return run


def eval_ratio(loaded, images: torch.Tensor, batch: int, repeats: int) -> Dict[str, float]:
    x = torch.cat([loaded.model_input(images[s:s + batch]) for s in range(0, len(images), batch)])

    def bare():
        with torch.inference_mode():
            for s in range(0, len(x), batch):
                loaded.clip.encode_image(x[s:s + batch])

    def ours():
        encode_images(loaded, images, batch)

    loaded.clip.eval()
    bare(), ours()  # warm-up
    ratio, t_bare = _paired(_timed(bare), _timed(ours), repeats)
    return {"eval_vs_bare": round(ratio, 3), "eval_bare_images_per_s": round(len(images) / t_bare, 1)}


def _fresh(arch: str, names: List[str]):
    seed_everything(0, "bench")
    loaded = load_model(arch, None)
    return loaded, CLIPClassifier(loaded, names, "a photo of a {c}.")


TRAIN_SETTINGS = {"epochs": 1, "batch_size": 32, "lr": 1e-4, "weight_decay": 0.0, "optimizer": "adamw"}


def _train_timers(arch: str, streams) -> Tuple[Callable[[], float], Callable[[str], Callable[[], float]]]:
    """(bare, engine): seconds per sample of one epoch on experience 0 of `streams`, by a bare loop and by
    the engine with a given method. Both build a fresh model outside the timer."""
    from clipbench.methods.base import METHODS

    data, names = streams.train[0], streams.class_names
    n_active = streams.experience_classes[0][-1] + 1

    def bare() -> float:
        loaded, model = _fresh(arch, names)
        model.num_active = n_active
        model.train()
        opt = make_optimizer(model.image_parameters() + model.text_parameters(), TRAIN_SETTINGS)  # the engine's own
        x = loaded.model_input(data.images)
        batch = TRAIN_SETTINGS["batch_size"]
        start = time.perf_counter()
        perm = torch.randperm(len(x))
        for s in range(0, len(x), batch):
            b = perm[s:s + batch]
            loss = F.cross_entropy(model(x[b]), data.labels[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        return (time.perf_counter() - start) / len(x)

    def engine(name: str) -> Callable[[], float]:
        def run() -> float:
            cls = METHODS.get(name)
            loaded, model = _fresh(arch, names)
            method = cls(cls.Config())
            method.setup(model, streams)
            train_data = method.training_data(streams, 0)
            active = max(n_active, int(train_data.labels.max()) + 1)
            seconds = train_experience(model, method, train_data, 0, active, TRAIN_SETTINGS, "cpu", progress=False)
            return seconds / len(train_data)
        return run

    return bare, engine


def train_ratio(arch: str, streams, method_streams, repeats: int) -> Dict[str, Any]:
    """Samples/s of the engine with `finetune` over a bare loop on experience 0 of `streams` (`repeats`
    pairs), and of every training method on the smaller `method_streams` (one run each, against the
    best of three bare runs there)."""
    from clipbench.methods.base import METHODS

    bare, engine = _train_timers(arch, streams)
    bare(), engine("finetune")()  # warm-up: first calls pay for allocator and autograd set-up
    ratio, t_bare = _paired(bare, engine("finetune"), repeats)
    small_bare, small_engine = _train_timers(arch, method_streams)
    methods = [m for m in METHODS.names() if METHODS.get(m).trains]
    with _no_gc():
        t_small = min(small_bare() for _ in range(3))
        by_method = {name: round(t_small / small_engine(name)(), 3) for name in methods}
    return {"train_vs_bare": round(ratio, 3), "train_bare_samples_per_s": round(1 / t_bare, 1),
            "train_vs_bare_by_method": by_method}


def grid_forward_ratio(suite: str, methods: List[str], protocol: str, sets: List[str]) -> Dict[str, Any]:
    """Images asked of the vision tower in a grid with evaluation sharing over the same grid without it."""
    counts = {"n": 0}

    def count_images(loaded: LoadedModel) -> None:
        # images asked of the image tower (its own content cache, in the mini model, is not counted as saving)
        loaded.clip.visual.register_forward_pre_hook(
            lambda mod, inp: counts.__setitem__("n", counts["n"] + len(inp[0])))

    results = {}
    for share in (True, False):
        counts["n"] = 0
        with tempfile.TemporaryDirectory() as tmp:
            specs = plan(suite, methods, [protocol], sets=sets)
            execute(specs, ResultStore(tmp), "cpu", progress=False, argv=["bench"], quiet=True,
                    options=RunOptions(share_evaluation=share, on_model_loaded=count_images))
        results[share] = counts["n"]
    return {"grid_forward_ratio": round(results[True] / results[False], 3),
            "grid_forward_passes": {"shared": results[True], "unshared": results[False],
                                    "grid": f"{suite}/{protocol}: {', '.join(methods)}"}}


def grid_overhead(suite: str, methods: Optional[List[str]], sets: List[str]) -> Dict[str, Any]:
    """One grid on a fresh results folder, in this process: its wall time over its runs' training and
    evaluation time (from the records it wrote). `methods` None: every registered method."""
    with tempfile.TemporaryDirectory() as tmp:
        store = ResultStore(tmp)
        started = time.perf_counter()
        specs = plan(suite, methods, None, sets=sets)
        jobs = default_jobs("cpu", None, len(specs))  # the processes `clipbench run` would use
        summary = execute_jobs(specs, store, "cpu", progress=False, argv=["bench"], quiet=True, jobs=jobs,
                               threads=run_threads(jobs, None))
        wall = time.perf_counter() - started
        work, runs = 0.0, 0
        for spec in specs:
            raw = (store.read_record(spec) or {}).get("raw") or {}
            if raw.get("train_seconds") is not None:
                work += sum(raw["train_seconds"]) + sum(raw.get("eval_seconds") or [])
                runs += 1
    return {"grid_wall_over_work": round(wall / work, 3) if work else None,
            "grid_overhead": {"wall_s": round(wall, 1), "train_and_eval_s": round(work, 1), "runs_timed": runs,
                              "jobs": jobs,
                              "runs": len(specs), "ran": summary.ran, "n/a": summary.na, "failed": summary.failed,
                              "grid": f"{suite}: {'every method' if methods is None else ', '.join(methods)}"
                                      f"{' (' + ' '.join(sets) + ')' if sets else ''}"}}


# Dense bf16 tensor-core peaks (FLOP/s) from NVIDIA's data sheets, matched against the device name
# in this order (so "H100 PCIe" wins over "H100"). Unknown devices get no share of peak.
PEAK_BF16_FLOPS = (("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12))


def peak_bf16_flops(device_name: str) -> Optional[float]:
    return next((flops for key, flops in PEAK_BF16_FLOPS if key in device_name), None)


def train_throughput(arch: str, device: str, batch: int, steps: int, precision: str) -> Dict[str, Any]:
    """Samples/s of the engine's training step (the `finetune` set-up: both towers train, 100 class
    prompts) on random-init weights (throughput does not depend on their values), and its FLOP/s
    counted by torch's FlopCounterMode over one step, with the share of the device's peak."""
    from torch.utils.flop_counter import FlopCounterMode

    from .evaluate import _autocast

    seed_everything(0, "throughput")
    loaded = load_model(arch, None, device)
    model = CLIPClassifier(loaded, [f"class {k}" for k in range(100)], "a photo of a {c}.").to(device).train()
    opt = make_optimizer(model.image_parameters() + model.text_parameters(), {"optimizer": "adamw", "lr": 1e-5})
    images = torch.randint(0, 256, (batch, 3, *loaded.image_size), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 100, (batch,), device=device)

    def step() -> None:
        with _autocast(device, precision):
            loss = F.cross_entropy(model(images), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    with FlopCounterMode(display=False) as counter:
        step()
    for _ in range(2):  # warm-up (kernels chosen, allocator filled)
        step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = (time.perf_counter() - start) / steps
    step_flops = counter.get_total_flops()
    flops = step_flops / seconds
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"
    peak = peak_bf16_flops(name) if precision == "amp_bf16" else None
    return {"arch": arch, "device": name, "precision": precision, "batch": batch,
            "samples_per_s": round(batch / seconds, 1), "gflops_per_sample": round(step_flops / batch / 1e9, 3),
            "tflops_per_s": round(flops / 1e12, 3),
            "peak_tflops": peak and round(peak / 1e12, 1), "share_of_peak": peak and round(flops / peak, 3)}


def child_peak_rss(args: List[str]) -> float:
    """Peak resident memory (MB) of a separate `clipbench` process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    subprocess.run([sys.executable, "-m", "clipbench.cli", *args], check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(after, before) / 1024.0, 1)


def run(quick: bool, grid: bool = False) -> Dict[str, Any]:
    """Measure and return every figure (see the module docstring)."""
    from clipbench.protocols.catalog import get_protocol

    torch.manual_seed(0)
    started = time.perf_counter()
    protocol = get_protocol("tiny_shapes")

    def tiny_streams(per_class: int):  # experience 0 holds 2 classes
        params = dict(protocol.params, train_per_class=per_class, test_per_class=8, heldout_per_class=8,
                      retrieval_images=16, reference_pairs=32)
        return protocol.build(None, 0, params)

    streams = tiny_streams(512 if quick else 1024)  # 32 or 64 batches of 32
    loaded = load_model("clipbench-tiny", None)
    images = torch.cat([t.images for t in streams.train])
    out: Dict[str, Any] = {"model": "clipbench-tiny (3.4M parameters, 32 px)", "torch_threads": torch.get_num_threads()}
    eval_batch = DEFAULTS["eval"]["batch_size"]  # what `clipbench run` evaluates with
    out.update(eval_ratio(loaded, images[:1024].repeat(2 if quick else 8, 1, 1, 1), eval_batch, 11 if quick else 15))
    out.update(train_ratio("clipbench-tiny", streams, tiny_streams(128 if quick else 512), 7 if quick else 11))
    if quick:
        small = ["protocols.tiny_shapes.train_per_class=8", "protocols.tiny_shapes.test_per_class=4"]
        out.update(grid_forward_ratio("tiny", ["zeroshot", "finetune", "lwf"], "tiny_shapes", small))
        if not grid:
            out.update(grid_overhead("tiny", ["zeroshot", "finetune", "lwf", "er"], small))
        # fewer Fashion-MNIST images than the suite's 200/100 per class; the held-out sets as they are
        mini_run = ["--set", "protocols.mini_fashion_mst.train_per_class=50", "protocols.mini_fashion_mst.test_per_class=20"]
        out["peak_rss_of"] = "one mini-suite run (finetune, mini_fashion_mst, 50/20 images per class) in a child process"
    else:
        out.update(grid_forward_ratio("mini", ["zeroshot", "finetune", "lwf", "er"], "mini_fashion_mst", []))
        if not grid:
            out.update(grid_overhead("mini", ["zeroshot", "finetune", "lwf", "er", "simplecil", "rapf"], []))
    if grid:
        out.update(grid_overhead("mini", None, []))
        mini_run = []
        out["peak_rss_of"] = "one mini-suite run (finetune, mini_fashion_mst) in a child process"
    with tempfile.TemporaryDirectory() as tmp:
        out["peak_rss_mb"] = child_peak_rss(["run", "--method", "finetune", "--protocol", "mini_fashion_mst",
                                             "--suite", "mini", "--results", tmp, "--quiet", *mini_run])
    out["gpu"] = train_throughput("ViT-B-32", "cuda", 256, 10 if quick else 30, "amp_bf16") if torch.cuda.is_available() else None
    out["seconds"] = round(time.perf_counter() - started, 1)
    return out
