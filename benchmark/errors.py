"""User-facing errors: the CLI prints their one-line message and exits with code 2."""

from __future__ import annotations

import difflib
from typing import Iterable


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
