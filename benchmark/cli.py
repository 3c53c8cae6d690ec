"""The `clipbench` command line. `main(argv) -> int` so tests call it in-process.

Exit codes: 0 success, 1 some runs failed or diverged, 2 bad input or a results folder that cannot be
written (one-line message, no traceback), 130 interrupted (Ctrl-C), 141 the reader of stdout left (`| head`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional, Sequence

from .errors import ClipbenchError

BROKEN_PIPE = 141  # the exit status of a Unix tool stopped by SIGPIPE (128 + 13)
DEFAULT_SUITE = "mini"
DEFAULT_RESULTS = "results"


class _Once(argparse.Action):
    """A flag that takes one value: given twice it is refused (argparse would keep the last silently)."""

    def __call__(self, parser, namespace, values, option_string=None):
        given = namespace.__dict__.setdefault("_given_once", {})
        if self.dest in given and option_string:
            raise ClipbenchError(f"{option_string} given twice ({given[self.dest]!r} and {values!r}); give it once")
        given[self.dest] = values
        setattr(namespace, self.dest, values)


class _Parser(argparse.ArgumentParser):
    """Every flag that takes a value is `_Once` unless it says how repeats add up (`extend`, `append`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register("action", None, _Once)
        self.register("action", "store", _Once)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="clipbench", description="Continual learning benchmark for CLIP models.")
    sub = p.add_subparsers(dest="command", required=True)

    ls = sub.add_parser("list", help="list methods, protocols, metrics or suites")
    ls.add_argument("what", nargs="?", choices=["methods", "protocols", "metrics", "suites"])
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    _include(ls)

    run = sub.add_parser("run", help="run methods x protocols of a suite")
    sel = run.add_mutually_exclusive_group(required=True)
    sel.add_argument("--all", action="store_true", help="every method x protocol of the suite")
    sel.add_argument("--method", nargs="+", action="extend", metavar="M", help="method name(s) (repeatable)")
    run.add_argument("--protocol", nargs="+", action="extend", metavar="P",
                     help="protocol name(s) or file(s) (default: the suite's; repeatable)")
    run.add_argument("--suite", default=DEFAULT_SUITE, help=f"suite name or file (default: {DEFAULT_SUITE})")
    _include(run)
    run.add_argument("--seeds", nargs="+", action="extend", type=int, help="seeds (default: the suite's; repeatable)")
    run.add_argument("--config", help="YAML file of settings (same keys as --set)")
    run.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                     help="override a setting, e.g. train.lr=1e-4 (repeatable)")
    run.add_argument("--results", default=DEFAULT_RESULTS, help="results folder (default: results)")
    run.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    run.add_argument("--json", action="store_true", help="with --dry-run: one JSON object per planned run (its id, "
                     "state, recipe and fully resolved spec), one per line")
    run.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    run.add_argument("--quiet", action="store_true", help="no progress bars or per-run lines")
    run.add_argument("--log", metavar="LOGGERS", help="Avalanche's training loggers, comma-separated: csv, tensorboard, "
                     "wandb (where installed); written under each run's folder, in logs/")
    run.add_argument("--threads", type=int, help="torch CPU threads of this process (default: torch's; use 1 per "
                     "worker when several runners share a small machine)")
    run.add_argument("--cache-dir", help="where decoded images are kept, shared by runners (default: "
                     "$CLIPBENCH_CACHE, else <results>/cache)")
    run.add_argument("--workers", type=int, help="processes decoding images (default: every available core)")
    run.add_argument("--jobs", type=int, help="local executor: runs at once, this process and N-1 worker processes, "
                     "each with --threads torch threads, else 1 (default: $CLIPBENCH_JOBS, else on the CPU one per "
                     "core, bounded by memory (3 GB each), from 4 runs to do; on a GPU 1)")
    run.add_argument("--executor", choices=["local", "slurm", "ray"], default="local",
                     help="local (default): this process; slurm: one job array via submitit; ray: one task per run")
    run.add_argument("--address", help="Ray cluster address (default: start a local one)")
    run.add_argument("--wait", action="store_true", help="slurm: wait for the job array to finish")
    run.add_argument("--cpus", type=int, help="CPUs per run (slurm, ray)")
    run.add_argument("--gpus", type=int, help="GPUs per run (slurm, ray)")
    run.add_argument("--mem-gb", type=float, help="memory per run in GB (slurm)")
    run.add_argument("--time-min", type=int, help="time limit per run in minutes (slurm)")
    run.add_argument("--partition", help="Slurm partition")
    run.add_argument("--shard", metavar="I/N", help="run only part I of N disjoint parts of the plan (0-based); "
                     "'auto' reads SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT")

    st = sub.add_parser("status", help="complete, partial, failed, stale and missing runs of a suite")
    st.add_argument("--suite", default=DEFAULT_SUITE, help="suite name or file")
    _include(st)
    st.add_argument("--method", nargs="+", action="extend", metavar="M", help="method name(s) (default: the suite's)")
    st.add_argument("--protocol", nargs="+", action="extend", metavar="P",
                    help="protocol name(s) (default: the suite's)")
    st.add_argument("--seeds", nargs="+", action="extend", type=int, help="seeds (default: the suite's)")
    st.add_argument("--config", help="YAML file of settings, as given to run")
    st.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                    help="settings, as given to run")
    st.add_argument("--results", default=DEFAULT_RESULTS)
    st.add_argument("--json", action="store_true")

    sm = sub.add_parser("smoke", help="every method x protocol of the real suites on small data it writes, in every "
                        "on-disk format they read, with a small random-weight ViT (minutes on a CPU)")
    sm.add_argument("--suite", nargs="+", dest="suites", metavar="S", help="suite name(s) (default: every suite but mini and tiny)")
    sm.add_argument("--method", nargs="+", metavar="M", help="only these methods (default: each suite's)")
    sm.add_argument("--protocol", nargs="+", metavar="P", help="only these protocols (default: each suite's)")
    sm.add_argument("--keep", metavar="DIR", help="write data, weights and records under DIR and keep them "
                    "(default: a temporary folder, removed at the end)")
    sm.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    sm.add_argument("--quiet", action="store_true", help="only the tables, no per-run lines")
    _include(sm)

    pr = sub.add_parser("prepare", help="build a suite's model product (the mini model's aligned projections)")
    pr.add_argument("what", choices=["mini"])
    pr.add_argument("--out", help="where to write the projections (default: the bundled file)")
    pr.add_argument("--epochs", type=int, default=10)
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--quiet", action="store_true")

    bn = sub.add_parser("bench", help="speed and memory as ratios against bare PyTorch, in one JSON object")
    bn.add_argument("--quick", action="store_true", help="small sizes: under a minute on 2 cores")
    bn.add_argument("--grid", action="store_true", help="also time the whole offline grid (run --all on mini, "
                    "a few minutes): its wall time over its runs' training and evaluation time")
    bn.add_argument("--data", metavar="DIR", help="also measure the data path on an image folder DIR/<class>/<image> "
                    "(decode rate against torchvision, warm start, peak memory; the `data` section)")
    bn.add_argument("--data-only", action="store_true", help="with --data: only the `data` section")
    bn.add_argument("--rehearse", action="store_true", help="only the real-scale rehearsal: write a CIFAR-100-sized "
                    "stream (100 classes, 50,000 + 10,000 JPEGs at 224 px; --scale shrinks it) to a temporary folder "
                    "and measure decoding, store size, memory, time to the first step and evaluation throughput")
    bn.add_argument("--scale", type=float, default=1.0, help="with --rehearse: fraction of the image counts (default 1)")
    bn.add_argument("--arch", default="ViT-S-32", help="with --rehearse: the open_clip model (random weights; "
                    "default ViT-S-32)")
    bn.add_argument("--eval-images", type=int, help="with --rehearse: test images to encode (default: all)")
    bn.add_argument("--workers", type=int, help="with --data: decoding processes (default: every available core)")
    bn.add_argument("--repeats", type=int, default=3, help="with --data: decode timings per side (default 3)")

    nw = sub.add_parser("new", help="write a method scaffold, or a protocol file for your own images")
    nw.add_argument("kind", choices=["method", "protocol"])
    nw.add_argument("name", help="snake_case name, e.g. my_method")
    nw.add_argument("--dir", help="method: folder to write into (default: clipbench's methods/ folder)")
    nw.add_argument("--images", help="protocol: an ImageFolder (one sub-folder of images per class)")
    nw.add_argument("--captions", help="protocol: a CSV with the header image,caption (paths relative to it)")
    nw.add_argument("--out", help="protocol: the file to write (default: ./NAME.yaml)")

    da = sub.add_parser("data", help="fetch, lay out and verify the datasets a suite reads")
    da_sub = da.add_subparsers(dest="data_command", required=True)
    for name, text in (("fetch", "download what can be downloaded (checksums checked), say what must be fetched by hand"),
                       ("check", "for every dataset the suite reads: found, and whether it is the reference's split")):
        d = da_sub.add_parser(name, help=text)
        d.add_argument("--suite", default=DEFAULT_SUITE, help="suite name or file")
        d.add_argument("--root", help="the data root (default: the suite's data_root)")
        _include(d)
        if name == "fetch":
            d.add_argument("--only", nargs="+", action="extend", metavar="SOURCE", help="only these sources (e.g. cifar100)")
            d.add_argument("--mirror", metavar="URL", help="fetch every file from URL/<file name> instead of its origin")
            d.add_argument("--allow-unchecked", action="store_true",
                           help="also fetch archives whose publisher gives no checksum (FGVC-Aircraft, Tiny ImageNet)")
            d.add_argument("--workers", type=int, default=4, help="parallel downloads (default 4)")

    lb = sub.add_parser("leaderboard", help="markdown, CSV, JSON, pictures and a static HTML site from the run records")
    lb.add_argument("--results", default=DEFAULT_RESULTS, help="folder holding runs/ (default: results)")
    lb.add_argument("--suite", help="only this suite (a name or a suite file)")
    _include(lb)
    lb.add_argument("--out", help="where to write (default: <results>/leaderboards)")
    lb.add_argument("--check", action="store_true", help="regenerate into a temporary folder; fail on any difference")
    lb.add_argument("--print", dest="print_only", action="store_true", help="print a plain table, write nothing")
    lb.add_argument("--html", action="store_true", help="print only the path of the site's index.html (the site is "
                    "written with the markdown every time: open it in a browser, or copy the folder to any static host)")
    return p


