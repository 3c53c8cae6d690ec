"""Protocols and suites, each one YAML file, and the registry of dataset builders they name.

A protocol file (`defs/<name>.yaml`) names a builder and its parameters; a builder is a function
`build(params, data_root, seed) -> Streams` registered with `@register_builder`. A suite file
(`suites/<name>.yaml`) names a model, protocols, methods (a list, or `all`), seeds, train/eval
settings, and `settings:`, dotted keys like `--set`'s (`methods.zscl.l2: 0`), the one place for a
suite's method hyperparameters.

The catalog is the shipped `defs/` and `suites/` plus the user's own files: folders or files named by
`--include` or the environment variable CLIPBENCH_INCLUDE (os.pathsep-separated; child processes and
cluster workers inherit it), and files given where a name is accepted (`--protocol FILE.yaml`). In a
folder, a file with a top-level `protocols:` key is a suite, any other a protocol; files whose name starts
with `_` are fragments, read only through another file's `include:`. A protocol file may `include:` other
files (paths relative to it) and override their keys (mappings merge, everything else replaces).
Every key of every file is checked when it is read: an unknown key fails naming the file, the line and
the nearest known key; a builder declares its parameters as a typed dataclass (`register_builder(...,
params=...)`), checked the same way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from clipbench.errors import ClipbenchError, unknown_name_error
from clipbench.names import check_name
from clipbench.registry import Registry
from clipbench.streams import KINDS, Streams

HERE = Path(__file__).resolve().parent
PROTOCOL_DIR = HERE / "defs"
SUITE_DIR = HERE / "suites"

Builder = Callable[[Dict[str, Any], Optional[str], int], Streams]
BUILDERS: Registry[Builder] = Registry("dataset builder", "clipbench.protocols.builders")


def register_builder(name: str, version: int = 1, params: Optional[type] = None) -> Callable[[Builder], Builder]:
    """Register a dataset builder under `name` (used by protocol files' `builder:` key). Bump `version`
    whenever the streams it builds from the same files could change (it enters every run id). `params`:
    the dataclass declaring its parameters (names, types, defaults; a `REQUIRED` tuple of names), against
    which protocol files and `--set protocols.<name>.<param>` are checked."""

    def decorate(fn: Builder) -> Builder:
        fn.version = version  # type: ignore[attr-defined]
        fn.params = params  # type: ignore[attr-defined]
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
    # the metrics it reports (records, leaderboard): its file's `metrics:`, else (empty) every metric of its kind
    metrics: Tuple[str, ...] = ()
    source: str = ""  # the file it was read from ("" when made in code)
    lines: Dict[str, str] = field(default_factory=dict, compare=False)  # "params.<key>" -> its "file:line"

    def __post_init__(self) -> None:
        if not self.metrics:  # a protocol made in code, not read from a file, reports what a file without `metrics:` would
            from .metrics import default_metrics

            object.__setattr__(self, "metrics", tuple(default_metrics(self.kind)))

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

    def builder_params(self) -> Optional[type]:
        """The dataclass declaring the builder's parameters (None when it declares none)."""
        return getattr(BUILDERS.get(self.builder), "params", None)

    def check_dataset_specs(self, params: Dict[str, Any], source: str) -> None:
        """Every key inside the dataset specs of `params` (this protocol's, with settings from `source` applied)
        is one its format reads, with a value its rules allow (files are checked line by line when read; this
        covers settings), and the builder's parameters fit together."""
        from .formats import check_dataset_specs

        check_dataset_specs(params, lambda keys: f"{source}: protocols.{self.name}." + ".".join(keys))
        _check_together(self.builder_params(), params, lambda key: f"{source}: protocols.{self.name}.{key}")

    def where(self, key: str = "") -> str:
        """`file:line` of `params.<key>` in the protocol's file (its nearest enclosing key's line; the file
        alone when unknown), or the protocol's name when it was made in code."""
        if not self.source:
            return f"protocol '{self.name}'"
        parts = f"params.{key}".split(".") if key else []
        for n in range(len(parts), 0, -1):
            place = self.lines.get(".".join(parts[:n]))
            if place:
                return place
        return self.source

    def check_data(self, data_root: Optional[str], seed: int, params: Optional[Dict[str, Any]] = None) -> None:
        """Build the streams once before anything runs (files are listed, not decoded) and refuse what would
        fail mid-run or give wrong metrics (`build`'s checks): a class id the data lacks, experiences that do
        not cover its classes, an experience without test images, classes whose prompts read the same. Data
        that is not there yet is left to the run (it may download it; a dry run lists it). One line naming the
        protocol file, and the line of the parameter when the problem is one parameter's."""
        from clipbench.errors import BadValue, MissingData

        params = dict(params if params is not None else self.params)
        if any(not row["found"] for row in self.assets(data_root, params)):
            return
        try:
            self.build(data_root, seed, _without_downloads(params))
        except BadValue as err:
            raise ClipbenchError(f"{self.where(err.key)}: protocol '{self.name}': {err}") from None
        except MissingData:
            return
        except ClipbenchError as err:
            raise ClipbenchError(f"{self.where()}: {err}" if self.source else str(err)) from None
        except Exception:  # noqa: BLE001 - not bad input that can be named here: the run records it as it always did
            return

    def declares_references(self) -> bool:
        """Whether the protocol's own params declare its reference sets (`reference`, `references`), as the
        builders over real datasets do; builders that make their data (mini, synthetic) make their own."""
        declared = self.builder_params()
        return declared is not None and "reference" in {f.name for f in fields(declared)}

    def reference_for(self, params: Dict[str, Any], method: str) -> Optional[Dict[str, Any]]:
        """The reference set a method's run reads: `references.<method>`, else `reference`; None when the
        protocol declares none for it (always None where the builder makes its own, see `declares_references`)."""
        if not self.declares_references():
            return None
        return (params.get("references") or {}).get(method) or params.get("reference") or None

    def reference_roles(self, params: Dict[str, Any], method: str) -> Optional[Tuple[str, ...]]:
        """What the reference set declared for `method` holds: ("pairs",) for image-caption pairs, else its
        parts among ("images", "sentences"); () when none is declared; None where the builder makes its own."""
        if not self.declares_references():
            return None
        ref = self.reference_for(params, method)
        if not ref:
            return ()
        return ("pairs",) if "adapter" in ref else tuple(k for k in ("images", "sentences") if ref.get(k))

    def method_params(self, params: Dict[str, Any], method: Optional[str]) -> Dict[str, Any]:
        """The builder params of a run that reads the reference set of `method` (None: no reference set): its
        `reference` is the set declared for that method, and absent for None, so a run reads (and decodes) no
        reference set it does not use and a missing set fails only the runs that need it. The params of builders
        that make their data are unchanged."""
        if not self.declares_references():
            return dict(params)
        chosen = self.reference_for(params, method) if method else None
        out = {k: v for k, v in params.items() if k not in ("reference", "references")}
        if chosen:
            out["reference"] = chosen
        return out

    def builder_version(self) -> int:
        return int(getattr(BUILDERS.get(self.builder), "version", 1))

    def data_fingerprint(self, data_root: Optional[str], params: Optional[Dict[str, Any]] = None,
                         memo: Optional[Dict[str, str]] = None) -> Dict[str, str]:
        """Per dataset the protocol reads (its `assets`), a fingerprint of the files read: relative paths,
        sizes and modification times (`clipbench.protocols.fingerprint`). Builders that make their
        data in memory read nothing and give {}."""
        from .fingerprint import paths_fingerprint

        groups: Dict[str, List[str]] = {}
        suffixes: Dict[str, Optional[List[str]]] = {}  # per dataset, the files its format reads inside folders
        for row in self.assets(data_root, params):
            if row.get("key") != "package":  # installed packages are part of the model's fingerprint
                groups.setdefault(row["asset"], []).extend(row.get("reads", [row["path"]]))
                suffixes[row["asset"]] = row.get("suffixes")
        return {label: paths_fingerprint(paths, memo, suffixes.get(label)) for label, paths in sorted(groups.items())}

    def build(self, data_root: Optional[str], seed: int, params: Optional[Dict[str, Any]] = None,
              reference_for: Optional[str] = None) -> Streams:
        """Build the streams for `seed` (data order and subsampling may depend on it). `reference_for`: the
        method whose reference set is read into `streams.reference` (None: no declared set is read)."""
        params = self.method_params(dict(params if params is not None else self.params), reference_for)
        streams = BUILDERS.get(self.builder)(params, data_root, seed)
        if streams.kind != self.kind:
            raise ClipbenchError(f"protocol '{self.name}' declares kind {self.kind} but its builder made {streams.kind}")
        streams.check(f"protocol '{self.name}'")
        return streams


def _without_downloads(value: Any) -> Any:
    """Builder params with every dataset spec's `download` turned off (planning never downloads)."""
    if isinstance(value, dict):
        return {k: (False if k == "download" and "adapter" in value else _without_downloads(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_downloads(v) for v in value]
    return value


def _check_together(declared: Optional[type], params: Dict[str, Any], where: Callable[[str], str]) -> None:
    """A builder's `Params.check(params)`: values that are each fine but do not fit together."""
    found = getattr(declared, "check", None)
    problem = found(params) if found is not None else None
    if problem:
        key, text = problem
        raise ClipbenchError(f"{where(key)}: {key}: {text}")


@dataclass
class Resources:
    """What each run asks for on a cluster (`--executor slurm/ray`). From the suite's `resources:` block,
    overridden by flags."""

    cpus: int = 1
    gpus: int = 0
    mem_gb: float = 8.0
    time_min: int = 240
    partition: Optional[str] = None


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
    recipe: str = "shared"  # the default recipe mode: shared | reference (clipbench.recipes)
    recipes: Dict[str, Any] = field(default_factory=dict)  # method -> its authors' recipe on this suite
    # method -> why `run --all` leaves it out of this suite's grid (`methods: all`); it still runs by name
    left_out_of_all: Dict[str, str] = field(default_factory=dict)
    train_source: str = ""  # where the suite's own `train:` recipe comes from (repository, commit, files)
    source: str = ""  # the file it was read from
    lines: Dict[str, int] = field(default_factory=dict, compare=False)  # settings key -> its line in `source`


Where = Dict[Tuple[str, ...], Tuple[str, int]]  # key path -> (file, line) it was read from

# keys read from files but not fields of the definitions
PROTOCOL_FILE_KEYS = ("include",)
SUITE_SECTIONS = ("model", "train", "eval", "resources")  # mappings whose keys are checked


def _at(where: Where, source: Path, *keys: str) -> str:
    """`file:line` of a key path (its nearest enclosing key that has a line), else the file."""
    for n in range(len(keys), 0, -1):
        if keys[:n] in where:
            file, line = where[keys[:n]]
            return f"{file}:{line}"
    return str(source)


def _check_keys(doc: Dict[str, Any], known: Sequence[str], what: str, where: Where, source: Path,
                *prefix: str) -> None:
    from clipbench.types import unknown_key

    for key in doc:
        if key not in known:
            raise unknown_key(str(key), known, what, _at(where, source, *prefix, str(key)))


def _require(doc: Any, keys: List[str], source: Path) -> Dict[str, Any]:
    if not isinstance(doc, dict):
        raise ClipbenchError(f"{source}: expected a mapping at the top level")
    missing = [k for k in keys if k not in doc]
    if missing:
        raise ClipbenchError(f"{source}: missing key(s) {', '.join(missing)}")
    return doc


def _reported(value: Any, kind: str, source: str) -> Tuple[str, ...]:
    """A protocol's `metrics:` list (registered names), or every metric declared for its kind."""
    from .metrics import check_metric_names, default_metrics

    return default_metrics(kind) if value is None else check_metric_names(value, source)


def _headline(value: Any, source: str, reported: Tuple[str, ...]) -> Tuple[str, ...]:
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


def read_protocol_doc(path: Path, _chain: Tuple[Path, ...] = ()) -> Tuple[Dict[str, Any], Where]:
    """A protocol file with its `include:`s applied (each path relative to the including file, read first,
    then overridden: mappings merge key by key, everything else replaces), and where each key came from."""
    from clipbench.yamlio import deep_merge, load_yaml_marked

    path = path.resolve()
    if path in _chain:
        raise ClipbenchError(f"{_chain[-1]}: include cycle: " + " -> ".join(str(p) for p in _chain + (path,)))
    doc, marks = load_yaml_marked(path)
    if not isinstance(doc, dict):
        raise ClipbenchError(f"{path}: expected a mapping at the top level")
    where: Where = {k: (str(path), line) for k, line in marks.items()}
    includes = doc.pop("include", None)
    if includes is None:
        return doc, where
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise ClipbenchError(f"{_at(where, path, 'include')}: include: names a file (or a list of files), "
                             "relative to this one")
    merged: Dict[str, Any] = {}
    merged_where: Where = {}
    for ref in includes:
        base_path = path.parent / Path(ref).expanduser()
        if not base_path.is_file():
            raise ClipbenchError(f"{_at(where, path, 'include')}: include: {ref} not found (looked for {base_path})")
        base, base_where = read_protocol_doc(base_path, _chain + (path,))
        merged, merged_where = deep_merge(merged, base), {**merged_where, **base_where}
    return deep_merge(merged, doc), {**merged_where, **where}


def _check_builder_params(doc: Dict[str, Any], where: Where, path: Path) -> None:
    """The builder is registered and its `params:` fit its declared `Params` dataclass (names and types)."""
    from clipbench.types import check_fields

    try:
        builder = BUILDERS.get(doc["builder"])
    except ClipbenchError as err:
        raise ClipbenchError(f"{_at(where, path, 'builder')}: {err}") from None
    params = doc.get("params") or {}
    if not isinstance(params, dict):
        raise ClipbenchError(f"{_at(where, path, 'params')}: params: expected a mapping of the builder's parameters")
    declared = getattr(builder, "params", None)
    if declared is None:
        return
    check_fields(declared, params, f"the params of builder '{doc['builder']}'",
                 lambda key: _at(where, path, "params", str(key)))
    from .formats import check_dataset_specs

    check_dataset_specs(params, lambda keys: _at(where, path, "params", *keys))  # and inside every dataset spec
    missing = [k for k in getattr(declared, "REQUIRED", ()) if k not in params]
    if missing:
        raise ClipbenchError(f"{_at(where, path, 'params')}: builder '{doc['builder']}' needs params: {', '.join(missing)}")


def _version(value: Any, where: str) -> int:
    """A protocol's `version:`, an integer >= 1 (it enters every run id; bump it when numbers could change)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ClipbenchError(f"{where}: version must be an integer >= 1 (bump it whenever the protocol's numbers "
                             f"could change), got {value!r}")
    return value


def load_protocol_file(path: Path) -> ProtocolDef:
    """A protocol file, its includes applied, every key checked (file, line and did-you-mean on a mistake)."""
    from clipbench.spec import DEFAULTS

    path = Path(path)
    doc, where = read_protocol_doc(path)
    _check_keys(doc, [f.name for f in fields(ProtocolDef) if f.name not in ("source", "lines")] + list(PROTOCOL_FILE_KEYS),
                "a protocol file", where, path)
    _require(doc, ["name", "version", "kind", "builder"], path)
    check_name("protocol", doc["name"], _at(where, path, "name"))
    if doc["kind"] not in KINDS:
        raise ClipbenchError(f"{_at(where, path, 'kind')}: kind must be one of {', '.join(KINDS)}, got '{doc['kind']}'")
    _check_builder_params(doc, where, path)
    train = doc.get("train") or {}
    _check_keys(train, list(DEFAULTS["train"]) + ["per_experience"], "train", where, path, "train")
    # values that are each fine but do not fit together (every key is known by now)
    _check_together(BUILDERS.get(doc["builder"]).params, doc.get("params") or {}, lambda key: _at(where, path, "params", key))
    reported = _reported(doc.get("metrics"), doc["kind"], _at(where, path, "metrics"))
    return ProtocolDef(
        name=doc["name"], version=_version(doc["version"], _at(where, path, "version")), kind=doc["kind"], builder=doc["builder"],
        params=dict(doc.get("params") or {}), description=doc.get("description", ""),
        train=dict(train), headline=_headline(doc.get("headline"), _at(where, path, "headline"), reported),
        metrics=reported, source=str(path),
        lines={".".join(k): f"{file}:{line}" for k, (file, line) in where.items() if k[0] == "params"},
    )


def _suite_section_keys() -> Dict[str, List[str]]:
    from clipbench.spec import DEFAULTS

    return {"model": list(DEFAULTS["model"]), "train": list(DEFAULTS["train"]) + ["per_experience"],
            "eval": list(DEFAULTS["eval"]),
            "resources": [f.name for f in fields(Resources)]}


def _suite_seeds(value: Any, where: str) -> List[int]:
    """A suite's `seeds:`, a non-empty list of distinct integers >= 0 (`1.9` is not read as seed 1)."""
    ok = isinstance(value, list) and value and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                   for s in value)
    if not ok or len(set(value)) != len(value):
        raise ClipbenchError(f"{where}: seeds: expected a list of distinct integers >= 0, e.g. [0, 1, 2], got {value!r}")
    return list(value)


def _data_root(value: Any, where: str) -> Optional[str]:
    """A suite's `data_root:`, one folder (or null)."""
    if value is not None and not isinstance(value, str):
        raise ClipbenchError(f"{where}: data_root: expected one folder, got {value!r}")
    return value


def load_suite_file(path: Path) -> SuiteDef:
    """A suite file, every key checked (file, line and did-you-mean on a mistake). `protocols:` entries are
    names, or protocol files (ending in .yaml, relative to the suite file), which join the catalog."""
    from clipbench.yamlio import load_yaml_marked

    path = Path(path)
    doc, marks = load_yaml_marked(path)
    where: Where = {k: (str(path), line) for k, line in marks.items()}
    doc = _require(doc, ["name", "model", "protocols"], path)
    check_name("suite", doc["name"], _at(where, path, "name"))
    _check_keys(doc, [f.name for f in fields(SuiteDef) if f.name not in ("source", "lines")], "a suite file", where, path)
    methods = doc.get("methods", "all")
    if methods != "all" and not (isinstance(methods, list) and all(isinstance(m, str) for m in methods)):
        raise ClipbenchError(f"{_at(where, path, 'methods')}: `methods:` is `all` or a list of method names; put "
                             "hyperparameters under `settings:` as `methods.<name>.<field>: value`")
    for section, known in _suite_section_keys().items():
        value = doc.get(section) or {}
        if not isinstance(value, dict):
            raise ClipbenchError(f"{_at(where, path, section)}: `{section}:` expects a mapping")
        _check_keys(value, known, section, where, path, section)
    settings = doc.get("settings") or {}
    if not isinstance(settings, dict) or any(isinstance(v, dict) for v in settings.values()):
        raise ClipbenchError(f"{_at(where, path, 'settings')}: `settings:` maps dotted keys to values, "
                             "e.g. `methods.zscl.l2: 0`")
    from clipbench.recipes import MODES, check_entries

    recipe = doc.get("recipe", "shared")
    if recipe not in MODES:
        raise ClipbenchError(f"{_at(where, path, 'recipe')}: recipe: must be one of {', '.join(MODES)}, got {recipe!r}")
    recipes = check_entries(doc.get("recipes"), _at(where, path, "recipes"))
    left_out = doc.get("left_out_of_all") or {}
    if not isinstance(left_out, dict) or not all(isinstance(k, str) and isinstance(v, str) and v for k, v in left_out.items()):
        raise ClipbenchError(f"{_at(where, path, 'left_out_of_all')}: `left_out_of_all:` maps a method name to why "
                             "`run --all` leaves it out, e.g. `attriclip: about 10 minutes a run`")
    protocols = doc["protocols"]
    if not isinstance(protocols, list) or not all(isinstance(p, str) for p in protocols):
        raise ClipbenchError(f"{_at(where, path, 'protocols')}: `protocols:` is a list of protocol names or files")
    return SuiteDef(
        name=doc["name"], description=doc.get("description", ""), model=dict(doc["model"]),
        protocols=list(protocols), methods=methods,
        seeds=_suite_seeds(doc.get("seeds", [0]), _at(where, path, "seeds")), train=dict(doc.get("train") or {}),
        eval=dict(doc.get("eval") or {}), data_root=_data_root(doc.get("data_root"), _at(where, path, "data_root")), resources=dict(doc.get("resources") or {}),
        settings={str(k): v for k, v in settings.items()}, recipe=recipe, recipes=recipes, left_out_of_all=dict(left_out),
        train_source=str(doc.get("train_source", "")), source=str(path),
        lines={str(k): where[("settings", str(k))][1] for k in settings if ("settings", str(k)) in where},
    )


# ---- the catalog: shipped files plus the user's ----------------------------------------------------------

INCLUDE_ENV = "CLIPBENCH_INCLUDE"


def include_entries() -> Tuple[str, ...]:
    """The folders and files the user added to the catalog (CLIPBENCH_INCLUDE, os.pathsep-separated)."""
    return tuple(p for p in os.environ.get(INCLUDE_ENV, "").split(os.pathsep) if p)


def add_include(path: str | Path) -> Path:
    """Add a folder of protocol and suite files, or one file, to the catalog of this process and of the
    processes it starts (they inherit CLIPBENCH_INCLUDE)."""
    resolved = Path(path).expanduser().resolve()
    if not resolved.exists():
        raise ClipbenchError(f"--include {path}: no such folder or file")
    if str(resolved) not in include_entries():
        os.environ[INCLUDE_ENV] = os.pathsep.join(include_entries() + (str(resolved),))
    return resolved


def looks_like_file(ref: str) -> bool:
    """A name-or-file argument names a file when it ends in .yaml/.yml or holds a path separator."""
    return ref.endswith((".yaml", ".yml")) or "/" in ref or os.sep in ref


def _is_suite_file(path: Path) -> bool:
    from clipbench.yamlio import load_yaml

    doc = load_yaml(path)
    return isinstance(doc, dict) and "protocols" in doc


@dataclass
class _Catalog:
    protocols: Dict[str, ProtocolDef] = field(default_factory=dict)
    suites: Dict[str, SuiteDef] = field(default_factory=dict)
    files: Dict[Tuple[str, str], Path] = field(default_factory=dict)  # (kind, name) -> the file it came from

    def add(self, kind: str, item: Any, path: Path, shipped: bool) -> None:
        table = self.protocols if kind == "protocol" else self.suites
        before = self.files.get((kind, item.name))
        if before is not None and before != path:
            whose = "the built-in" if before.is_relative_to(HERE) else "the"
            raise ClipbenchError(f"{path}: {kind} '{item.name}' clashes with {whose} {kind} of that name ({before}); "
                                 "rename it")
        table[item.name] = item
        self.files[(kind, item.name)] = path

    def name_of(self, kind: str, path: Path) -> Optional[str]:
        return next((n for (k, n), p in self.files.items() if k == kind and p == path), None)


def _user_files(entries: Sequence[str]) -> List[Path]:
    out: List[Path] = []
    for entry in entries:
        path = Path(entry)
        if path.is_file():
            out.append(path.resolve())
        elif path.is_dir():
            out += [p.resolve() for p in sorted(path.iterdir())
                    if p.suffix in (".yaml", ".yml") and not p.name.startswith("_") and p.is_file()]
        else:
            raise ClipbenchError(f"{INCLUDE_ENV} names {entry}, which does not exist; fix or unset it")
    return list(dict.fromkeys(out))


@lru_cache(maxsize=None)
def _load_catalog(entries: Tuple[str, ...]) -> _Catalog:
    cat = _Catalog()
    for path in sorted(PROTOCOL_DIR.glob("*.yaml")):
        if not path.name.startswith("_"):
            cat.add("protocol", load_protocol_file(path), path.resolve(), True)
    for path in sorted(SUITE_DIR.glob("*.yaml")):
        cat.add("suite", load_suite_file(path), path.resolve(), True)
    for path in _user_files(entries):
        kind = "suite" if _is_suite_file(path) else "protocol"
        cat.add(kind, load_suite_file(path) if kind == "suite" else load_protocol_file(path), path, False)
    for name, suite in list(cat.suites.items()):  # a suite's protocol files join the catalog
        if any(looks_like_file(p) for p in suite.protocols):
            cat.suites[name] = replace(suite, protocols=[_suite_protocol(cat, suite, p) for p in suite.protocols])
    return cat


def _suite_protocol(cat: _Catalog, suite: SuiteDef, ref: str) -> str:
    if not looks_like_file(ref):
        return ref
    path = (Path(suite.source).parent / Path(ref).expanduser()).resolve()
    if not path.is_file():
        raise ClipbenchError(f"{suite.source}: protocols: {ref} not found (looked for {path})")
    name = cat.name_of("protocol", path)
    if name is None:
        proto = load_protocol_file(path)
        cat.add("protocol", proto, path, False)
        name = proto.name
    return name


def _catalog() -> _Catalog:
    return _load_catalog(include_entries())


def _protocols() -> Dict[str, ProtocolDef]:
    return _catalog().protocols


def _suites() -> Dict[str, SuiteDef]:
    return _catalog().suites


def _named_file(ref: str, kind: str) -> str:
    """The name of the protocol or suite in file `ref`, which joins the catalog."""
    path = Path(ref).expanduser()
    if not path.is_file():
        raise ClipbenchError(f"{kind} file {ref} not found (a {kind} is a name from `clipbench list {kind}s` or a "
                             "YAML file)")
    path = add_include(path)
    cat = _catalog()
    name = cat.name_of(kind, path)
    if name is None:
        other = "suite" if kind == "protocol" else "protocol"
        raise ClipbenchError(f"{ref} is a {other} file; pass it with --{other}")
    return name


def protocol_ref(ref: str) -> str:
    """A protocol name as given, or the name of the protocol in file `ref` (which joins the catalog)."""
    return _named_file(ref, "protocol") if looks_like_file(ref) else ref


def suite_ref(ref: str) -> str:
    """A suite name as given, or the name of the suite in file `ref` (which joins the catalog)."""
    return _named_file(ref, "suite") if looks_like_file(ref) else ref


def protocol_file(name: str) -> Optional[Path]:
    """The file a protocol was read from (None for one registered in code)."""
    return _catalog().files.get(("protocol", name))


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
