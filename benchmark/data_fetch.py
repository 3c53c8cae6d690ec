"""`clipbench data fetch`: download, verify and lay out every dataset a suite reads.

Per source (`clipbench.protocols.sources`): its files are downloaded in parallel into
`<data_root>/.clipbench-fetch/<source>/` (resumed there after an interruption, `clipbench.download`), each
checked against its published md5 before anything is unpacked, unpacked there, and only then moved into
the folders the protocol reads (a rename on the same disk: a dataset is either wholly in place or not
there). A checksum mismatch removes what that source downloaded and stops with one line (exit 2); Ctrl-C
leaves only the partial downloads, in the staging folder, for the next run to continue. What cannot be
downloaded (a licence, a sign-in) is printed with exactly what to fetch and where to put it.
"""

from __future__ import annotations

import gzip
import shutil
import tarfile
import threading
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from clipbench.protocols.formats import get_format, resolve
from clipbench.protocols.sources import Download, Source

from .data_check import Dataset, suite_datasets
from .download import ChecksumMismatch, fetch_file
from .errors import ClipbenchError

STAGING = ".clipbench-fetch"  # under the data root; clipbench's own, removed once a source is in place


def _url(d: Download, mirror: Optional[str]) -> str:
    return f"{mirror.rstrip('/')}/{d.file}" if mirror else d.url


def _unpack(archive: Path, d: Download, into: Path) -> None:
    """Unpack one verified download into `into`."""
    if d.unpack == "tar":
        with tarfile.open(archive) as tar:
            tar.extractall(into, filter="data")  # no absolute paths, links out of `into` or device files
    elif d.unpack == "zip":
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():  # refuse paths that climb out of `into`
                if member.startswith("/") or ".." in Path(member).parts:
                    raise ClipbenchError(f"{archive.name}: unsafe path in the archive: {member}")
            zf.extractall(into)
    elif d.unpack == "gz":
        with gzip.open(archive, "rb") as src, open(into / archive.name[:-3], "wb") as dst:
            shutil.copyfileobj(src, dst)
    else:
        shutil.copy2(archive, into / archive.name)


def _nested(source: Source, into: Path) -> None:
    """Archives inside the unpacked download, unpacked in turn (Caltech-101's)."""
    for rel in source.nested:
        inner = into / rel
        if not inner.is_file():
            raise ClipbenchError(f"{source.title}: the download holds no {rel}")
        with tarfile.open(inner) as tar:
            tar.extractall(into, filter="data")


def _place(source: Source, unpacked: Path, dataset: Dataset, data_root: Optional[str]) -> None:
    """Move what `dataset`'s format reads from `unpacked` to where its spec says (moves already made stay)."""
    root = resolve(data_root, dataset.spec[dataset.anchor()])
    for src, dst in source.places[dataset.spec["adapter"]]:
        target = root if dst == "." else root / dst
        if target.exists():
            continue
        found = unpacked / src
        if not found.exists():
            raise ClipbenchError(f"{source.title}: the download holds no {src} (expected by clipbench's table of sources)")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(found), str(target))  # a rename: the staging folder is on the same disk


def _download_all(jobs: Dict[str, Source], staging: Path, mirror: Optional[str], workers: int, progress: bool) -> List[str]:
    """Every file of every source, `workers` at a time; returns the sources whose checksum failed (their
    files removed). Ctrl-C stops the transfers, keeping the partial files for the next run."""
    tasks = [(s, d) for s in jobs.values() for d in s.downloads]
    failed: Dict[str, str] = {}
    lock = threading.Lock()

    cancel = threading.Event()

    def one(i: int, source: Source, d: Download) -> None:
        try:
            fetch_file(_url(d, mirror), staging / source.name / d.file, d.md5, progress,
                       label=f"{source.name}: {d.file}", position=i, cancel=cancel)
        except ChecksumMismatch as err:
            with lock:
                failed.setdefault(source.name, str(err))

    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        futures = [pool.submit(one, i, s, d) for i, (s, d) in enumerate(tasks)]
        for f in futures:
            f.result()  # a ClipbenchError (network) or KeyboardInterrupt propagates
    except BaseException:  # Ctrl-C here, or a failed transfer: the others stop after their current block
        cancel.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    for name in failed:
        shutil.rmtree(staging / name, ignore_errors=True)
    return [failed[n] for n in failed]


