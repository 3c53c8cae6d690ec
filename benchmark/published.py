"""Reproduction check of the published results: rerun a sample of published runs with the code checked
out now (HEAD) into a temporary results folder and compare every metric with the published record.

What is compared, per sampled run (method x protocol x seed, every published record of it): the rerun's
metrics (computed from its raw results) against the metrics the current code computes from the published
record's raw results, which are the numbers the leaderboard shows; every metric id of either side, with
exact equality (a CPU run with the same seed is bit-exact). The settings the published run was made with
(its spec's train, eval, model, method and protocol settings) must equal the rerun's; a key only one side
has (a setting added later) is not compared. `make check-published` runs it; it exits 1 naming each
difference.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from clipbench.protocols.metrics import compute_metrics

from .errors import ClipbenchError
from .store import ResultStore, read_record_file

# (method, protocol, seed): one multi-session run with a teacher, one one-session run, one replay run
SAMPLE: Tuple[Tuple[str, str, int], ...] = (("zscl", "mini_fashion_mst", 0), ("finetune", "mini_fashion_ost", 1),
                                            ("er", "mini_fashion_mst", 2))
SETTINGS = ("train", "eval", "precision", "method_config", "protocol_params")


def published_records(published: Path, method: str, protocol: str, seed: int) -> List[Tuple[Path, Dict[str, Any]]]:
    """The complete published records of one method x protocol x seed (any model)."""
    out = []
    for path in sorted((published / "runs" / protocol / method).glob(f"*/seed{seed}-*/run.json")):
        record, why = read_record_file(path)
        if why:
            raise ClipbenchError(f"{path}: {why}")
        if record.get("status") == "complete":
            out.append((path, record))
    return out


def made_on(published: Path, sample: Sequence[Tuple[str, str, int]]) -> set:
    """The CPU kernel families (`provenance.cpu.torch_capability`) the sampled published runs were made on;
    "unrecorded" for records older than that field."""
    return {((record.get("provenance") or {}).get("cpu") or {}).get("torch_capability") or "unrecorded"
            for m, p, s in sample for _, record in published_records(published, m, p, s)}


def _differing(published: Any, rerun: Any, prefix: str) -> List[str]:
    """Dotted keys whose values differ where both sides have the key."""
    if isinstance(published, dict) and isinstance(rerun, dict):
        return [d for k in sorted(set(published) & set(rerun)) for d in _differing(published[k], rerun[k], f"{prefix}.{k}")]
    return [] if published == rerun else [f"{prefix} {published!r} vs {rerun!r}"]


def compare(published: Dict[str, Any], rerun: Dict[str, Any]) -> List[str]:
    """Every difference between a published record and its rerun: settings, then each metric."""
    problems = [f"setting {d}" for key in SETTINGS
                for d in _differing(published["spec"].get(key), rerun["spec"].get(key), key)]
    if published["spec"]["model"].get("weights") != rerun["spec"]["model"].get("weights"):
        problems.append("model weights fingerprint differs")
    if rerun.get("status") != "complete":
        return problems + [f"rerun is {rerun.get('status')}: {(rerun.get('error') or {}).get('message')}"]
    want = compute_metrics(published["raw"])["values"]
    got = rerun["metrics"]
    for key in sorted(set(want) | set(got)):
        if key not in got or key not in want:
            problems.append(f"metric {key} only in the {'published record' if key in want else 'rerun'}")
        elif want[key] != got[key]:
            problems.append(f"metric {key}: published {want[key]!r}, rerun {got[key]!r}")
    return problems


def check(published: Path, sample: Sequence[Tuple[str, str, int]], work: Path, device: str = "cpu",
          quiet: bool = True) -> List[str]:
    """Rerun each sampled published run into `work` and return every difference, each naming its record."""
    import torch

    from .plan import plan
    from .runner import execute

    problems: List[str] = []
    store = ResultStore(work)
    for method, protocol, seed in sample:
        found = published_records(published, method, protocol, seed)
        if not found:
            problems.append(f"{method} x {protocol} seed {seed}: no complete published record under {published}")
        for path, record in found:
            spec = record["spec"]
            [rerun_spec] = plan(spec["suite"], [method], [protocol], [seed])  # the suite's settings, as published
            before = torch.get_num_threads()
            # the record's torch threads: a few methods' last digits depend on them (a grid's workers run one)
            torch.set_num_threads(int(record["provenance"].get("torch_threads") or before))
            try:
                execute([rerun_spec], store, device, False, ["clipbench", "check-published"], quiet=quiet)
            finally:
                torch.set_num_threads(before)
            rerun = store.read_record(rerun_spec) or {"status": "missing", "spec": rerun_spec.to_dict()}
            problems += [f"{path}: {p}" for p in compare(record, rerun)]
    return problems


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m clipbench.published`: 0 when every sampled record reproduces, 1 otherwise (2: bad input)."""
    p = argparse.ArgumentParser(prog="python -m clipbench.published", description=__doc__.splitlines()[0])
    p.add_argument("--published", default="results/published", help="the published results folder")
    p.add_argument("--sample", nargs="+", metavar="METHOD:PROTOCOL:SEED", help="runs to rerun (default: a fixed three)")
    args = p.parse_args(argv)
    try:
        sample = [(m, pr, int(s)) for m, pr, s in (x.split(":") for x in args.sample)] if args.sample else SAMPLE
    except ValueError:
        print("clipbench: error: --sample expects METHOD:PROTOCOL:SEED", file=sys.stderr)
        return 2
    from .provenance import code_version, cpu_kernels

    code, here = code_version(), cpu_kernels()
    print(f"check-published: rerunning {len(sample)} published run(s) with commit {code['git_commit']}"
          + (" plus uncommitted changes (not a clean checkout)" if code["git_dirty"] else "")
          + f" on {here['model']} ({here['torch_capability']} kernels)", file=sys.stderr)
    try:
        with tempfile.TemporaryDirectory(prefix="clipbench-published-") as work:
            problems = check(Path(args.published), sample, Path(work), quiet=False)
    except ClipbenchError as err:
        print(f"clipbench: error: {err}", file=sys.stderr)
        return 2
    for problem in problems:
        print(problem)
    others = made_on(Path(args.published), sample) - {here["torch_capability"]} if problems else set()
    if others:  # another kernel family rounds differently: say so beside the differences
        print(f"note: the published runs were made on {', '.join(sorted(others))} kernels, this machine has "
              f"{here['torch_capability']}; a CPU run is bit-exact only on the same kernel family")
    print(f"check-published: {len(sample)} sampled run(s) of {args.published}: "
          + ("every metric reproduces exactly" if not problems else f"{len(problems)} difference(s)"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
