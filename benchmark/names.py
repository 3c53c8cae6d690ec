"""Names that become parts of paths (protocols, suites, methods): checked where they are read, so a name
like `../../x` can never place a record outside the results folder, and `12345` or `null` fail with
one line instead of a traceback."""

from __future__ import annotations

import re
from typing import Any

from .errors import ClipbenchError

# a letter or digit first (so never `.` or `..`), then letters, digits, _ - and .; one path component
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
ALLOWED = "letters, digits, _, - and ., starting with a letter or digit (e.g. my_clipart)"


def is_safe_name(name: Any) -> bool:
    """Whether `name` may be used as one folder or file name under a results folder."""
    return isinstance(name, str) and SAFE_NAME.fullmatch(name) is not None


def check_name(kind: str, name: Any, where: str) -> str:
    """`name` if it is a safe name for a `kind` (protocol, suite, method); else one ClipbenchError line
    starting with `where` (file:line)."""
    if not is_safe_name(name):
        raise ClipbenchError(f"{where}: {kind} name {name!r} cannot be used: a {kind} name is one line of {ALLOWED}")
    return name
