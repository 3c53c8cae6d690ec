"""Pinned list files: a split or subset list the authors committed, checked against the git blob id it has in
their repository before it is read (a list that differs gives other data than the protocol says).

A git blob id is the sha1 of `b"blob <size>\\0" + content`; `git ls-tree` prints it for every committed file, so a
list can be pinned even where only its id is known. A spec key holding the id that is empty or null skips the
check (small test data, a list of your own).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Optional

from clipbench.errors import ClipbenchError


def git_blob_id(path: Path) -> str:
    """The id git gives the file's content as a blob (what `git hash-object FILE` prints)."""
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def check_blob(path: Path, expected: Optional[Any], source: str) -> None:
    """Stop with one line when `path` is not the committed file `expected` names (no check without an id)."""
    if not expected:
        return
    found = git_blob_id(path)
    if found != str(expected):
        raise ClipbenchError(f"{path}: git blob {found[:12]}, not {str(expected)[:12]} ({source}); download that "
                             "file again, or set the spec's blob key to null to read a list of your own")
