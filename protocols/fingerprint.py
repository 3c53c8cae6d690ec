"""Fingerprints of the files a dataset reads: what makes the data part of every run's identity.

A fingerprint is the sha256 of one line per file, `<relative path> <size> <mtime in whole seconds>`,
sorted, for every file under the paths a dataset spec reads (a file itself, or every file below a
folder). Adding, removing, resizing or touching one image changes it; moving the whole folder
elsewhere does not (paths are relative), nor does copying it with its times kept (`cp -p`, `rsync -a`).
Whole seconds, because tar, dpkg and network filesystems keep no finer times.

A folder is walked through symbolic links (a class folder linked in from elsewhere is read like any
other; a link back to a folder above is not followed again). Where the format reads only some of a
folder's files (an image folder reads images), only those count (`suffixes`): a `notes.txt` or
`.DS_Store` beside the images changes nothing. File names that are not valid UTF-8 are kept as their bytes.

Stat-ing every file is cheap next to decoding it, and each path is read once per plan (`memo`),
however many runs of the grid use it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Collection, Dict, FrozenSet, Iterable, List, Optional, Tuple


def _lines(root: Path, suffixes: Optional[Collection[str]] = None) -> List[str]:
    if root.is_file():
        st = root.stat()
        return [f"{root.name} {st.st_size} {int(st.st_mtime)}"]
    if not root.is_dir():
        return [f"{root.name} missing"]
    out: List[str] = []
    _walk(root, ".", frozenset(), suffixes, out)
    return out


def _walk(folder: Path, rel: str, above: FrozenSet[Tuple[int, int]], suffixes: Optional[Collection[str]],
          out: List[str]) -> None:
    """`out` gets a line per file of `folder` (sorted), then those of its sub-folders in name order, links
    followed (os.walk's order, which earlier fingerprints used)."""
    st = os.stat(folder)
    here = above | {(st.st_dev, st.st_ino)}
    entries = sorted(os.scandir(folder), key=lambda e: e.name)
    folders = []
    for entry in entries:
        if entry.is_dir():  # follows links
            folders.append(entry)
            continue
        if suffixes is not None and (os.path.splitext(entry.name)[1].lower() not in suffixes
                                     or entry.name.startswith(".")):  # what the reader reads: no hidden files
            continue
        name = os.path.normpath(os.path.join(rel, entry.name))
        try:
            info = os.stat(entry.path)
        except FileNotFoundError:  # a broken link
            out.append(f"{name} missing")
            continue
        out.append(f"{name} {info.st_size} {int(info.st_mtime)}")
    for entry in folders:
        info = os.stat(entry.path)
        if (info.st_dev, info.st_ino) not in here:  # a link to a folder above this one: a loop
            _walk(Path(entry.path), os.path.join(rel, entry.name), here, suffixes, out)


def path_fingerprint(path: str | Path, memo: Optional[Dict[str, str]] = None,
                     suffixes: Optional[Collection[str]] = None) -> str:
    """The fingerprint of one file or folder (memoised in `memo`, keyed by its absolute path and `suffixes`:
    the file name endings counted inside folders, None for every file)."""
    key = str(Path(path).expanduser().absolute())
    memo_key = key if suffixes is None else f"{key}|{','.join(sorted(suffixes))}"
    if memo is not None and memo_key in memo:
        return memo[memo_key]
    digest = hashlib.sha256("\n".join(_lines(Path(key), suffixes)).encode("utf-8", "surrogateescape")).hexdigest()
    if memo is not None:
        memo[memo_key] = digest
    return digest


def paths_fingerprint(paths: Iterable[str | Path], memo: Optional[Dict[str, str]] = None,
                      suffixes: Optional[Collection[str]] = None) -> str:
    """One fingerprint for several paths (each by its name and contents; order and repeats do not matter)."""
    parts = sorted({f"{Path(p).name}:{path_fingerprint(p, memo, suffixes)}" for p in paths})
    return hashlib.sha256("\n".join(parts).encode("utf-8", "surrogateescape")).hexdigest()[:16]
