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


def write_concepts(path: Path, class_names: List[str] = TINY_COLOURS, per_class: int = 5) -> Path:
    """A small generated concept file in CLG-CBM's format {"<label id>": [concepts]} and its
    {"<label id>": name} file beside it (tests only). Returns the concept file; the names file is
    `path.with_suffix('.names.json')`."""
    path.write_text(json.dumps({str(i): [f"concept {k} of {c}" for k in range(per_class)]
                                for i, c in enumerate(class_names)}))
    path.with_suffix(".names.json").write_text(json.dumps({str(i): c for i, c in enumerate(class_names)}))
    return path


def write_area_descriptions(root: Path, class_names: List[str] = TINY_COLOURS, per_class: int = 6) -> Path:
    """A small generated description folder in AREA's layout (generated_descriptions{,_occ,_aug}/
    <class>_descriptions.txt, lines "<image>\t<text>") (tests only)."""
    for sub in ("generated_descriptions", "generated_descriptions_occ", "generated_descriptions_aug"):
        (root / sub).mkdir(parents=True, exist_ok=True)
        for c in class_names:
            lines = [f"train_{k:05d}.png\t{sub[22:] or 'plain'} view {k} of a {c} shape" for k in range(per_class)]
            (root / sub / f"{c}_descriptions.txt").write_text("\n".join(lines) + "\n")
    return root


def write_synthetic_pairs(root: Path, n: int = 12, size: int = 24) -> Path:
    """A small generated folder of synthetic image-text pairs in GIFT's layout (image_text.csv + .jpeg
    images) (tests only)."""
    import numpy as np
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = ["image,text"]
    for i in range(n):
        Image.fromarray((rng.random((size, size, 3)) * 255).astype("uint8")).save(root / f"{i}.jpeg")
        rows.append(f"./data/synthetic/synthetic_data_a/Tiny_Syn/{i}.jpeg,a photo of a thing number {i % 4}.")
    (root / "image_text.csv").write_text("\n".join(rows) + "\n")
    return root


def method_settings(name: str, tmp_path: Path) -> List[str]:
    """The `--set` values a method needs to run on the tiny suite at all (ENGINE: its descriptor file; CLG-CBM,
    AREA, GIFT: small generated stand-ins for their concept file, description folder, synthetic pairs)."""
    if name == "engine":
        return [f"methods.engine.descriptions={write_descriptions(tmp_path / 'tiny_des.json')}"]
    if name == "clg_cbm":
        concepts = write_concepts(tmp_path / "tiny_concepts.json")
        return [f"methods.clg_cbm.concepts={concepts}",
                f"methods.clg_cbm.class_names_file={concepts.with_suffix('.names.json')}"]
    if name == "area":
        return [f"methods.area.descriptions={write_area_descriptions(tmp_path / 'area_des')}"]
    if name == "gift":
        return [f"methods.gift.synthetic={write_synthetic_pairs(tmp_path / 'syn')}"]
    return []
