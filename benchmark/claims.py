"""Claims: one runner at a time per run, across processes and machines sharing a results folder.

A claim is `<run dir>/claim.json`, created with O_CREAT | O_EXCL (atomic on local and NFS v3+
filesystems). It names the host and pid and is refreshed after every experience. A claim is stale,
and may be taken over, when its process is gone (same host) or when it has not been refreshed for
`ttl` seconds (any host; `CLIPBENCH_CLAIM_TTL`, default 2 hours: longer than one experience).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Dict, Optional

from .errors import storage_error

DEFAULT_TTL = float(os.environ.get("CLIPBENCH_CLAIM_TTL", 7200))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read(path: Path) -> Optional[Dict[str, Any]]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def is_stale(path: Path, ttl: float = DEFAULT_TTL) -> bool:
    """True when the claim's owner is gone or silent for `ttl` seconds (or the file is unreadable)."""
    info = read(path)
    try:
        age = time.time() - path.stat().st_mtime
    except OSError:
        return True
    if info is None:
        return age > 5  # a claim being written right now is given a moment
    if info.get("host") == socket.gethostname() and not _alive(int(info.get("pid", -1))):
        return True
    return age > ttl


def acquire(path: Path, ttl: float = DEFAULT_TTL) -> bool:
    """Take the claim at `path`; False when a live runner holds it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise storage_error(path, err) from None
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if not is_stale(path, ttl):
                return False
            # take over a dead runner's claim: move it aside atomically, so only one taker wins
            aside = path.with_name(f"{path.name}.stale-{os.getpid()}")
            try:
                os.replace(path, aside)
                aside.unlink()
            except FileNotFoundError:
                pass
            continue
        except OSError as err:  # a read-only folder, a full disk: one line, not a traceback
            raise storage_error(path, err) from None
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}, fh)
        except OSError as err:
            path.unlink(missing_ok=True)
            raise storage_error(path, err) from None
        return True
    return False


def refresh(path: Path) -> None:
    """Mark the claim alive (after each experience)."""
    try:
        os.utime(path)
    except OSError:
        pass


def release(path: Path) -> None:
    info = read(path)
    if info and info.get("pid") == os.getpid() and info.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)


def held_by_other(path: Path, ttl: float = DEFAULT_TTL) -> bool:
    """A live claim of another runner (for `clipbench status`)."""
    return path.is_file() and not is_stale(path, ttl)
