"""File checksums, memoised: weights and bundled files are hashed once per (path, mtime, size)."""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=64)
def _file_sha256(path: str, mtime: float, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, memoised on (path, mtime, size) so big checkpoints are hashed once."""
    st = os.stat(path)
    return _file_sha256(str(path), st.st_mtime, st.st_size)