def _include(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--include", action="append", default=[], metavar="DIR",
                        help="a folder of protocol and suite files to add to the catalog (repeatable; also "
                             "CLIPBENCH_INCLUDE, os.pathsep-separated)")


def _catalog_args(args) -> None:
    """`--include` folders join the catalog; a `--suite` or `--protocol` naming a file becomes the name of the
    suite or protocol in it (the file joins the catalog, for this process and the workers it starts)."""
    from clipbench.protocols.catalog import add_include, protocol_ref, suite_ref

    for folder in getattr(args, "include", None) or []:
        add_include(folder)
    if getattr(args, "suite", None):
        args.suite = suite_ref(args.suite)
    if getattr(args, "protocol", None):
        args.protocol = [protocol_ref(p) for p in args.protocol]
    for name in ("method", "protocol", "seeds"):  # given twice (`--method a --method a`): once
        if getattr(args, name, None):
            setattr(args, name, list(dict.fromkeys(getattr(args, name))))


def _cmd_list(args) -> int:
    from clipbench.protocols.catalog import get_protocol, get_suite, protocol_names, suite_names
    from clipbench.protocols.metrics import METRICS

    out = {}
    if args.what in (None, "methods"):
        from clipbench.methods.base import METHODS

        out["methods"] = [
            {"name": n, "version": METHODS.get(n).version, "supports": list(METHODS.get(n).supports),
             "config": METHODS.get(n).config_fields(), "doc": (METHODS.get(n).__doc__ or "").strip().splitlines()[0]}
            for n in METHODS.names()
        ]
    if args.what in (None, "protocols"):
        out["protocols"] = [{"name": n, "version": get_protocol(n).version, "kind": get_protocol(n).kind,
                             "description": get_protocol(n).description, "metrics": list(get_protocol(n).metrics)}
                            for n in protocol_names()]
    if args.what in (None, "metrics"):
        out["metrics"] = [{"name": n, "direction": METRICS.get(n).direction, "version": METRICS.get(n).version,
                           "headline": METRICS.get(n).headline, "family": METRICS.get(n).family, "kinds": list(METRICS.get(n).kinds),
                           "formula": METRICS.get(n).doc} for n in METRICS.names()]
    if args.what in (None, "suites"):
        out["suites"] = [{"name": n, "description": get_suite(n).description, "protocols": get_suite(n).protocols}
                         for n in suite_names()]
    if args.json:
        print(json.dumps(out if args.what is None else out[args.what], indent=1))
        return 0
    for kind, items in out.items():
        print(f"{kind}:")
        for item in items:
            detail = item.get("doc") or item.get("description") or (item.get("formula") or "").partition("\n")[0]
            print(f"  {item['name']:<16} {detail}")
    return 0


