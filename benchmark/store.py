"""The result store: files are the database.

Layout: <root>/runs/<protocol>/<method>/<model>/seed<k>-<id>/ holding `run.json` (the record,
written once the run ends), `progress.json` and `checkpoint.pt` (after each experience, removed
when the run completes). Every write goes to a temporary file that is renamed into place, so a
killed process never leaves a half-written file.
"""

from __future__ import annotations

import errno
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch

from . import claims
from .errors import StorageError, is_write_failure, storage_error
from .models import model_slug
from .names import check_name
from .spec import RunSpec

SCHEMA_VERSION = 1


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def temporary_prefix(path: Path) -> str:
    """The name start of a temporary file written for `path`: `.<name>.<host tag>@<pid>.`; with it, a runner
    starting on the folder removes the file once its writer is gone (`remove_stale_temporaries`)."""
    return f".{path.name}.{claims.host_tag()}@{os.getpid()}."


def _atomic_write(path: Path, write) -> None:
    """Write through `write(fh)` to a temporary file beside `path`, then rename it into place. A failed
    write (read-only folder, full disk) is one StorageError naming `path` and the cause."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temporary_prefix(path), suffix=".tmp")
    except OSError as err:
        raise storage_error(path, err) from None
    try:
        # mkstemp creates 0600 and the rename keeps it: give the file the mode open() would (0644 under
        # umask 022), so a team sharing a results folder can read each other's records
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, Exception) and is_write_failure(err):
            raise storage_error(path, err) from None
        raise


# the whole name of a temporary file clipbench writes (`temporary_prefix`): .<name>.<host tag>@<pid>.<random>.tmp;
# before host and pid were in the name (clipbench before 2026-12-01), a run's own files: .run.json.<random>.tmp
_TEMPORARY = re.compile(r"\..+\.([A-Za-z0-9_-]+)@(\d+)\.[a-z0-9_]+\.tmp")
_OLD_TEMPORARY = re.compile(r"\.(run\.json|progress\.json|checkpoint\.pt)\.[a-z0-9_]+\.tmp")


def remove_stale_temporaries(root: Path, ttl: float = claims.DEFAULT_TTL) -> Tuple[int, int]:
    """Remove the temporary files under `root` left by writes that were killed, keeping those of writers
    still alive (the claims' rule: a process gone on this host, or silent for `ttl` seconds; a name without
    its writer, from older versions, by age alone). Only names clipbench writes are touched: a user's
    `.draft.tmp` stays. Returns (files removed, bytes freed)."""
    removed = freed = 0
    for path in Path(root).glob("**/.*.tmp"):
        match = _TEMPORARY.fullmatch(path.name)
        if match is None and _OLD_TEMPORARY.fullmatch(path.name) is None:
            continue  # not a name clipbench writes
        try:
            st = path.stat()
            if claims.owner_gone(match and match.group(1), int(match.group(2)) if match else None,
                                 time.time() - st.st_mtime, ttl):
                path.unlink()
                removed, freed = removed + 1, freed + st.st_size
        except OSError:  # removed by another runner meanwhile, or not ours to remove
            continue
    return removed, freed


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (temp file in the same folder, fsync, rename)."""
    _atomic_write(Path(path), lambda fh: fh.write((json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()))


def atomic_torch_save(path: Path, obj: Any) -> None:
    """torch.save atomically."""
    _atomic_write(Path(path), lambda fh: torch.save(obj, fh))


def _warn(message: str) -> None:
    print(f"clipbench: warning: {message}", file=sys.stderr, flush=True)


SPEC_KEYS = ("suite", "protocol", "method", "seed")  # what a complete record's spec holds besides model.arch


def _incomplete_parts(record: Dict[str, Any]) -> Optional[str]:
    """What a record that says `complete` lacks of what every table needs (its spec and raw accuracy matrix)."""
    spec = record.get("spec")
    if not isinstance(spec, dict):
        return "no spec"
    for key in SPEC_KEYS:
        if key not in spec:
            return f"no spec.{key}"
    if not isinstance(spec.get("model"), dict) or "arch" not in spec["model"]:
        return "no spec.model.arch"
    raw = record.get("raw")
    if not isinstance(raw, dict) or not raw.get("acc_matrix"):
        return "no raw accuracy matrix"
    return None


def read_record_file(path: Path) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
    """(record, None) for a readable run record, (None, why) for one that cannot be read: not JSON, not an
    object, or `complete` without the spec and raw results a table needs (so `status`, `run` and the
    leaderboard all call it corrupt)."""
    try:
        record = json.loads(Path(path).read_text())
    except OSError as err:
        return None, f"cannot read it ({err.strerror or err})"
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return None, f"not valid JSON ({err})"
    if not isinstance(record, dict):
        return None, "not a JSON object"
    missing = _incomplete_parts(record) if record.get("status") == "complete" else None
    return (None, f"complete but {missing}") if missing else (record, None)


class ResultStore:
    """Run records, progress and checkpoints under one results folder."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def check_writable(self) -> None:
        """Stop before anything runs when the results folder cannot be written: a file given as the folder,
        a folder or file system that is read-only (one StorageError line naming it and the cause)."""
        if self.root.exists() and not self.root.is_dir():
            raise StorageError(f"results folder {self.root} is a file, not a folder: give --results a folder "
                               "(it is created if missing)")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise storage_error(self.root, err) from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            read_only = os.statvfs(self.root).f_flag & os.ST_RDONLY
            raise storage_error(self.root, OSError(errno.EROFS if read_only else errno.EACCES, "not writable"))

    def run_dir(self, spec: RunSpec) -> Path:
        for kind in ("protocol", "method"):  # checked where read; a spec from elsewhere never leaves the root
            check_name(kind, getattr(spec, kind), "run spec")
        model = model_slug(spec.model["arch"], spec.model.get("pretrained"))
        return self.root / "runs" / spec.protocol / spec.method / model / f"seed{spec.seed}-{spec.id}"

    def claim_path(self, spec: RunSpec) -> Path:
        return self.run_dir(spec) / "claim.json"

    def record_path(self, spec: RunSpec) -> Path:
        return self.run_dir(spec) / "run.json"

    def read_record(self, spec: RunSpec) -> Optional[Dict[str, Any]]:
        """The run's record; None when there is none or it cannot be read (see `record_problem`)."""
        path = self.record_path(spec)
        return read_record_file(path)[0] if path.is_file() else None

    def record_problem(self, spec: RunSpec) -> Optional[str]:
        """Why the run's record file cannot be read (corrupt), or None (readable or absent)."""
        path = self.record_path(spec)
        return read_record_file(path)[1] if path.is_file() else None

    def stale_records(self, spec: RunSpec) -> List[Dict[str, Any]]:
        """Complete records of this run made on other data or by other data/evaluation code: the same
        spec but for its `data` fingerprint and `code` versions (their ids differ, so they sit beside it)."""
        mine = {k: v for k, v in spec.to_dict().items() if k not in ("data", "code")}
        out = []
        for path in sorted(self.run_dir(spec).parent.glob(f"seed{spec.seed}-*/run.json")):
            if path.parent == self.run_dir(spec):
                continue
            record = read_record_file(path)[0]  # a corrupt one is never a stale twin
            if record is None:
                continue
            theirs = {k: v for k, v in record.get("spec", {}).items() if k not in ("data", "code")}
            if record.get("status") == "complete" and theirs == mine:
                out.append(record)
        return out

    def is_complete(self, spec: RunSpec) -> bool:
        record = self.read_record(spec)
        return bool(record) and record.get("status") == "complete"

    def write_record(self, spec: RunSpec, record: Dict[str, Any]) -> Path:
        path = self.record_path(spec)
        atomic_write_json(path, record)
        return path

    def save_progress(self, spec: RunSpec, checkpoint: Dict[str, Any], completed: int, total: int) -> None:
        """Checkpoint first, then progress: progress never claims more than the checkpoint holds."""
        atomic_torch_save(self.run_dir(spec) / "checkpoint.pt", checkpoint)
        atomic_write_json(self.run_dir(spec) / "progress.json",
                          {"id": spec.id, "completed_experiences": completed, "total_experiences": total})
        claims.refresh(self.claim_path(spec))

    def load_checkpoint(self, spec: RunSpec) -> Optional[Dict[str, Any]]:
        """The run's checkpoint, or None. One that cannot be read (truncated, not torch's format, not a
        clipbench checkpoint) is the only saved state of the run: it is named in one line on stderr and
        removed with the progress file, and the run restarts from its first experience instead of
        failing at every rerun. An unreadable progress file alone is named too: resuming reads only
        the checkpoint, and the progress file is written again after the next experience."""
        path, progress = self.run_dir(spec) / "checkpoint.pt", self.run_dir(spec) / "progress.json"
        state, why = None, None
        if path.is_file():
            try:
                state = torch.load(path, map_location="cpu", weights_only=False)
                if not isinstance(state, dict) or not {"spec_id", "completed", "raw", "model", "method"} <= set(state):
                    raise ValueError("not a clipbench checkpoint")
            except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError, ... on a damaged file
                # torch's first sentence says what is wrong; the rest is advice about saving
                why = str(err).strip().splitlines()[0].split(". ")[0] if str(err).strip() else type(err).__name__
        if progress.is_file() and self.progress(spec) is None and why is None:
            _warn(f"progress file {progress} cannot be read; the run "
                  + ("resumes from its checkpoint" if state is not None else "starts from its first experience")
                  + " and writes it again after the next experience")
        if why is not None:
            _warn(f"checkpoint {path} cannot be read ({why}); removed: the run restarts from its first experience")
            self.clear_progress(spec)
            return None
        if state is None:
            return None
        return state if state.get("spec_id") == spec.id else None

    def progress(self, spec: RunSpec) -> Optional[Dict[str, Any]]:
        """The run's progress file, or None when there is none or it cannot be read."""
        path = self.run_dir(spec) / "progress.json"
        try:
            doc = json.loads(path.read_text()) if path.is_file() else None
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) and {"completed_experiences", "total_experiences"} <= set(doc) else None

    def clear_progress(self, spec: RunSpec) -> None:
        for name in ("checkpoint.pt", "progress.json"):
            (self.run_dir(spec) / name).unlink(missing_ok=True)

    def scan_records(self) -> Tuple[List[Tuple[Path, Dict[str, Any]]], List[Tuple[Path, str]]]:
        """Every run record under the root: ([(path, record)] readable, [(path, why)] corrupt)."""
        readable, corrupt = [], []
        for path in sorted((self.root / "runs").glob("**/run.json")):
            record, problem = read_record_file(path)
            if problem:
                corrupt.append((path, problem))
            else:
                readable.append((path, record))
        return readable, corrupt

    def iter_records(self) -> Iterator[Tuple[Path, Dict[str, Any]]]:
        """Every readable run record under the root (`scan_records` also names the corrupt ones)."""
        yield from self.scan_records()[0]
