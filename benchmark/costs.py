"""What a run costs: peak memory while it runs, and the bytes a method keeps between experiences."""

from __future__ import annotations

import resource
from typing import Any, Dict, Optional

import torch

from clipbench.streams import Streams


def peak_rss_mb() -> float:
    """The process's resident-memory high-water mark (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class PeakMemory:
    """Peak resident memory of this process while a block runs, sampled every 0.1 s by a thread
    (ru_maxrss only ever grows over a whole grid, so it cannot say what one run needed)."""

    def __init__(self, interval: float = 0.1):
        import threading

        import psutil

        self._proc, self._interval, self.peak = psutil.Process(), interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self._stop.wait(self._interval)

    def __enter__(self) -> "PeakMemory":
        self.peak = self._proc.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def accumulated(prior: Dict[str, Any], wall_seconds: float, peak_rss: int, peak_gpu: Optional[int],
                extra_bytes: int) -> Dict[str, Any]:
    """A run's costs over every process it took: this process's figures joined with `prior`, those its
    checkpoint carried ({} for a fresh run). Wall time is summed (each earlier process up to its last
    checkpoint: what a killed process did after it is lost with it), peak memory and kept bytes are the
    maximum."""
    return {"wall_seconds": prior.get("wall_seconds", 0.0) + wall_seconds,
            "peak_rss_bytes": max(prior.get("peak_rss_bytes", 0), peak_rss),
            "peak_gpu_bytes": None if peak_gpu is None else max(prior.get("peak_gpu_bytes") or 0, peak_gpu),
            "extra_bytes": max(prior.get("extra_bytes", 0), extra_bytes),
            "processes": prior.get("processes", 0) + 1}


def state_bytes(obj: Any, _seen: Optional[set] = None) -> int:
    """Bytes of the tensors a method keeps (teachers, buffers, exemplars, memories), found by walking
    its attributes; the model and the protocol's streams are not the method's to count."""
    from torch import nn

    seen = _seen if _seen is not None else set()
    if id(obj) in seen or isinstance(obj, (nn.Module, Streams)):
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(state_bytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(state_bytes(v, seen) for v in obj)
    if hasattr(obj, "__dict__") and not isinstance(obj, type):
        return sum(state_bytes(v, seen) for v in vars(obj).values())
    return 0
