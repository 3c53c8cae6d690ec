"""Downloading one file safely: resumed where it stopped, checked before anyone uses it.

A download goes to `<file>.part` beside its destination and becomes `<file>` only once its size and md5 are
right; an interrupted transfer (a dropped connection, Ctrl-C, a killed process) leaves the `.part`, and the
next attempt asks the server for the rest (an HTTP Range request) instead of starting again. A file whose
checksum is wrong is removed at once: nothing unverified is ever unpacked.
"""

from __future__ import annotations

import hashlib
import http.client
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

from .errors import ClipbenchError

CHUNK = 1 << 20
USER_AGENT = "clipbench-data-fetch"


class ChecksumMismatch(ClipbenchError):
    """A downloaded file whose md5 is not the published one (a bad mirror, a changed file, a broken transfer)."""


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _total(response: http.client.HTTPResponse, offset: int) -> Optional[int]:
    """The whole file's size from Content-Range (a resumed transfer) or Content-Length."""
    content_range = response.headers.get("Content-Range")
    if content_range and "/" in content_range:
        tail = content_range.rsplit("/", 1)[1].strip()
        return int(tail) if tail.isdigit() else None
    length = response.headers.get("Content-Length")
    return offset + int(length) if length and length.isdigit() else None


def fetch_file(url: str, dest: Path, md5: Optional[str], progress: bool = False, label: str = "",
               retries: int = 5, timeout: float = 60.0, position: Optional[int] = None,
               cancel: Optional[threading.Event] = None) -> Path:
    """Download `url` to `dest`, resuming `dest.part`, then check its md5 (when given) and rename it.

    A `dest` already there is trusted only if its md5 matches (or no md5 is published). Retries a dropped
    connection up to `retries` times, each resuming. Raises ChecksumMismatch (the partial file removed) or a
    ClipbenchError naming the url and the cause. `cancel` set (Ctrl-C in the thread that started the
    downloads): stops after the current block with KeyboardInterrupt, the `.part` kept.
    """
    from tqdm import tqdm

    dest = Path(dest)
    if dest.is_file() and (md5 is None or md5_of(dest) == md5):
        return dest
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(desc=label or dest.name, unit="B", unit_scale=True, unit_divisor=1024, disable=not progress,
               leave=False, position=position)
    attempt = 0
    try:
        while True:
            offset = part.stat().st_size if part.exists() else 0
            request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT,
                                                           **({"Range": f"bytes={offset}-"} if offset else {})})
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    if offset and response.status != 206:  # the server ignores Range: start again
                        offset = 0
                    total = _total(response, offset)
                    if total is not None and offset >= total:
                        break
                    bar.reset(total=total)
                    bar.update(offset)
                    with open(part, "ab" if offset else "wb") as fh:
                        for block in iter(lambda: response.read(CHUNK), b""):
                            if cancel is not None and cancel.is_set():
                                raise KeyboardInterrupt
                            fh.write(block)
                            bar.update(len(block))
                size = part.stat().st_size
                if total is None or size >= total:
                    break
                raise ConnectionError(f"the server sent {size} of {total} bytes")
            except urllib.error.HTTPError as err:
                if err.code == 416 and offset:  # asked past the end: the part is whole (or longer: check says)
                    break
                raise ClipbenchError(f"cannot download {url}: HTTP {err.code} {err.reason}") from None
            except (urllib.error.URLError, ConnectionError, http.client.HTTPException, socket.timeout, TimeoutError) as err:
                attempt += 1
                if attempt > retries:
                    why = getattr(err, "reason", err)
                    raise ClipbenchError(f"cannot download {url}: {why} ({attempt} tries; run the same command again "
                                         f"to resume from {part.stat().st_size if part.exists() else 0} bytes)") from None
                time.sleep(min(2 ** attempt * 0.1, 5.0))
    finally:
        bar.close()
    if md5 is not None:
        got = md5_of(part)
        if got != md5:
            part.unlink()
            raise ChecksumMismatch(f"checksum mismatch for {dest.name} from {url}: expected md5 {md5}, got {got}; "
                                   "the download was removed (a bad mirror, or the file changed upstream)")
    part.replace(dest)
    return dest
