"""`clipbench data check`: for every dataset a suite reads, whether it is there and whether it is the split the
reference used (its image counts per split, and per class where the reference's are uniform, against the
source's; `clipbench.protocols.sources`). The same verdict is written into every run record (`data_check`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from clipbench.protocols.catalog import get_protocol, get_suite
from clipbench.protocols.formats import _dataset_specs_in, get_format, read_paths, resolve, spec_paths
from clipbench.protocols.sources import Source, source_for

from .errors import ClipbenchError


ANCHORS = ("root", "images")  # the spec keys a source's files are placed under, by preference
LABELS = ("templates", "names", "how")  # spec keys that name or prompt, and do not change which files are read


@dataclass
class Dataset:
    """One dataset spec a suite reads: where it is used, the spec, and its source (None: unknown)."""

    label: str  # e.g. "mtil_order1: datasets/DTD"
    spec: Dict[str, Any]
    source: Optional[Source]

    def anchor(self) -> Optional[str]:
        """The spec key of the folder the source's files are placed under (`root`; coop_split's `images`)."""
        return next((k for k in ANCHORS if k in self.spec), None)

    def placed(self, data_root: Optional[str]) -> List[Path]:
        """Where the source's files go for this spec (empty when the source places nothing for its format)."""
        places = self.source.places.get(self.spec.get("adapter", ""), ()) if self.source else ()
        if not places or self.anchor() is None:
            return []
        root = resolve(data_root, self.spec[self.anchor()])
        return [root if dst == "." else root / dst for _, dst in places]

    def targets(self, data_root: Optional[str]) -> List[Path]:
        """What must exist for the data to count as there: where the source's files go, and the spec's other
        files (a split list beside the images); without places, every path the spec reads."""
        placed = self.placed(data_root)
        if not placed:
            return read_paths(self.spec, data_root)
        return placed + [resolve(data_root, v) for k, v in spec_paths(self.spec) if k != self.anchor()]

    def found(self, data_root: Optional[str]) -> bool:
        return all(p.exists() for p in self.targets(data_root))


def suite_datasets(suite: str, protocols: Optional[List[str]] = None) -> List[Dataset]:
    """Every dataset spec of the suite's protocols, once each (specs reading the same files are one)."""
    out: Dict[Tuple[str, str], Dataset] = {}
    for name in protocols or get_suite(suite).protocols:
        for path, spec in _dataset_specs_in(get_protocol(name).params):
            key = (str(spec.get("adapter")), repr(sorted((k, str(v)) for k, v in spec.items() if k not in LABELS)))
            if key not in out:
                out[key] = Dataset(f"{name}: {'/'.join(path) or 'target'}", spec, source_for(spec))
    return list(out.values())


def _count(spec: Dict[str, Any], split: str, data_root: Optional[str]) -> Tuple[int, List[int]]:
    """(images, images per class) of the format's split `split` ("all": the spec's whole split)."""
    fmt = get_format(spec)
    data, _ = fmt.labelled(spec, spec.get("whole_split", "train") if split == "all" else split, data_root)
    return len(data), data.labels.bincount().tolist() if len(data) else []


def verdict(dataset: Dataset, data_root: Optional[str]) -> Dict[str, Any]:
    """{"state": missing | reference | differs | unchecked, "detail": ...} for one dataset."""
    if not dataset.found(data_root):
        return {"state": "missing", "detail": ", ".join(str(p) for p in dataset.targets(data_root) if not p.exists())}
    source = dataset.source
    if source is None or not source.sizes or get_format(dataset.spec).labelled is None:
        return {"state": "unchecked", "detail": "no reference sizes known"}
    found, differs = {}, []
    for split, want in source.sizes.items():
        try:
            n, _ = _count(dataset.spec, split, data_root)
        except ClipbenchError as err:
            return {"state": "differs", "detail": f"{split}: cannot be read ({err})"}
        found[split] = n
        if n != want:
            differs.append(f"{split} has {n} images, the reference {want}")
    if differs:
        return {"state": "differs", "detail": "; ".join(differs) + f" ({source.cite})", "counts": found}
    return {"state": "reference", "detail": f"{', '.join(f'{k} {v}' for k, v in found.items())} as {source.cite}",
            "counts": found}


def check(suite: str, data_root: Optional[str], out=print) -> int:
    """Print a line per dataset of the suite; 0 when every one is there and none differs from the reference,
    else 1."""
    bad = 0
    for ds in suite_datasets(suite):
        v = verdict(ds, data_root)
        what = ds.source.title if ds.source else ds.spec.get("name") or ds.label
        line = f"  {v['state']:<10} {what:<28} {ds.label}"
        if v["state"] == "missing":
            bad += 1
            if ds.source is None:
                how = ds.spec.get("how", get_format(ds.spec).how)
            elif ds.source.manual:
                how = f"by hand: {ds.source.manual}"
            else:
                how = f"clipbench data fetch --suite {suite} --only {ds.source.name}"
            line += f"\n             not at {v['detail']} -> {how}"
        elif v["state"] == "differs":
            bad += 1
            line += f"\n             {v['detail']}: not the split behind the reported numbers"
        else:
            line += f"  ({v['detail']})"
        out(line)
    out(f"suite '{suite}' (data_root: {data_root}): " + ("every dataset found" + (", none differs from its reference"
                                                                                   if not bad else "") if not bad else
                                                       f"{bad} dataset(s) missing or not the reference split"))
    return 1 if bad else 0


def record_verdicts(protocol: str, params: Dict[str, Any], data_root: Optional[str]) -> Dict[str, str]:
    """What a run record keeps: per dataset of the protocol with reference sizes, its state (reference or
    differs: ...). Datasets without reference sizes are left out (nothing to say)."""
    out = {}
    for path, spec in _dataset_specs_in(params):
        source = source_for(spec)
        if source is None or not source.sizes:
            continue
        v = verdict(Dataset(f"{protocol}: {'/'.join(path)}", spec, source), data_root)
        out["/".join(path) or "target"] = v["state"] if v["state"] != "differs" else f"differs: {v['detail']}"
    return out
