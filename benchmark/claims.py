"""Claims: one runner at a time per run, across processes and machines sharing a results folder.

A claim is `<run dir>/claim.json`, created with O_CREAT | O_EXCL (atomic on local and NFS v3+
filesystems). It names the host and pid and is refreshed after every experience. A claim is stale,
and may be taken over, when its process is gone (same host) or when it has not been refreshed for
`ttl` seconds (any host; `CLIPBENCH_CLAIM_TTL`, default 2 hours: longer than one experience).
"""

from __future__ import annotations

import json
import os
import re
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


def host_tag(host: Optional[str] = None) -> str:
    """This host's name (or `host`) as it may appear in a file name."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", host if host is not None else socket.gethostname())


def owner_gone(host: Optional[str], pid: Optional[int], age: float, ttl: float = DEFAULT_TTL) -> bool:
    """The liveness rule, for claims and for anything else that names its writer (host or host tag, and
    pid): gone when its process is gone (same host) or when it has been silent for `ttl` seconds."""
    here = host is not None and host in (socket.gethostname(), host_tag())
    return (here and pid is not None and not _alive(pid)) or age > ttl


def is_stale(path: Path, ttl: float = DEFAULT_TTL) -> bool:
    """True when the claim's owner is gone or silent for `ttl` seconds (or the file is unreadable)."""
    info = read(path)
    try:
        age = time.time() - path.stat().st_mtime
    except OSError:
        return True
    if info is None:
        return age > 5  # a claim being written right now is given a moment
    return owner_gone(info.get("host"), int(info.get("pid", -1)), age, ttl)


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
