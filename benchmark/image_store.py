"""The decoded-image store: each image set decoded once per (its files, the model's preprocessing) into a
memory-mapped uint8 file, reused by every method, seed and runner that needs the same images.

Layout: `<cache dir>/images/<key>.u8` (raw uint8 [N, 3, H, W]) and `<key>.json` (shape and what it holds,
written last: a file without it is not finished). The key is the sha256 of the preprocessing's identity
and the set's signature (each file's path, crop box, size and modification time; or the bytes of raw
pixel arrays). A set is decoded by `workers` processes writing straight into a temporary file that is
renamed into place; concurrent runners asking for the same set wait on a lock for the first one instead
of decoding it again. Runs read the images through a copy-on-write memory map: the pages are the
kernel's file cache, shared by every runner on the machine, so a run holds no private copy of its data.

`<cache dir>` is `clipbench run --cache-dir`, else `$CLIPBENCH_CACHE`, else the results folder's `cache/` (where
the row-0 cache lives too), so runners sharing a results folder share decoded images. Decoding uses
`--workers` processes (default: every core this process may use). Files are created with the process's
umask; the description is written through the result store's one atomic-write helper. Concurrent runners
wait on a lock directory per set (a directory, never a file, so a refused run leaves no file behind).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import multiprocessing
import os
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, List, Optional, Tuple

import numpy as np
import torch
from tqdm import tqdm

from clipbench.streams import ImageSources

from .decode import Failure, UndecodableImages, decode_into
from .errors import StorageError
from .preprocess import Preprocess
from .store import atomic_write_json, temporary_prefix

STORE_VERSION = 1
CHUNK = 64  # images per task handed to a worker: large enough to amortise the hand-off, small for progress


def default_cache_dir(results: Optional[str | Path] = None) -> Path:
    """`$CLIPBENCH_CACHE`, else `<results>/cache`, else `$XDG_CACHE_HOME/clipbench` (`~/.cache/clipbench`)."""
    env = os.environ.get("CLIPBENCH_CACHE")
    if env:
        return Path(env).expanduser()
    if results is not None:
        return Path(results).expanduser() / "cache"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "clipbench"


def cache_dir(explicit: Optional[str | Path], results: str | Path) -> Path:
    """Where a run keeps decoded images: `--cache-dir` when given, else `default_cache_dir(results)`. A file where
    the folder (or a folder above it) should be is one StorageError line, before anything runs."""
    if not explicit:
        return default_cache_dir(results)
    path = Path(explicit).expanduser()
    blocking = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise StorageError(f"--cache-dir {explicit}: {blocking} is a file, not a folder; give --cache-dir a folder "
                           "(it is created if missing)")
    return path


def default_workers() -> int:
    """`$CLIPBENCH_WORKERS`, else every core this process may use."""
    if os.environ.get("CLIPBENCH_WORKERS", "").isdigit() and int(os.environ["CLIPBENCH_WORKERS"]) > 0:
        return int(os.environ["CLIPBENCH_WORKERS"])
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on directory `path` held while the block runs; other processes wait for it (the
    kernel releases it if we die). The directory stays: removing it could let two holders lock two inodes."""
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


# The sources and preprocessing a forked worker decodes: set before the pool starts, inherited by fork.
_JOB: Tuple[Any, ...] = ()


def _decode_chunk(bounds: Tuple[int, int]) -> List[Failure]:
    sources, preprocess, tmp, shape = _JOB
    out = np.memmap(tmp, dtype=np.uint8, mode="r+", shape=shape)
    failures: List[Failure] = []
    decode_into(out, sources, preprocess, range(*bounds), failures)
    out.flush()
    return failures


