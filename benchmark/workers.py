"""Worker processes for `clipbench run`'s local executor (`--jobs N`).

The calling process is one of the N: it runs runs itself, and N - 1 spawned workers run the others. Workers
are started before the grid is planned (`RunWorkers`), so their imports of torch, open_clip and Avalanche
(seconds each) overlap the planning instead of following it. On the mini model the processes first compute
the frozen towers' features of the whole grid together, each a share (`clipbench.prefill`). Then every
process takes the next run from one shared order (`longest_first`) as soon as it is free. `default_jobs`
and `run_threads` say how many processes, with how many torch threads each.

A run's numbers do not depend on the process it ran in: the frozen towers' caches are per process and
compute every row alike (tests/test_gridspeed.py compares the records of one process with those of two).
"""

from __future__ import annotations

import collections
import json
import multiprocessing
import os
import pickle
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence

import torch

from . import provenance, runner
from .image_store import cache_dir
from .runner import RunOptions, Summary, count, needs_write
from .spec import RunSpec
from .store import ResultStore


def _worker_main(conn, threads: int) -> None:
    """A worker: import what runs need at once (while the parent plans), then run what the parent sends,
    one run at a time, until it sends None."""
    from clipbench.plan import method_registry
    from clipbench.protocols.catalog import suite_names

    if threads:
        torch.set_num_threads(threads)
    method_registry()  # every method module, and Avalanche with them
    suite_names()  # the catalog's files, read once
    while True:
        try:
            task = conn.recv()
        except (EOFError, KeyboardInterrupt):
            return
        if task is None:
            return
        kind, payload = task
        if kind == "code":  # the commit the parent pinned: a commit made while the grid runs gets no credit
            provenance.code_version = lambda code=dict(payload): dict(code)  # type: ignore[assignment]
            continue
        try:
            if kind == "prefill":
                from clipbench.prefill import fill_share

                conn.send(("ok", fill_share(*payload)))
            else:
                conn.send(("ok", runner.run_task(*payload)))
        except BaseException as exc:  # noqa: BLE001  (the parent re-raises it)
            try:
                pickle.dumps(exc)
            except Exception:  # noqa: BLE001
                exc = RuntimeError(f"{type(exc).__name__}: {exc}")
            conn.send(("error", exc))
            if isinstance(exc, KeyboardInterrupt):
                return


class RunWorkers:
    """`count` spawned worker processes (spawned, not forked: a forked torch can hang on its thread pools),
    each with `threads` torch threads (0: torch's default)."""

    def __init__(self, count: int, threads: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.threads = threads
        self._procs = []
        self._conns = []
        for _ in range(count):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, args=(child, threads), daemon=True)
            proc.start()
            child.close()
            self._procs.append(proc)
            self._conns.append(parent)

    def __len__(self) -> int:
        return len(self._procs)

    def keep(self, count: int) -> None:
        """Stop the workers beyond the first `count` (the plan needs fewer than were started)."""
        for conn, proc in zip(self._conns[count:], self._procs[count:]):
            _stop(conn, proc)
        self._conns, self._procs = self._conns[:count], self._procs[:count]

    def close(self) -> None:
        self.keep(0)

    def run(self, order: Sequence[int], payload: Callable[[int], tuple], run_here: Callable[[int], str],
            code: Dict[str, Any], prefill: Optional[Callable[[int], tuple]] = None) -> Dict[int, str]:
        """Run task `i` for every i in `order`: this process (`run_here(i)`) and each worker (`payload(i)`,
        the arguments of `runner.run_task`) take the next one as they come free. Returns each task's outcome.
        With `prefill`, process k (this one 0, worker w w + 1) first calls `prefill.fill_share(*prefill(k))`.
        An exception in any process (a StorageError, a worker that died) stops every process taking more;
        the runs under way finish; then it is raised here."""
        left: Deque[int] = collections.deque(order)
        lock = threading.Lock()
        outcomes: Dict[int, str] = {}
        errors: List[BaseException] = []

        def take() -> Optional[int]:
            with lock:
                return left.popleft() if left and not errors else None

        def ask(conn, proc, message: tuple, what: str) -> Any:
            conn.send(message)
            while not conn.poll(1.0):
                if not proc.is_alive():
                    from .errors import GridError

                    raise GridError(f"a worker process died (exit code {proc.exitcode}) while it {what}; run the same "
                                    "command again: completed runs are kept")
            status, value = conn.recv()
            if status == "error":
                raise value
            return value

        def feed(w: int, conn, proc) -> None:
            try:
                conn.send(("code", code))
                if prefill is not None:
                    ask(conn, proc, ("prefill", prefill(w + 1)), "computed its share of the frozen features")
                while (i := take()) is not None:
                    outcomes[i] = ask(conn, proc, ("run", payload(i)), f"ran run {i + 1}")
            except BaseException as exc:  # noqa: BLE001
                with lock:
                    errors.append(exc)

        threads = [threading.Thread(target=feed, args=(w, conn, proc), daemon=True)
                   for w, (conn, proc) in enumerate(zip(self._conns, self._procs))]
        for t in threads:
            t.start()
        try:
            if prefill is not None:
                from .prefill import fill_share

                fill_share(*prefill(0), stop=lambda: bool(errors))
            while (i := take()) is not None:
                outcomes[i] = run_here(i)
        except BaseException as exc:
            with lock:
                errors.insert(0, exc)
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return outcomes