def _cmd_run(args, argv: Sequence[str]) -> int:
    workers = _early_workers(args)
    try:
        return _run(args, argv, workers)
    finally:
        if workers is not None:
            workers.close()


def _early_workers(args):
    """Worker processes for a grid, started before it is planned so their imports overlap the planning (see
    `clipbench.workers`): when runs stay on this machine, several at once are wanted (`--jobs N`, or `run
    --all` where `default_jobs` gives more than one), and the command is not a dry run. None otherwise."""
    if args.executor != "local" or args.dry_run or args.json or (args.jobs is not None and args.jobs < 2):
        return None
    if args.jobs is None and args.method:  # a few named runs: the plan decides (`default_jobs`)
        return None
    from .runner import default_device
    from .workers import RunWorkers, default_jobs, run_threads

    jobs = args.jobs or default_jobs(args.device or default_device(), args.threads, 10**6)
    if jobs < 2:
        return None
    return RunWorkers(jobs - 1, run_threads(jobs, args.threads))


def _run(args, argv: Sequence[str], workers) -> int:
    from clipbench.protocols.catalog import get_suite

    from .image_store import cache_dir
    from .plan import plan, shard
    from .runner import RunOptions, default_device, needs_write
    from .store import ResultStore, remove_stale_temporaries

    if args.log:
        from .avalanche_api import parse_log  # Avalanche's loggers are reached only through it
    log = parse_log(args.log) if args.log else ()
    specs = plan(args.suite, args.method, args.protocol, args.seeds, args.config, args.set, strict_weights=not args.dry_run)
    if not args.method:  # said once, so nobody wonders where a method went
        suite = get_suite(args.suite)
        for name, why in suite.left_out_of_all.items():
            print(f"clipbench: run --all leaves {name} out of suite {suite.name}'s grid ({why}); "
                  f"run it by name: --method {name}", file=sys.stderr)
    if args.shard:
        specs = shard(specs, *_parse_shard(args.shard))
    store = ResultStore(args.results)
    cache_dir(args.cache_dir, store.root)  # a file given as --cache-dir stops here, dry run included
    if args.json and not args.dry_run:
        raise ClipbenchError("run --json needs --dry-run (it prints the plan as JSON, one run per line)")
    if args.dry_run:
        return _print_plan_json(specs, store) if args.json else _print_plan(args.suite, specs, store)
    # every refusal before the first write (removing stale temporaries is one)
    for flag, value in (("--workers", args.workers), ("--threads", args.threads), ("--jobs", args.jobs)):
        if value is not None and value < 1:
            raise ClipbenchError(f"{flag} must be 1 or more, got {value}")
    device = args.device or default_device()
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ClipbenchError("--device cuda: no CUDA device is visible to torch; use --device cpu")
    if any(needs_write(s, store) for s in specs):  # a finished grid needs no write: then a read-only folder is fine
        store.check_writable()
        cache = cache_dir(args.cache_dir, store.root)
        for folder in [store.root] + ([cache] if store.root.resolve() not in cache.resolve().parents else []):
            removed, freed = remove_stale_temporaries(folder)
            if removed:
                print(f"clipbench: removed {removed} temporary file(s) ({freed / 2**20:.1f} MB) left under {folder} "
                      "by interrupted writes", file=sys.stderr)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.executor == "local":
        from .workers import default_jobs, execute, run_threads

        options = RunOptions(cache_dir=args.cache_dir, workers=args.workers, log=log)
        pending = sum(needs_write(s, store) for s in specs)
        if workers is not None:  # started before planning: as many as the plan needs, with their threads
            jobs = max(1, min(len(workers) + 1, pending if args.jobs else (pending >= 4) * pending))
            workers.keep(jobs - 1)
            threads = workers.threads if jobs > 1 else 0
        else:
            jobs = args.jobs or default_jobs(device, args.threads, pending)
            threads = run_threads(jobs, args.threads)
        summary = execute(specs, store, device, progress=not args.quiet and sys.stderr.isatty() and jobs == 1,
                          argv=list(argv), quiet=args.quiet, options=options, jobs=jobs, threads=threads,
                          workers=workers if jobs > 1 else None)
    else:
        # runs on other machines read these from the environment the job inherits
        if args.cache_dir:
            os.environ["CLIPBENCH_CACHE"] = os.path.abspath(os.path.expanduser(args.cache_dir))
        if args.workers:
            os.environ["CLIPBENCH_WORKERS"] = str(args.workers)
        from .executors import Resources, run_ray, submit_slurm

        suite_resources = get_suite(args.suite).resources
        res = Resources(**{**suite_resources, **{k: v for k, v in dict(
            cpus=args.cpus, gpus=args.gpus, mem_gb=args.mem_gb, time_min=args.time_min, partition=args.partition).items()
            if v is not None}})
        if args.executor == "slurm":
            summary = submit_slurm(specs, store, res, device, args.wait, log)
        else:
            summary = run_ray(specs, store, res, device, args.address, log)
    if not args.quiet:
        print(f"done: {summary.ran} ran, {summary.skipped} already complete, {summary.claimed} held by other runners, "
              f"{summary.na} n/a, {summary.failed} failed, {summary.diverged} diverged "
              f"(records under {store.root / 'runs'})", file=sys.stderr)
        for problem in summary.problems:  # every failure again at the end, where it cannot scroll away
            print(f"  {problem}", file=sys.stderr)  # (--quiet: the run's own FAILED line said it, once)
    return 1 if summary.failed or summary.diverged else 0


