"""Fingerprints of the files a dataset reads: what makes the data part of every run's identity.

A fingerprint is the sha256 of one line per file, `<relative path> <size> <mtime in whole seconds>`,
sorted, for every file under the paths a dataset spec reads (a file itself, or every file below a
folder). Adding, removing, resizing or touching one image changes it; moving the whole folder
elsewhere does not (paths are relative), nor does copying it with its times kept (`cp -p`, `rsync -a`).
Whole seconds, because tar, dpkg and network filesystems keep no finer times.

Stat-ing every file is cheap next to decoding it, and each path is read once per plan (`memo`),
however many runs of the grid use it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Dict, Iterable, List, Optional


def _lines(root: Path) -> List[str]:
    if root.is_file():
        st = root.stat()
        return [f"{root.name} {st.st_size} {int(st.st_mtime)}"]
    if not root.is_dir():
        return [f"{root.name} missing"]
    out = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        rel = os.path.relpath(folder, root)
        for name in sorted(files):
            st = os.stat(os.path.join(folder, name))
            out.append(f"{os.path.normpath(os.path.join(rel, name))} {st.st_size} {int(st.st_mtime)}")
    return out


def path_fingerprint(path: str | Path, memo: Optional[Dict[str, str]] = None) -> str:
    """The fingerprint of one file or folder (memoised in `memo`, keyed by its absolute path)."""
    key = str(Path(path).expanduser().absolute())
    if memo is not None and key in memo:
        return memo[key]
    digest = hashlib.sha256("\n".join(_lines(Path(key))).encode()).hexdigest()
    if memo is not None:
        memo[key] = digest
    return digest


def paths_fingerprint(paths: Iterable[str | Path], memo: Optional[Dict[str, str]] = None) -> str:
    """One fingerprint for several paths (each by its name and contents; order and repeats do not matter)."""
    parts = sorted({f"{Path(p).name}:{path_fingerprint(p, memo)}" for p in paths})
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
