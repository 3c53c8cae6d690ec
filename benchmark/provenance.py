"""Provenance: which code, libraries and hardware produced a record."""

from __future__ import annotations

import platform
import socket
import subprocess
import sys
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List

import torch

import clipbench

SOURCE_DIR = Path(clipbench.__file__).resolve().parent


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(SOURCE_DIR), *args], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@lru_cache(maxsize=1)
def cpu_kernels() -> Dict[str, Any]:
    """The CPU and the kernel family torch dispatches to on it (AVX512, AVX2, DEFAULT, ...). A CPU run is
    bit-exact only on the same family: another one rounds differently (measured on `prepare mini`'s
    projections: up to 2.1e-5 apart between AVX2 and DEFAULT)."""
    model = None
    try:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), None)
    except OSError:
        pass
    return {"model": model or platform.processor() or platform.machine(),
            "torch_capability": torch.backends.cpu.get_cpu_capability()}


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return platform.processor() or platform.machine()


@lru_cache(maxsize=1)
def code_version() -> Dict[str, Any]:
    """The commit and dirty flag of the code this process loaded, read once (call it at start-up:
    a commit made while a long grid runs must not be credited with its numbers).

    Changes under `results/` do not make the code dirty: they are what runs write, e.g. a grid
    regenerating the committed `results/published`."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ":(top)", ":(top,exclude)results")
    return {"git_commit": commit, "git_dirty": bool(status) if status is not None else None}


def collect(device: str, precision: str, argv: List[str]) -> Dict[str, Any]:
    """Everything needed to say where a number came from, except start/end times (the runner adds those)."""
    return {
        **code_version(),
        "versions": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "open_clip": _version("open_clip_torch"),
            "avalanche": _version("avalanche-lib"),
            "clipbench": clipbench.__version__,
        },
        "device": device,
        "device_name": device_name(device),
        "host": socket.gethostname(),
        "precision": precision,
        "torch_threads": torch.get_num_threads(),
        "cpu": dict(cpu_kernels()),  # read once per process; a copy, so a record never shares the cached dict
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "argv": list(argv),
    }
