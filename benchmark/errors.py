"""User-facing errors: the CLI prints their one-line message and exits with code 2."""

from __future__ import annotations

import difflib
import errno
import os
from pathlib import Path
from typing import Iterable, Optional


class ClipbenchError(Exception):
    """Bad input from the user (an unknown name, a malformed file, a missing asset).

    The message names the offending thing and how to fix it; no traceback is shown.
    """


def unknown_name_error(kind: str, name: str, known: Iterable[str]) -> ClipbenchError:
    """An error for an unknown registry name, listing the known ones and a did-you-mean."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return ClipbenchError(f"unknown {kind} '{name}'.{hint} Known {kind}s: {', '.join(known) or '(none)'}.")


class BadValue(ClipbenchError):
    """A protocol parameter that does not fit the data, found when its streams are built (a class id the
    dataset does not have, experiences that do not cover its classes). `key`: the parameter's path inside the
    protocol's `params:` (`"class_order"`, `"target.names"`), so the plan can name its file and line."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"{key}: {message}")


class MissingData(ClipbenchError):
    """Files a protocol reads are not there (a dry run lists them; a run stops naming the path)."""


class Diverged(Exception):
    """A non-finite loss in training or non-finite features at evaluation: the run stops with
    `status: diverged` (a run's outcome, not bad input). `experience` and `step` count from 1;
    experience 0 is the model before training, step None a value found at evaluation."""

    def __init__(self, what: str, experience: int, step: Optional[int] = None):
        self.what, self.experience, self.step = what, experience, step
        if step is not None:
            where = f"at experience {experience}, step {step}"
        else:  # found at evaluation
            where = f"after experience {experience}" if experience else "before training"
        super().__init__(f"{what} {where}")


class GridError(ClipbenchError):
    """Bad input that every run of the grid would meet (the model's weights cannot be loaded): it stops the
    command with one line (exit 2) instead of failing run after run."""


class StorageError(ClipbenchError):
    """A file of the results folder (or a cache) that cannot be written: a read-only folder, a full disk,
    a file where a folder should be. The message names the path and the cause."""


# errno -> the cause as a user reads it
_CAUSES = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
           errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
           errno.EPERM: "permission denied", errno.ENOTDIR: "a file stands where a folder is needed",
           errno.EEXIST: "a file stands where a folder is needed"}


def _free_space(path: Path) -> str:
    for folder in (path, *path.parents):
        try:
            st = os.statvfs(folder)
        except OSError:
            continue
        return f"; {st.f_bavail * st.f_frsize / 2**20:.1f} MB free there"
    return ""


def is_write_failure(err: BaseException) -> bool:
    """An OSError, or torch's zip writer failing on one (its RuntimeError keeps the OSError as context)."""
    while err is not None:
        if isinstance(err, OSError) or "unexpected pos" in str(err) or "failed writing" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def storage_error(path: Path, err: BaseException, action: str = "write") -> StorageError:
    """One line for a write to `path` that failed with `err`: an OSError, or torch's RuntimeError from
    its zip writer, which hides the OSError (often `unexpected pos` when the disk is full) in its context."""
    os_err = err
    while os_err is not None and not isinstance(os_err, OSError):
        os_err = os_err.__cause__ or os_err.__context__
    if isinstance(os_err, OSError):
        cause = _CAUSES.get(os_err.errno, os_err.strerror or str(os_err))
    elif "unexpected pos" in str(err) or "failed writing" in str(err):
        cause = f"the disk is most likely full (torch: {str(err).strip().splitlines()[0]})"
    else:
        cause = str(err)
    hint = _free_space(Path(path).parent) if "full" in cause or "quota" in cause else ""
    return StorageError(f"cannot {action} {path}: {cause}{hint}. Completed runs and finished experiences are kept; "
                        "fix it and rerun the same command to resume")