def _parse_shard(text: str):
    if text == "auto":
        try:
            return int(os.environ["SLURM_ARRAY_TASK_ID"]), int(os.environ["SLURM_ARRAY_TASK_COUNT"])
        except KeyError:
            raise ClipbenchError("--shard auto needs SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT in the environment") from None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ClipbenchError(f"--shard expects I/N (e.g. 0/4) or auto, got '{text}'") from None
    return i, n


def _print_plan(suite: str, specs, store) -> int:
    """The runs that would execute, then each protocol's assets: found, or where and how to get them."""
    from clipbench.protocols.catalog import get_protocol

    from .plan import not_applicable, run_state

    print(f"plan: {len(specs)} run(s) of suite '{suite}' into {store.root}")
    for spec in specs:
        reason = not_applicable(spec)
        state = f"n/a: {reason}" if reason is not None else run_state(store, spec)
        print(f"  {spec.protocol:<18} {spec.method:<12} {spec.model['arch']:<20} seed {spec.seed}  "
              f"{spec.id}  [{state}]")
    seen, missing = set(), 0
    weights = {(s.model["arch"], s.model["pretrained"]): s.model["weights"] for s in specs}
    for (arch, pretrained), fingerprint in weights.items():
        found = not fingerprint.startswith("unavailable")
        missing += not found
        print(f"model {arch} / {pretrained}: " + ("found" if found else f"MISSING -> {fingerprint[len('unavailable: '):]}"))
    for spec in specs:
        if spec.protocol in seen:
            continue
        seen.add(spec.protocol)
        rows = get_protocol(spec.protocol).assets(spec.data_root, spec.protocol_params)
        if rows:
            print(f"assets of {spec.protocol} (data_root: {spec.data_root or 'unset'}):")
        for row in rows:
            missing += not row["found"]
            state = "found  " if row["found"] else "MISSING"
            how = "" if row["found"] else f"  -> {row['how']}"
            print(f"  {state} {row['asset']:<26} {row['path']}{how}")
    if missing:
        print(f"{missing} asset(s) missing: the runs that need them will fail (each alone, naming the path; the others run).")
    return 0


