"""LLM-written class descriptors in ENGINE's format, read and checked against a protocol's classes.

The format is the authors' `chat/<dataset>_des.json` (LAMDA-CL/ICCV25-ENGINE at 8803d66, written by
`chat/chatdemo.py`): a JSON object `{class: {other_class: [visual feature, ...], ...}, ...}`, where
`des[A][B]` lists features that tell A from B (the shipped files also hold `des[A][A]`). ENGINE uses
`des[A][B]` for its pairwise reranking and the concatenation of every list under A (in file order,
`_get_text_des`) for its description loss.

Keys are the protocol's class names (`clipbench list protocols` / the protocol file), matched exactly,
or else after lower-casing and reading "_" as " " (so the authors' "aquarium fish" matches a class named
"aquarium_fish"). A protocol class without an entry, or a pair of protocol classes without a non-empty
list, is an error naming it: ENGINE would fail on it mid-run (a KeyError in `random.choice`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

from clipbench.errors import ClipbenchError

Descriptions = Dict[str, Dict[str, List[str]]]


def _loose(name: str) -> str:
    return name.lower().replace("_", " ").strip()


def resolve(path: str) -> Path:
    """A file path, or `bundled:<file>` for a file shipped with clipbench (benchmark/assets/...)."""
    from clipbench.models import resolve_bundled

    return Path(str(resolve_bundled(path))).expanduser()


def load(path: str, what: str) -> Descriptions:
    """The descriptor file at `path`, its shape checked (`what`: the setting, for messages)."""
    file = resolve(path)
    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
    except OSError as err:
        raise ClipbenchError(f"{what}: cannot read {file}: {err.strerror or err}") from None
    except ValueError as err:
        raise ClipbenchError(f"{what}: {file} is not JSON: {err}") from None
    if not isinstance(doc, dict) or not all(isinstance(v, dict) for v in doc.values()):
        raise ClipbenchError(f"{what}: {file} must be a JSON object {{class: {{other class: [features]}}}}")
    for a, others in doc.items():
        for b, feats in others.items():
            if not isinstance(feats, list) or not all(isinstance(f, str) for f in feats):
                raise ClipbenchError(f"{what}: {file}: the entry [{a!r}][{b!r}] must be a list of strings")
    return doc


def for_classes(doc: Descriptions, class_names: List[str], what: str) -> Dict[str, Dict[str, List[str]]]:
    """`doc` re-keyed by the protocol's class names (outer keys; inner keys of protocol classes too),
    checked to hold a non-empty list for every ordered pair of distinct protocol classes."""
    loose = {_loose(k): k for k in doc}

    def key(name: str, table) -> str:
        if name in table:
            return name
        found = {_loose(k): k for k in table}.get(_loose(name))
        return found if found is not None else ""

    out: Dict[str, Dict[str, List[str]]] = {}
    for a in class_names:
        ka = a if a in doc else loose.get(_loose(a), "")
        if not ka:
            raise ClipbenchError(f"{what}: no descriptors for class {a!r} (the file's keys must be the protocol's "
                                 f"class names; it has e.g. {sorted(doc)[:3]})")
        inner = doc[ka]
        row = dict(inner)
        for b in class_names:
            if b == a:
                continue
            kb = key(b, inner)
            if not kb or not inner[kb]:
                raise ClipbenchError(f"{what}: no descriptors of class {a!r} against {b!r} (ENGINE's reranking "
                                     "needs a non-empty list for every pair of the protocol's classes)")
            row[b] = inner[kb]
        out[a] = row
    return out


def pooled_by_class(table: Dict[str, Dict[str, List[str]]], doc: Descriptions) -> Dict[str, List[str]]:
    """Per protocol class, every descriptor under it in file order (`_get_text_des`)."""
    loose = {_loose(k): k for k in doc}
    pooled = {}
    for a in table:
        ka = a if a in doc else loose[_loose(a)]
        pooled[a] = [f for feats in doc[ka].values() for f in feats]
    return pooled
