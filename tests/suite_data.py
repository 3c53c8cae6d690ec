"""A small `data_root` holding every dataset the real suites read, each in its real on-disk format: the package's
smoke-data writers (`clipbench.protocols.smoke_data`, what `clipbench smoke` writes), for the protocols of the
given suites (default: `paper`, `mtil` and `cil_cifar100`)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from clipbench.protocols.catalog import get_protocol, get_suite
from clipbench.protocols.smoke_data import write_smoke_data


def write_suite_data(root: Path, seed: int = 0, suites: Sequence[str] = ("paper", "mtil", "cil_cifar100")) -> Path:
    """Every dataset of the suites' protocols under `root` (their protocols' paths); returns `root`."""
    write_smoke_data([get_protocol(p).params for s in suites for p in get_suite(s).protocols], root, seed)
    return root
