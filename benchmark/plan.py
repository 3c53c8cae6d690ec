"""Planning: every run spec of a selection (suite, methods, protocols, seeds, settings), validated before
anything runs; sharding a plan over runners; and the state of a planned run in a results folder."""

from __future__ import annotations

import json
from typing import Dict, List, Optional, Sequence

from clipbench.protocols.catalog import ProtocolDef, SuiteDef, get_protocol, get_suite

from . import claims
from .errors import ClipbenchError, unknown_name_error
from .recipes import check_suite_recipes
from .spec import DEFAULTS, RunSpec, dotted_tree, known_settings, resolve_specs, user_overrides, validate_seeds
from .store import ResultStore


def method_registry():
    from clipbench.methods.base import METHODS  # imports Avalanche; only when methods are needed

    return METHODS


def shard(specs: Sequence[RunSpec], index: int, count: int) -> List[RunSpec]:
    """Part `index` of `count` disjoint parts of the plan (round robin over the plan's order)."""
    if count < 1 or not 0 <= index < count:
        raise ClipbenchError(f"--shard {index}/{count}: need 0 <= i < N")
    return [s for k, s in enumerate(specs) if k % count == index]


def plan(suite_name: str, methods: Optional[Sequence[str]] = None, protocols: Optional[Sequence[str]] = None,
         seeds: Optional[Sequence[int]] = None, config_file: Optional[str] = None,
         sets: Sequence[str] = (), strict_weights: bool = True) -> List[RunSpec]:
    """Every run spec of the selection; validates all names and settings before anything runs."""
    suite: SuiteDef = get_suite(suite_name)
    registry = method_registry()
    for name in suite.left_out_of_all:
        if name not in registry.names():
            raise unknown_name_error("method", name, registry.names())
    if methods:
        method_names = list(methods)
    elif suite.methods == "all":  # every registered method but those the suite leaves out of its grid
        method_names = [m for m in registry.names() if m not in suite.left_out_of_all]
    else:
        method_names = list(suite.methods)
    method_classes = [registry.get(m) for m in method_names]
    protocol_defs: List[ProtocolDef] = [get_protocol(p) for p in (protocols or suite.protocols)]
    known = known_settings({m.name: m.Config for m in method_classes},
                           {p.name: p for p in protocol_defs})
    # the suite's `settings:` may name any registered method and any of its protocols, run now or not
    suite_known = known_settings({m: registry.get(m).Config for m in registry.names()},
                                 {p.name: p for p in protocol_defs + [get_protocol(n) for n in suite.protocols]})
    dotted_tree(suite.settings, suite_known, f"the `settings:` of suite '{suite.name}'",
                {k: f"{suite.source}:{line}" for k, line in suite.lines.items()})
    check_suite_recipes(suite, registry.names(), [p.name for p in protocol_defs] + list(suite.protocols), DEFAULTS)
    overrides = user_overrides(config_file, sets, known)
    validate_seeds(list(seeds) if seeds else suite.seeds, "--seeds" if seeds else f"the seeds of suite '{suite.name}'")
    seeds = list(seeds) if seeds else suite.seeds
    specs: List[RunSpec] = []
    fingerprints: Dict[str, str] = {}  # each dataset's files are read once per plan
    for protocol in protocol_defs:
        for method_cls in method_classes:
            specs.extend(resolve_specs(suite, method_cls, protocol, seeds, overrides, strict_weights, fingerprints))
    checked = set()
    for spec in specs:  # each protocol's data once per distinct params and data_root, before anything runs
        key = (spec.protocol, json.dumps(spec.protocol_params, sort_keys=True, default=str), spec.data_root)
        if key not in checked:
            checked.add(key)
            get_protocol(spec.protocol).check_data(spec.data_root, spec.seed, spec.protocol_params)
    return specs


def not_applicable(spec: RunSpec) -> Optional[str]:
    """Why the spec's method cannot run it by design (its `supports` kinds, its `not_applicable`), or None."""
    method_cls = method_registry().get(spec.method)
    if spec.protocol_kind not in method_cls.supports:
        return f"supports only {' and '.join(k.replace('_', '-') for k in method_cls.supports)} protocols"
    return method_cls.not_applicable(spec)


def run_state(store: ResultStore, spec: RunSpec) -> str:
    """n/a (the method declares it cannot run the spec), complete, running (a live claim), corrupt (its record cannot be read), diverged, failed, partial (a
    checkpoint exists), stale (only records made on other data or by other data/evaluation code exist)
    or missing."""
    if not_applicable(spec) is not None:
        return "n/a"
    record = store.read_record(spec)
    if record and record.get("status") == "complete":
        return "complete"
    if claims.held_by_other(store.claim_path(spec)):
        return "running"
    if record is None and store.record_problem(spec):
        return "corrupt"
    if record and record.get("status") == "diverged":
        return "diverged"
    if store.progress(spec) or (store.run_dir(spec) / "checkpoint.pt").is_file():  # `run` resumes from it
        return "partial"
    if record:
        return "failed"
    if store.stale_records(spec):
        return "stale"
    return "missing"
