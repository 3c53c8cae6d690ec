"""`clipbench smoke`: every method x protocol of the real suites, end to end, on small data in every real on-disk
format, before anyone spends GPU hours.

In a temporary folder (or `--keep DIR`): the data (`clipbench.protocols.smoke_data`: a few random-noise images
per class, in each format the suites' protocol files name, reference sets included), a small open_clip ViT
with random weights saved to a file (`clipbench-smoke`: 64 px, patches of 16, 2 blocks of width 64 in each
tower, CLIP's 77-token text context; loaded as any weights file is), and each protocol cut to at most 2
experiences of 2 classes (`smoke_overrides`). Every run trains at most 2 steps per experience and per
method-internal loop (`limit.steps=2`, over each method's own recipe). The grid runs through the same planner
and runner as `clipbench run` (records, n/a declarations, failures isolated per run), then a table says, per
method x protocol: complete, n/a (why) or failed (the error). Exit 0 only when nothing failed.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .errors import ClipbenchError

SMOKE_ARCH = "clipbench-smoke"
SMOKE_STEPS = 2
SKIPPED_SUITES = ("mini", "tiny")  # offline suites with their own data: `run --all` is their smoke


def real_suites() -> List[str]:
    """The catalog's suites over real on-disk data (every one but mini and tiny)."""
    from clipbench.protocols.catalog import suite_names

    return [s for s in suite_names() if s not in SKIPPED_SUITES]


def save_weights(arch: str, folder: Path) -> Path:
    """Random weights of `arch` (seed 0) in a file, as a user passes real ones."""
    import torch

    from .models import _open_clip
    from .quiet import without_log_message

    path = folder / f"{arch}-random.pt"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        with without_log_message(f"No pretrained weights loaded for model '{arch}'. Model initialized randomly."):
            model = _open_clip().create_model(arch, pretrained=None)
        torch.save(model.state_dict(), path)
    return path


def prepare(suites: Sequence[str], work: Path, arch: str = SMOKE_ARCH) -> Tuple[List[str], Dict[str, List[str]]]:
    """Write the data of every protocol of `suites` and the weights under `work`; returns the `--set` items every
    smoke run takes and, per protocol, those that cut it (`protocols.<name>.<param>=...`)."""
    import json

    from clipbench.protocols.catalog import get_protocol, get_suite
    from clipbench.protocols.smoke_data import smoke_overrides, write_smoke_data

    protocols = {p: get_protocol(p) for s in suites for p in get_suite(s).protocols}
    data_root = work / "data"
    write_smoke_data([p.params for p in protocols.values()], data_root)
    weights = save_weights(arch, work / "weights")
    sets = [f"data_root={data_root}", f"model.arch={arch}", f"model.pretrained={weights}",
            f"limit.steps={SMOKE_STEPS}", "eval.batch_size=64"]
    cuts = {name: [f"protocols.{name}.{k}={json.dumps(v)}" for k, v in smoke_overrides(p.builder, p.params).items()]
            for name, p in protocols.items()}
    return sets, cuts


def outcome(store, spec) -> Tuple[str, str]:
    """(state, detail) of one smoke run from its record: complete, n/a (why), failed or diverged (the error)."""
    record = store.read_record(spec) or {}
    status = record.get("status", "missing")
    if status == "n/a":
        return "n/a", str(record.get("reason", ""))
    if status in ("failed", "diverged"):
        error = record.get("error") or {}
        return status, f"{error.get('type', '?')}: {error.get('message', '?')}"
    return status, ""


def cell(state: str, detail: str, width: int = 70) -> str:
    text = state if not detail else f"{state}: {detail}"
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 1] + "…"


def table(results: Dict[Tuple[str, str], Tuple[str, str]], protocols: Sequence[str], methods: Sequence[str]) -> str:
    from tabulate import tabulate

    rows = [[m] + [cell(*results[(m, p)]) if (m, p) in results else "-" for p in protocols] for m in methods]
    return tabulate(rows, headers=["method"] + list(protocols), tablefmt="github", disable_numparse=True)


def run_smoke(suites: Optional[Sequence[str]], keep: Optional[str] = None, threads: Optional[int] = None,
              quiet: bool = False, methods: Optional[Sequence[str]] = None,
              protocols: Optional[Sequence[str]] = None, arch: str = SMOKE_ARCH) -> int:
    """Run the smoke grid of `suites` (default: every real suite); print the table; 0 when nothing failed."""
    from clipbench.protocols.catalog import get_suite

    from .plan import plan
    from .runner import RunOptions, execute
    from .store import ResultStore

    suites = list(suites or real_suites())
    for s in suites:
        get_suite(s)  # an unknown name fails before anything is written
        if s in SKIPPED_SUITES:
            raise ClipbenchError(f"smoke runs the suites over real data; '{s}' makes its own: use "
                                 f"clipbench run --all --suite {s}")
    if threads:
        import torch

        torch.set_num_threads(threads)
    holder = None
    if keep:
        work = Path(keep).expanduser()
        work.mkdir(parents=True, exist_ok=True)
    else:
        holder = tempfile.TemporaryDirectory(prefix="clipbench-smoke-")
        work = Path(holder.name)
    try:
        start = time.perf_counter()
        sets, cuts = prepare(suites, work, arch)
        store = ResultStore(work / "results")
        failed = 0
        for suite in suites:
            t = time.perf_counter()
            chosen = [p for p in get_suite(suite).protocols if not protocols or p in protocols]
            if not chosen:
                continue
            specs = plan(suite, methods, chosen, None, None, sets + [c for p in chosen for c in cuts[p]])
            execute(specs, store, "cpu", False, ["clipbench", "smoke"], quiet=quiet,
                    options=RunOptions(cache_dir=str(work / "cache"), workers=1))
            results = {(s.method, s.protocol): outcome(store, s) for s in specs}
            failed += sum(1 for state, _ in results.values() if state not in ("complete", "n/a"))
            names = list(dict.fromkeys(s.protocol for s in specs))
            print(f"\nsmoke: suite {suite} ({len(specs)} runs, {time.perf_counter() - t:.0f} s)")
            print(table(results, names, list(dict.fromkeys(s.method for s in specs))))
        print(f"\nsmoke: {len(suites)} suite(s) in {time.perf_counter() - start:.0f} s; "
              + ("nothing failed" if not failed else f"{failed} run(s) failed")
              + (f"; data, records and weights kept under {work}" if keep else ""))
        return 1 if failed else 0
    finally:
        if holder is not None:
            holder.cleanup()