def execute(specs: Sequence[RunSpec], store: ResultStore, device: str, progress: bool, argv: List[str],
            quiet: bool = False, options: Optional[RunOptions] = None, jobs: int = 1, threads: int = 0,
            workers: Optional[RunWorkers] = None) -> Summary:
    """`runner.execute` with `jobs` processes: for `jobs` > 1 this process and `jobs` - 1 worker processes
    (`workers`, when started earlier, else started here), each with `threads` torch threads (0: torch's
    default), take the runs longest first; a run's numbers do not depend on the process it ran in."""
    if jobs > 1 and len(specs) > 1:
        return _execute_parallel(specs, store, device, argv, quiet, options or RunOptions(), jobs, threads, workers)
    if threads:
        torch.set_num_threads(threads)
    return runner.execute(specs, store, device, progress, argv, quiet, options)


def default_jobs(device: str, threads: Optional[int], pending: int) -> int:
    """Processes running runs at once for `clipbench run` when `--jobs` is not given: `$CLIPBENCH_JOBS`, else on
    the CPU one per `threads` cores this process may use (threads: 1 when not given), at most one per 3 GB of
    available memory (a mini run peaks near 2 GB) and one per pending run; on a GPU, one (the runs share the
    device); for fewer than 4 runs, one (a worker takes seconds to start: it imports torch, open_clip and
    Avalanche again, and fills its own caches). Not the machine's load: the count sets each process's torch
    threads (`run_threads`), and a few methods' last digits depend on those."""
    if os.environ.get("CLIPBENCH_JOBS", "").isdigit() and int(os.environ["CLIPBENCH_JOBS"]) > 0:
        return int(os.environ["CLIPBENCH_JOBS"])  # the default a user (or the test suite: 1) sets
    if not device.startswith("cpu") or pending < 4:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    jobs = max(1, cores // max(1, threads or 1))
    try:
        with open("/proc/meminfo") as fh:
            available = next(int(line.split()[1]) for line in fh if line.startswith("MemAvailable:")) * 1024
        jobs = min(jobs, max(1, available // (3 * 2**30)))
    except (OSError, StopIteration, ValueError):
        pass
    return max(1, min(jobs, pending))


def run_threads(jobs: int, threads: Optional[int]) -> int:
    """Torch threads of each process when `jobs` run at once: `--threads`, else 1 when several processes share
    the cores (the same count whatever the core count, memory or number of runs, so a grid's records do not
    change with them), else 0: torch's default (every core)."""
    return threads or (1 if jobs > 1 else 0)


# published records, whose costs order the runs of worker processes (`longest_first`)
PUBLISHED = Path(__file__).resolve().parents[1] / "results" / "published"


def _known_seconds(spec: RunSpec, stores: Sequence[ResultStore]) -> Optional[float]:
    """The longest wall time a record of this method, protocol and model took (any seed, any version), or None."""
    seconds = []
    for store in stores:
        folder = store.run_dir(spec).parent
        for path in folder.glob("seed*/run.json") if folder.is_dir() else ():
            try:
                seconds.append(float(json.loads(path.read_text())["costs"]["wall_seconds"]))
            except (OSError, ValueError, KeyError, TypeError):
                continue
    return max(seconds) if seconds else None


def longest_first(specs: Sequence[RunSpec], store: ResultStore) -> List[int]:
    """The order worker processes take runs in: runs with no record to go by first, in plan order, then the others
    by the wall time their records (this results folder's, else the published ones) took, longest first. So
    the runs left when workers run out of work are short ones and the workers finish together (a 20 s run
    taken last by one worker would keep the grid 20 s longer)."""
    stores = [store] + ([ResultStore(PUBLISHED)] if PUBLISHED.is_dir() else [])
    known = [_known_seconds(s, stores) for s in specs]
    return sorted(range(len(specs)), key=lambda i: (known[i] is not None, -(known[i] or 0.0), i))


def _execute_parallel(specs: Sequence[RunSpec], store: ResultStore, device: str, argv: List[str], quiet: bool,
                      options: RunOptions, jobs: int, threads: int, workers: Optional[RunWorkers]) -> Summary:
    """`execute` in this process and `jobs` - 1 workers, which take the runs `longest_first`."""
    code = provenance.code_version()  # pinned here, and sent to the workers
    if options.on_model_loaded is not None:
        raise ValueError("on_model_loaded needs runs in this process (jobs=1)")
    own = workers is None
    workers = workers if workers is not None else RunWorkers(min(jobs, len(specs)) - 1, threads)
    root = str(store.root.resolve())
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    # the frozen towers' features for every image and text of the grid, computed once by all the processes
    # together (`clipbench.prefill`), in a folder of their own under the cache
    shared = cache_dir(options.cache_dir, store.root) / f"prefill-{os.getpid()}-{time.time_ns()}"
    pending = [s.portable_dict() for s in specs if needs_write(s, store)]
    shares = len(workers) + 1
    try:
        label = lambda i: f"[{i + 1}/{len(specs)}]"  # noqa: E731
        outcomes = workers.run(
            longest_first(specs, store),
            lambda i: (specs[i].portable_dict(), root, device, list(argv), quiet,
                       label(i), options),
            lambda i: runner.run_one(specs[i], store, device, False, argv, quiet, label=label(i), options=options), code,
            prefill=(lambda k: (pending, root, options, device, str(shared), k, shares)) if pending else None)
    finally:
        torch.set_num_threads(before)
        shutil.rmtree(shared, ignore_errors=True)
        if own:
            workers.close()
    summary = Summary()
    for i, spec in enumerate(specs):  # counted in plan order
        count(summary, spec, outcomes[i], store)
    return summary


def _stop(conn, proc) -> None:
    try:
        conn.send(None)
    except (OSError, ValueError):
        pass
    proc.join(timeout=5)
    if proc.is_alive():  # still importing, or stuck: it holds nothing worth waiting for
        proc.terminate()
        proc.join(timeout=5)
    conn.close()
