"""Protocols and suites, each one YAML file, and the registry of dataset builders they name.

A protocol file (`defs/<name>.yaml`) names a builder and its parameters; a builder is a function
`build(params, data_root, seed) -> Streams` registered with `@register_builder`. A suite file
(`suites/<name>.yaml`) names a model, protocols, methods (a list, or `all`), seeds, train/eval
settings, and `settings:`, dotted keys like `--set`'s (`methods.zscl.l2: 0`), the one place for a
suite's method hyperparameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from clipbench.errors import ClipbenchError, unknown_name_error
from clipbench.registry import Registry
from clipbench.streams import KINDS, Streams
from clipbench.yamlio import load_yaml

HERE = Path(__file__).parent
PROTOCOL_DIR = HERE / "defs"
SUITE_DIR = HERE / "suites"

Builder = Callable[[Dict[str, Any], Optional[str], int], Streams]
BUILDERS: Registry[Builder] = Registry("dataset builder", "clipbench.protocols.builders")


def register_builder(name: str, version: int = 1) -> Callable[[Builder], Builder]:
    """Register a dataset builder under `name` (used by protocol files' `builder:` key). Bump `version`
    whenever the streams it builds from the same files could change (it enters every run id)."""

    def decorate(fn: Builder) -> Builder:
        fn.version = version  # type: ignore[attr-defined]
        return BUILDERS.register(name, fn)

    return decorate


AssetReporter = Callable[[Dict[str, Any], Optional[str]], List[Dict[str, Any]]]
ASSET_REPORTERS: Registry[AssetReporter] = Registry("asset report", "clipbench.protocols.builders")


def register_assets(builder: str) -> Callable[[AssetReporter], AssetReporter]:
    """Register `report(params, data_root) -> [{asset, path, found, how}]` for a builder's --dry-run."""
    return lambda fn: ASSET_REPORTERS.register(builder, fn)


@dataclass(frozen=True)
class ProtocolDef:
    """One protocol: which data, in which stream, scored how. Bump `version` when numbers could change."""

    name: str
    version: int
    kind: str
    builder: str
    params: Dict[str, Any]
    description: str = ""
    train: Dict[str, Any] = field(default_factory=dict)  # protocol-level train defaults
    # the metrics its main leaderboard table shows and ranks (empty: the metrics declared headline)
    headline: Tuple[str, ...] = ()
    # the metrics it reports (records, leaderboard): its file's `metrics:`, else every metric of its kind
    metrics: Tuple[str, ...] = ()

    def headline_metrics(self) -> Tuple[str, ...]:
        """Its main table's metrics: its `headline:`, else those of its metrics declared headline."""
        from .metrics import METRICS

        return self.headline or tuple(m for m in self.metrics if METRICS.get(m).headline)

    def assets(self, data_root: Optional[str], params: Optional[Dict[str, Any]] = None) -> List[Dict[str, Any]]:
        """What the protocol reads and whether it is there (empty for builders that make their data)."""
        ASSET_REPORTERS.names()  # discovery
        if self.builder not in ASSET_REPORTERS:
            return []
        return ASSET_REPORTERS.get(self.builder)(dict(params if params is not None else self.params), data_root)

    def builder_version(self) -> int:
        return int(getattr(BUILDERS.get(self.builder), "version", 1))

    def data_fingerprint(self, data_root: Optional[str], params: Optional[Dict[str, Any]] = None,
                         memo: Optional[Dict[str, str]] = None) -> Dict[str, str]:
        """Per dataset the protocol reads (its `assets`), a fingerprint of the files read: relative paths,
        sizes and modification times (`clipbench.protocols.fingerprint`). Builders that make their
        data in memory read nothing and give {}."""
        from .fingerprint import paths_fingerprint

        groups: Dict[str, List[str]] = {}
        for row in self.assets(data_root, params):
            if row.get("key") != "package":  # installed packages are part of the model's fingerprint
                groups.setdefault(row["asset"], []).extend(row.get("reads", [row["path"]]))
        return {label: paths_fingerprint(paths, memo) for label, paths in sorted(groups.items())}

    def build(self, data_root: Optional[str], seed: int, params: Optional[Dict[str, Any]] = None) -> Streams:
        """Build the streams for `seed` (data order and subsampling may depend on it)."""
        streams = BUILDERS.get(self.builder)(dict(params if params is not None else self.params), data_root, seed)
        if streams.kind != self.kind:
            raise ClipbenchError(f"protocol '{self.name}' declares kind {self.kind} but its builder made {streams.kind}")
        return streams


@dataclass(frozen=True)
class SuiteDef:
    """A suite: the grid `clipbench run --all --suite NAME` executes."""

    name: str
    description: str
    model: Dict[str, Any]
    protocols: List[str]
    methods: Any  # "all" or a list of names
    seeds: List[int]
    train: Dict[str, Any]
    eval: Dict[str, Any]
    data_root: Optional[str] = None
    resources: Dict[str, Any] = field(default_factory=dict)  # per run on a cluster: cpus, gpus, mem_gb, time_min, partition
    settings: Dict[str, Any] = field(default_factory=dict)  # dotted key -> value, layered before --config and --set


def _require(doc: Any, keys: List[str], source: Path) -> Dict[str, Any]:
    if not isinstance(doc, dict):
        raise ClipbenchError(f"{source}: expected a mapping at the top level")
    missing = [k for k in keys if k not in doc]
    if missing:
        raise ClipbenchError(f"{source}: missing key(s) {', '.join(missing)}")
    return doc


def _reported(value: Any, kind: str, source: Path) -> Tuple[str, ...]:
    """A protocol's `metrics:` list (registered names), or every metric declared for its kind."""
    from .metrics import check_metric_names, default_metrics

    return default_metrics(kind) if value is None else check_metric_names(value, str(source))


def _headline(value: Any, source: Path, reported: Tuple[str, ...]) -> Tuple[str, ...]:
    """A protocol's `headline:` list: metrics it reports, at most one of each family (a metric and its
    `_drop` twin rank alike, so a mean rank would count them twice)."""
    from .metrics import METRICS, check_metric_names

    if value is None:
        return ()
    families: Dict[str, str] = {}
    for name in check_metric_names(value, str(source), "headline"):
        if name not in reported:
            raise ClipbenchError(f"{source}: headline lists {name}, which is not in the protocol's metrics: "
                                 f"add it there or drop it here")
        family = METRICS.get(name).family
        if family in families:
            raise ClipbenchError(f"{source}: headline lists {families[family]} and {name}, which rank alike "
                                 f"(family '{family}'); keep one")
        families[family] = name
    return tuple(value)


def load_protocol_file(path: Path) -> ProtocolDef:
    doc = _require(load_yaml(path), ["name", "version", "kind", "builder"], path)
    if doc["kind"] not in KINDS:
        raise ClipbenchError(f"{path}: kind must be one of {', '.join(KINDS)}, got '{doc['kind']}'")
    reported = _reported(doc.get("metrics"), doc["kind"], path)
    return ProtocolDef(
        name=doc["name"], version=int(doc["version"]), kind=doc["kind"], builder=doc["builder"],
        params=dict(doc.get("params") or {}), description=doc.get("description", ""),
        train=dict(doc.get("train") or {}), headline=_headline(doc.get("headline"), path, reported), metrics=reported,
    )


def load_suite_file(path: Path) -> SuiteDef:
    doc = _require(load_yaml(path), ["name", "model", "protocols"], path)
    methods = doc.get("methods", "all")
    if methods != "all" and not (isinstance(methods, list) and all(isinstance(m, str) for m in methods)):
        raise ClipbenchError(f"{path}: `methods:` is `all` or a list of method names; put hyperparameters under "
                             "`settings:` as `methods.<name>.<field>: value`")
    settings = doc.get("settings") or {}
    if not isinstance(settings, dict) or any(isinstance(v, dict) for v in settings.values()):
        raise ClipbenchError(f"{path}: `settings:` maps dotted keys to values, e.g. `methods.zscl.l2: 0`")
    return SuiteDef(
        name=doc["name"], description=doc.get("description", ""), model=dict(doc["model"]),
        protocols=list(doc["protocols"]), methods=methods,
        seeds=[int(s) for s in doc.get("seeds", [0])], train=dict(doc.get("train") or {}),
        eval=dict(doc.get("eval") or {}), data_root=doc.get("data_root"), resources=dict(doc.get("resources") or {}),
        settings={str(k): v for k, v in settings.items()},
    )


@lru_cache(maxsize=None)
def _protocols() -> Dict[str, ProtocolDef]:
    return {p.name: p for p in map(load_protocol_file, sorted(PROTOCOL_DIR.glob("*.yaml")))}


@lru_cache(maxsize=None)
def _suites() -> Dict[str, SuiteDef]:
    return {s.name: s for s in map(load_suite_file, sorted(SUITE_DIR.glob("*.yaml")))}


def get_protocol(name: str) -> ProtocolDef:
    if name not in _protocols():
        raise unknown_name_error("protocol", name, _protocols())
    return _protocols()[name]


def get_suite(name: str) -> SuiteDef:
    if name not in _suites():
        raise unknown_name_error("suite", name, _suites())
    return _suites()[name]


def protocol_names() -> List[str]:
    return sorted(_protocols())


def suite_names() -> List[str]:
    return sorted(_suites())