def _print_plan_json(specs, store) -> int:
    """One JSON object per planned run, one per line: id, state, recipe and the fully resolved spec (with
    data_root), so what a cell trains with can be read before it runs."""
    from .plan import run_state

    for spec in specs:
        print(json.dumps({"id": spec.id, "state": run_state(store, spec), "recipe": spec.recipe,
                          "spec": spec.portable_dict()}, sort_keys=True, default=str))
    return 0


def _cmd_status(args) -> int:
    from .plan import not_applicable, plan, run_state
    from .store import ResultStore

    store = ResultStore(args.results)
    from .executors import slurm_states

    queued = slurm_states(store)
    specs = plan(args.suite, args.method, args.protocol, args.seeds, args.config, args.set, strict_weights=False)
    rows = [(spec, run_state(store, spec)) for spec in specs]
    rows = [(s, "queued" if st in ("missing", "partial") and queued.get(s.id) == "PENDING" else st) for s, st in rows]
    if args.json:
        print(json.dumps([{"id": s.id, "method": s.method, "protocol": s.protocol, "seed": s.seed, "state": st,
                           **({"reason": not_applicable(s)} if st == "n/a" else {})} for s, st in rows], indent=1))
        return 0
    counts = {k: sum(1 for _, st in rows if st == k)
              for k in ("complete", "n/a", "running", "queued", "partial", "corrupt", "diverged", "failed", "stale", "missing")}
    for spec, st in rows:
        extra = ""
        if st == "n/a":
            extra = f" ({not_applicable(spec)})"
        elif st == "partial":
            prog = store.progress(spec)
            extra = (f" ({prog['completed_experiences']}/{prog['total_experiences']} experiences)" if prog else
                     " (its progress file cannot be read; `run` resumes from its checkpoint)")
        elif st == "stale":
            extra = f" ({_stale_reason(spec, store.stale_records(spec)[0]['spec'])}; run again to refresh)"
        elif st == "diverged":
            extra = f" ({store.read_record(spec)['error']['message']})"
        elif st == "corrupt":
            extra = f" ({store.record_path(spec)}: {store.record_problem(spec)}; `run` redoes it)"
        print(f"  {st:<9} {spec.protocol:<18} {spec.method:<12} seed {spec.seed}  {spec.id}{extra}")
    print(f"suite '{args.suite}': " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    return 0


def _stale_reason(spec, old: dict) -> str:
    """What differs between a run spec and the spec of its stale record: which datasets, which code."""
    def changed(new: dict, before: dict) -> List[str]:
        return sorted(k for k in set(new) | set(before) if new.get(k) != before.get(k))

    parts = []
    data = changed(spec.data, old.get("data") or {})
    if data:
        parts.append(f"made on other data ({', '.join(data)})")
    before = old.get("code") or {}
    code = changed(spec.code, before)
    if code:
        parts.append("made by other code (" + ", ".join(f"{k} {before.get(k)} -> {spec.code.get(k)}" for k in code) + ")")
    return "a record exists, " + " and ".join(parts or ["made on other data"])


def _cmd_prepare(args) -> int:
    from pathlib import Path

    from .prepare import DEFAULT_OUT, prepare_mini

    out = Path(args.out) if args.out else DEFAULT_OUT
    meta = prepare_mini(out, epochs=args.epochs, seed=args.seed, progress=not args.quiet and sys.stderr.isatty())
    print(json.dumps({"written": str(out), **meta}, indent=1))
    return 0


def _cmd_bench(args) -> int:
    """Print bench's JSON; `--data`: an image folder for the data-path figures (`bench_data`, the `data` key)."""
    from .bench import run as bench_run
    from .bench_data import run as data_run

    if args.data_only and not args.data:
        raise ClipbenchError("--data-only needs --data DIR")
    if args.rehearse:
        import torch

        from .image_store import default_workers
        from .rehearse import run as rehearse_run

        device = "cuda" if torch.cuda.is_available() else "cpu"
        print(json.dumps({"rehearsal": rehearse_run(args.scale, args.workers or default_workers(), args.arch,
                                                    args.eval_images, device=device)}, indent=1))
        return 0
    if args.workers is not None and args.workers < 1:
        raise ClipbenchError(f"--workers must be 1 or more, got {args.workers}")
    out = {} if args.data_only else bench_run(args.quick, args.grid)
    if args.data:
        out["data"] = data_run(args.data, args.workers, args.repeats)
    print(json.dumps(out, indent=1))
    return 0


def _cmd_new(args) -> int:
    from pathlib import Path

    if args.kind == "protocol":
        from clipbench.protocols.new_protocol import new_protocol

        if not args.images:
            raise ClipbenchError("new protocol needs --images DIR (a folder with one sub-folder of images per class)")
        path = new_protocol(args.name, args.images, args.captions, args.out)
        print(f"wrote {path}; try it: clipbench run --suite tiny --method zeroshot finetune --protocol {path} --dry-run")
        return 0

    import clipbench.methods

    from .scaffold import new_method

    folder = Path(args.dir) if args.dir else Path(clipbench.methods.__file__).parent
    path = new_method(args.name, folder)
    print(f"wrote {path}; try it: clipbench run --method {args.name} --suite tiny")
    return 0


def _cmd_data(args) -> int:
    from clipbench.protocols.catalog import get_suite

    root = args.root if args.root is not None else get_suite(args.suite).data_root
    if args.data_command == "check":
        from .data_check import check

        return check(args.suite, root)
    from .data_fetch import fetch

    if args.workers < 1:
        raise ClipbenchError(f"--workers must be 1 or more, got {args.workers}")
    if args.mirror and not args.mirror.startswith(("http://", "https://", "file://")):
        raise ClipbenchError(f"--mirror expects an http(s):// or file:// URL, got '{args.mirror}'")
    return fetch(args.suite, root, args.only or (), args.mirror, args.allow_unchecked, args.workers,
                 progress=sys.stderr.isatty())


def _cmd_leaderboard(args) -> int:
    from pathlib import Path

    from . import leaderboard

    results = Path(args.results)
    if not results.is_dir():  # a misspelt folder would get an empty leaderboard
        raise ClipbenchError(f"--results {results}: no such folder; give the folder `clipbench run --results` wrote")
    if args.suite:  # an unknown suite would empty leaderboard.json
        from clipbench.protocols.catalog import suite_names

        from .errors import unknown_name_error

        known = {e.suite for e in leaderboard.load(results).entries} | set(suite_names())
        if args.suite not in known:
            raise unknown_name_error("suite", args.suite, known)
    for path, why in leaderboard.load(results, args.suite).corrupt:  # named, never silently dropped
        print(f"clipbench: warning: corrupt record {results / path}: {why}; left out of the leaderboard "
              "(rerun it with clipbench run, or remove it)", file=sys.stderr)
    if args.print_only:
        print(leaderboard.markdown(results, args.suite), end="")
        return 0
    out = Path(args.out) if args.out else results / "leaderboards"
    if args.check:
        problems = leaderboard.check(results, out, args.suite)
        for p in problems:
            print(f"leaderboard check: {p}", file=sys.stderr)
        if problems:
            print(f"clipbench: error: {len(problems)} leaderboard file(s) out of date under {out}; regenerate with "
                  f"clipbench leaderboard --results {results} --out {out}", file=sys.stderr)
            return 1
        print(f"leaderboard check: {out} is up to date")
        return 0
    files = leaderboard.write(results, out, args.suite)
    if args.html:
        print(out / "index.html")
        return 0
    print(f"wrote {len(files)} file(s) under {out}; the site: {out / 'index.html'}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point; returns the exit code instead of exiting."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse already printed usage
        return int(exc.code or 0)
    except ClipbenchError as err:  # a flag given twice
        print(f"clipbench: error: {err}", file=sys.stderr)
        return 2
    try:
        _catalog_args(args)
        if args.command == "list":
            return _cmd_list(args)
        if args.command == "run":
            return _cmd_run(args, ["clipbench", *argv])
        if args.command == "status":
            return _cmd_status(args)
        if args.command == "bench":
            return _cmd_bench(args)
        if args.command == "smoke":
            from .smoke import run_smoke

            from clipbench.protocols.catalog import suite_ref

            suites = [suite_ref(s) for s in args.suites] if args.suites else None
            return run_smoke(suites, args.keep, args.threads, args.quiet, args.method, args.protocol)
        if args.command == "new":
            return _cmd_new(args)
        if args.command == "prepare":
            return _cmd_prepare(args)
        if args.command == "leaderboard":
            return _cmd_leaderboard(args)
        if args.command == "data":
            return _cmd_data(args)
    except ClipbenchError as err:
        print(f"clipbench: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader left (`| head -1`): stop quietly, as Unix tools do
        return BROKEN_PIPE
    except OSError as err:  # a path that cannot be used, outside the store's own writes (which say so themselves)
        from .errors import storage_error

        print(f"clipbench: error: {storage_error(err.filename or '(unnamed file)', err, 'use')}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: finished experiences are checkpointed, claims released on the way out
        print("clipbench: interrupted; finished experiences are kept: run the same command again to resume",
              file=sys.stderr)
        return 130
    return 0


def console_entry() -> None:
    """The console script."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    code = main()
    if code == BROKEN_PIPE:  # Python's own flush of stdout at exit would fail again: send what is left nowhere
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(code)


if __name__ == "__main__":
    console_entry()
