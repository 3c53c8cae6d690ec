"""Dropping a library's log message that a user cannot act on, by its exact text, where it is raised.

Never a level change or a blanket filter: any other message of the same logger still shows.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator


class _DropExactly(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != self.text


@contextlib.contextmanager
def without_log_message(text: str, logger: str = "") -> Iterator[None]:
    """Within the block, drop records of `logger` ("" the root logger) whose message is exactly `text`."""
    target = logging.getLogger(logger)
    drop = _DropExactly(text)
    target.addFilter(drop)
    try:
        yield
    finally:
        target.removeFilter(drop)
