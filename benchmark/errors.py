"""User-facing errors: the CLI prints their one-line message and exits with code 2."""

from __future__ import annotations

import difflib
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
