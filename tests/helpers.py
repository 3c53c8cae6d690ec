"""Shared helpers for tests: small runs of the tiny suite."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

from clipbench.cli import main

# Smaller than the suite's own sizes, to keep each test to a few seconds.
SMALL = ["protocols.tiny_shapes.train_per_class=8", "protocols.tiny_shapes.test_per_class=4",
         "protocols.tiny_shapes.heldout_per_class=4", "protocols.tiny_shapes.retrieval_images=8"]


def run_cli(*args: str) -> int:
    return main([str(a) for a in args])


def records(results: Path) -> Dict[str, dict]:
    """run.json files under `results`, keyed by their path relative to it."""
    return {str(p.relative_to(results)): json.loads(p.read_text()) for p in sorted(Path(results).glob("runs/**/run.json"))}


def snapshot(results: Path) -> Dict[str, tuple]:
    """(mtime_ns, bytes) of every file under `results`: detects any rewrite."""
    return {str(p): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(Path(results).rglob("*")) if p.is_file()}


def strip_volatile(record: dict) -> dict:
    """A record without the fields that legitimately differ between two identical runs."""
    out = {k: v for k, v in record.items() if k not in ("provenance", "costs")}
    raw = dict(out["raw"])
    raw.pop("train_seconds"), raw.pop("eval_seconds")
    out["raw"] = raw
    return out


def metric_ids(metrics: Dict[str, float]) -> List[str]:
    return sorted(metrics)


TINY_COLOURS = ["red", "green", "blue", "yellow", "magenta", "cyan"]  # tiny_shapes' classes


def write_descriptions(path: Path, class_names: List[str] = TINY_COLOURS, per_pair: int = 2) -> Path:
    """A small generated file in ENGINE's descriptor format {class: {other class: [features]}} (tests only)."""
    doc = {a: {b: [f"Feature {i} of {a} unlike {b}" for i in range(per_pair)] for b in class_names}
           for a in class_names}
    path.write_text(json.dumps(doc))
    return path


def method_settings(name: str, tmp_path: Path) -> List[str]:
    """The `--set` values a method needs to run on the tiny suite at all (ENGINE: its descriptor file)."""
    if name == "engine":
        return [f"methods.engine.descriptions={write_descriptions(tmp_path / 'tiny_des.json')}"]
    return []