def fetch(suite: str, data_root: Optional[str], only: Sequence[str] = (), mirror: Optional[str] = None,
          allow_unchecked: bool = False, workers: int = 4, progress: bool = False, out=print) -> int:
    """Fetch what the suite reads under `data_root`. Returns 0 when every dataset is then in place, 1 when some
    need a manual step (printed); a checksum mismatch or bad input raises ClipbenchError (exit 2)."""
    if data_root is None:
        raise ClipbenchError(f"suite '{suite}' names no data_root: pass --root DIR")
    datasets = suite_datasets(suite)
    known = {d.source.name for d in datasets if d.source}
    for name in only:
        if name not in known:
            raise ClipbenchError(f"--only {name}: suite '{suite}' reads no dataset of that source; its sources: "
                                 f"{', '.join(sorted(known)) or '(none)'}")
    chosen = [d for d in datasets if not only or (d.source and d.source.name in only)]
    todo: Dict[str, Source] = {}
    waiting: Dict[str, List[Dataset]] = {}
    manual = 0
    for ds in chosen:
        what = ds.source.title if ds.source else ds.label
        if ds.found(data_root):
            out(f"  found      {what:<28} {ds.label}")
            continue
        where = ", ".join(str(p) for p in ds.targets(data_root))
        if ds.source is None or ds.source.manual or not ds.placed(data_root):
            manual += 1
            how = ds.source.manual if ds.source and ds.source.manual else ds.spec.get("how", "see the protocol file")
            out(f"  by hand    {what:<28} {ds.label}\n             put it at {where}: {how}")
            continue
        if not allow_unchecked and any(d.md5 is None for d in ds.source.downloads):
            manual += 1
            out(f"  unchecked  {what:<28} {ds.label}\n             its publisher gives no checksum; rerun with "
                f"--allow-unchecked to fetch it anyway ({', '.join(d.url for d in ds.source.downloads)})")
            continue
        todo[ds.source.name] = ds.source
        waiting.setdefault(ds.source.name, []).append(ds)
    if todo:
        root = Path(data_root).expanduser()
        created = not root.exists()
        staging = root / STAGING
        try:
            failures = _download_all(todo, staging, mirror, workers, progress)
            if failures:
                raise ClipbenchError(failures[0] + (f" (and {len(failures) - 1} more source(s))" if len(failures) > 1 else ""))
            for name, source in todo.items():
                unpacked = staging / name / "unpacked"
                for ds in waiting[name]:  # unpacked afresh for each place it goes (the moves take it away)
                    shutil.rmtree(unpacked, ignore_errors=True)  # also what a run stopped while unpacking left
                    unpacked.mkdir(parents=True)
                    for d in source.downloads:
                        _unpack(staging / name / d.file, d, unpacked)
                    _nested(source, unpacked)
                    _place(source, unpacked, ds, data_root)
                    out(f"  fetched    {source.title:<28} {ds.label} -> {', '.join(str(p) for p in ds.placed(data_root))}")
                    still = [p for p in ds.targets(data_root) if not p.exists()]
                    if still:  # files no archive holds (a split list): by hand
                        manual += 1
                        out(f"  by hand    {source.title:<28} {ds.label}\n             put "
                            f"{', '.join(map(str, still))} there: {ds.spec.get('how', get_format(ds.spec).how)}")
                shutil.rmtree(staging / name)
        finally:
            _tidy(staging, root if created else None)
    if manual:
        out(f"{manual} dataset(s) need a step by hand (above); `clipbench data check --suite {suite} --root {data_root}` "
            "says what is still missing")
        return 1
    return 0


def _tidy(staging: Path, created_root: Optional[Path]) -> None:
    """Remove the staging folder and a data root this call created, when nothing is left in them."""
    for folder in (staging, created_root):
        if folder is None:
            continue
        try:
            folder.rmdir()  # only when empty: partial downloads stay for the next run
        except OSError:
            pass