class ImageStore:
    """Decoded images under one cache folder. `get` returns a uint8 tensor [N, 3, H, W] backed by the file."""

    def __init__(self, root: Optional[str | Path] = None, workers: Optional[int] = None, progress: bool = False):
        self.root = Path(root).expanduser() if root else default_cache_dir()
        self.workers = int(workers) if workers else default_workers()
        self.progress = progress
        self.decoded = 0  # images this store decoded (the rest were read back)
        self.written: List[Tuple[Path, Path]] = []  # (data, description) of each set this store decoded

    def remove(self, sets: List[Tuple[Path, Path]]) -> None:
        """Delete sets this store decoded (a refused run leaves nothing behind); the description goes first,
        so no runner starts reading a set whose data is going."""
        for data, meta in sets:
            meta.unlink(missing_ok=True)
            data.unlink(missing_ok=True)

    def key(self, sources: ImageSources, preprocess: Preprocess) -> str:
        digest = hashlib.sha256(json.dumps({"store": STORE_VERSION, "preprocess": preprocess.identity()},
                                           sort_keys=True).encode())
        sources.update_signature(digest)
        return digest.hexdigest()[:32]

    def get(self, sources: ImageSources, preprocess: Preprocess, desc: str = "decode") -> torch.Tensor:
        """The images of `sources` prepared by `preprocess`, decoding them (once) if no runner did before.
        Raises the one-line ClipbenchError of `decode` naming every file that cannot be decoded."""
        folder = self.root / "images"
        key = self.key(sources, preprocess)
        data, meta = folder / f"{key}.u8", folder / f"{key}.json"
        if not meta.is_file():
            with _locked(folder / f".{key}.lock"):
                if not meta.is_file():  # nobody finished it while we waited
                    self._decode(sources, preprocess, data, meta, desc)
        shape = tuple(json.loads(meta.read_text())["shape"])
        if not shape[0]:
            return torch.empty(shape, dtype=torch.uint8)
        # copy-on-write: a writable tensor for torch, and the file is never changed
        return torch.from_numpy(np.memmap(data, dtype=np.uint8, mode="c", shape=shape))

    def _decode(self, sources: ImageSources, preprocess: Preprocess, data: Path, meta: Path, desc: str) -> None:
        global _JOB
        shape = (len(sources), 3, *preprocess.size)
        # named as the result store names its temporaries: removed by a later runner once this process is gone
        tmp = data.with_name(f"{temporary_prefix(data)}decoding.tmp")
        try:
            if len(sources):
                np.memmap(tmp, dtype=np.uint8, mode="w+", shape=shape).flush()
            chunks = [(s, min(s + CHUNK, len(sources))) for s in range(0, len(sources), CHUNK)]
            failures: List[Failure] = []
            bar = tqdm(total=len(sources), desc=desc, disable=not self.progress, leave=False, unit="img")
            preprocess.prepare()  # built once here, inherited by the forked workers (each would import open_clip)
            _JOB = (sources, preprocess, tmp, shape)
            if self.workers > 1 and len(chunks) > 1:
                # workers ignore Ctrl-C: the parent stops them, and they print no tracebacks
                with multiprocessing.get_context("fork").Pool(min(self.workers, len(chunks)), initializer=signal.signal,
                                                              initargs=(signal.SIGINT, signal.SIG_IGN)) as pool:
                    for (start, end), found in zip(chunks, pool.imap(_decode_chunk, chunks)):
                        failures += found
                        bar.update(end - start)
            else:
                for start, end in chunks:
                    failures += _decode_chunk((start, end))
                    bar.update(end - start)
            bar.close()
            if failures:
                raise UndecodableImages(failures)
            if len(sources):
                fd = os.open(tmp, os.O_RDONLY)
                try:
                    os.fsync(fd)  # on disk before it is renamed into place
                finally:
                    os.close(fd)
                os.replace(tmp, data)
            # last: the set is complete once this exists
            atomic_write_json(meta, {"shape": list(shape), "preprocess": preprocess.identity(),
                                     "first": sources.describe(0) if len(sources) else None})
            self.decoded += len(sources)
            self.written.append((data, meta))
        finally:
            _JOB = ()
            tmp.unlink(missing_ok=True)
