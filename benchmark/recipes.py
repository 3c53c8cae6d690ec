"""Training recipes: which settings each method trains with on a suite, and per experience.

Two modes, the setting `recipe` (a suite's `recipe:`, `--set recipe=shared|reference`):

- `shared`: every method trains with the suite's recipe (its `train:`/`eval:` over the methods' own
  `train_defaults`, then its `settings:`), for a controlled comparison. The default on `mini`, `tiny`
  and any suite file that does not say otherwise.
- `reference`: each method trains as its own authors' code trained it on that benchmark. A suite's
  `recipes:` section holds those recipes, one entry per method, each citing the files it comes from:

  ```yaml
  recipes:
    diki:
      source: lloongx/DIKI@8ef89e7 configs/MTIL.yaml (optim), DIKI/DIKI.py train_one_task
      train: {optimizer: sgd, lr: 5.0, momentum: 0.0, batch_size: 128, epochs: 10, schedule: cosine}
      eval: {batch_size: 256}                 # optional
      protocols:                              # optional, per protocol, over the above
        mtil_order2: {train: {per_experience: {Food: {epochs: 2}}}}
      ran_here: false                         # optional: the authors never ran this benchmark (below)
  ```

  An entry with `train:` replaces the suite's recipe entirely (clipbench's defaults, the protocol's
  `train:`, then the entry): nothing of the suite's `train:` leaks into it. An entry without `train:`
  says the suite's recipe is this method's own (the suite's reference code ran it: ZSCL's baselines on
  `mtil`). A method without an entry trains with the suite's recipe, recorded as such (source `suite`).
  `ran_here: false` marks a method whose authors never ran this benchmark but whose code trains with one
  recipe on every benchmark it ran (source `method`).

Every run spec names its recipe (`RunSpec.recipe`: mode, source, and the file it comes from); the
resolved settings themselves are in its `train` and `eval`, which the run id hashes.

Per experience: `train.per_experience` maps an experience, by dataset name (the `mtil` builder's
`order`) or index (0-based), to train settings over the run's for that experience only (ZSCL's MTIL
learning rate of 5e-5 for Aircraft and MNIST). Checked up front (`check_per_experience`), applied by the
engine (`experience_train`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

from .errors import ClipbenchError
from .yamlio import deep_merge

if TYPE_CHECKING:
    from clipbench.protocols.catalog import ProtocolDef, SuiteDef

MODES = ("shared", "reference")
PER_EXPERIENCE = "per_experience"
ENTRY_KEYS = ("source", "train", "eval", "protocols", "ran_here", "note")

# the recipe source a spec records
SOURCE_REFERENCE = "reference"  # the method's authors' code on this benchmark
SOURCE_METHOD = "method"  # the method's own recipe, from another benchmark its authors ran
SOURCE_SUITE = "suite"  # the suite's recipe (shared mode, or authors who never ran the benchmark)
SOURCE_NONE = "none"  # the method does not train by gradient


def check_entries(recipes: Any, where: str) -> Dict[str, Dict[str, Any]]:
    """A suite file's `recipes:` section, its shape checked (method names and train keys are checked by
    the planner, against the registry and the train rules): one line naming the place on a mistake."""
    from clipbench.types import unknown_key

    if recipes is None:
        return {}
    if not isinstance(recipes, dict):
        raise ClipbenchError(f"{where}: `recipes:` maps method names to recipes (source:, train:, eval:)")
    out: Dict[str, Dict[str, Any]] = {}
    for method, entry in recipes.items():
        if not isinstance(entry, dict):
            raise ClipbenchError(f"{where}: recipes.{method}: expected a mapping with source: and train:")
        for key in entry:
            if key not in ENTRY_KEYS:
                raise unknown_key(str(key), ENTRY_KEYS, f"the recipe of '{method}'", where)
        if not isinstance(entry.get("source"), str) or not entry["source"].strip():
            raise ClipbenchError(f"{where}: recipes.{method}: `source:` must cite the file(s) it comes from")
        for key in ("train", "eval"):
            if not isinstance(entry.get(key, {}), dict):
                raise ClipbenchError(f"{where}: recipes.{method}.{key}: expected a mapping of settings")
        for protocol, part in (entry.get("protocols") or {}).items():
            if not isinstance(part, dict) or set(part) - {"train", "eval"}:
                raise ClipbenchError(f"{where}: recipes.{method}.protocols.{protocol}: expected train: and/or eval:")
        out[str(method)] = dict(entry)
    return out


def apply_recipe(settings: Dict[str, Any], suite: "SuiteDef", method_cls: Any, protocol: "ProtocolDef",
                 overrides: Dict[str, Any], suite_settings: Dict[str, Any],
                 default_train: Dict[str, Any]) -> Dict[str, Any]:
    """Put the method's recipe into `settings` (train and eval, as layered by `resolve_specs` for the shared
    mode) and return what the spec records of it: mode, source, and where it comes from.

    In reference mode, an entry with its own `train:` replaces the suite's: train = clipbench defaults <
    protocol `train:` < entry < entry's protocol part < the suite's general `settings:` < `--config`/`--set`
    (eval likewise, over the suite's eval). A method's own `methods.<name>.train.<key>` still applies after.
    `default_train`: clipbench's train defaults (`clipbench.spec.DEFAULTS["train"]`).
    """
    mode = settings.get("recipe", "shared")
    if mode not in MODES:
        raise ClipbenchError(f"recipe={mode!r} is not allowed: expected one of {', '.join(MODES)}")
    suite_from = f"suite {suite.name}: " + (suite.train_source or f"its `train:` ({Path(suite.source).name or suite.name})")
    if not getattr(method_cls, "trains", True):
        return {"mode": mode, "source": SOURCE_NONE, "from": f"{method_cls.name} does not train by gradient"}
    entry = suite.recipes.get(method_cls.name) if mode == "reference" else None
    if entry is None:
        return {"mode": mode, "source": SOURCE_SUITE, "from": suite_from}
    source = SOURCE_REFERENCE if entry.get("ran_here", True) else SOURCE_METHOD
    if "train" in entry or "eval" in entry or entry.get("protocols"):
        part = (entry.get("protocols") or {}).get(protocol.name, {})
        if "train" in entry or "train" in part:
            train = deep_merge(default_train, protocol.train)
            for layer in (entry.get("train") or {}, part.get("train") or {}, suite_settings.get("train") or {},
                          overrides.get("train") or {}):
                train = deep_merge(train, layer)
            settings["train"] = train
        evaluation = settings["eval"]
        for layer in (entry.get("eval") or {}, part.get("eval") or {}, suite_settings.get("eval") or {},
                      overrides.get("eval") or {}):
            evaluation = deep_merge(evaluation, layer)
        settings["eval"] = evaluation
    return {"mode": mode, "source": source, "from": entry["source"].strip()}


def experience_names(protocol: "ProtocolDef", params: Dict[str, Any]) -> Optional[List[str]]:
    """The experiences' names, where a protocol names them (the `mtil` builder: its datasets in `order`)."""
    order = params.get("order") if protocol.builder == "mtil" else None
    return [str(n) for n in order] if isinstance(order, list) else None


def nameable_experiences(protocol: "ProtocolDef", params: Dict[str, Any]) -> Optional[List[str]]:
    """The names `train.per_experience` may use: every dataset the protocol defines (the `mtil` builder), also
    those its `order` leaves out (a protocol cut to a few tasks, as the smoke grid's, keeps the suite's recipe)."""
    if protocol.builder != "mtil":
        return None
    datasets = params.get("datasets")
    return [str(n) for n in datasets] if isinstance(datasets, dict) else experience_names(protocol, params)


def check_per_experience(train: Dict[str, Any], names: Optional[Sequence[str]], protocol: str,
                         rules: Dict[str, Any]) -> None:
    """`train.per_experience` names experiences of the protocol (dataset names, or 0-based indices), and
    each holds train settings allowed per experience (`rules`: `clipbench.spec.TRAIN_RULES`): one
    ClipbenchError line otherwise."""
    per = train.get(PER_EXPERIENCE)
    if per is None:
        return
    if not isinstance(per, dict):
        raise ClipbenchError(f"train.per_experience={per!r} is not allowed: expected a mapping of experience "
                             "(dataset name or index) to train settings")
    for key, values in per.items():
        known = names is not None and str(key) in names
        number = _index(key)
        index = number is not None and (names is None or number < len(names))
        if not (known or index):
            what = f"its datasets: {', '.join(names)}, or an index below {len(names)}" if names else "a 0-based index"
            raise ClipbenchError(f"train.per_experience: unknown experience {key!r} of protocol '{protocol}'; "
                                 f"expected {what}")
        if not isinstance(values, dict) or not values:
            raise ClipbenchError(f"train.per_experience.{key}: expected a mapping of train settings, e.g. {{lr: 5.0e-5}}")
        for name, value in values.items():
            if name not in rules or name == PER_EXPERIENCE:
                raise ClipbenchError(f"unknown setting 'train.per_experience.{key}.{name}'; known: "
                                     f"{', '.join(sorted(rules))}")
            ok, allowed = rules[name]
            if not ok(value):
                raise ClipbenchError(f"train.per_experience.{key}.{name}={value!r} is not allowed: expected {allowed}")


def experience_train(train: Dict[str, Any], index: int, name: Optional[str] = None) -> Dict[str, Any]:
    """The train settings of experience `index` (named `name`): the run's, with its `per_experience` entry
    (by name, else by index) over them, without the `per_experience` table itself."""
    per = train.get(PER_EXPERIENCE) or {}
    own: Dict[str, Any] = {}
    for key, values in per.items():  # by name, else by index (an int, or its digits from --set or a record)
        if (name is not None and str(key) == name) or (not own and _index(key) == index):
            own = values
    return {**{k: v for k, v in train.items() if k != PER_EXPERIENCE}, **own}


def _index(key: Any) -> Optional[int]:
    """A 0-based experience index given as an int or as its digits (`--set`, a record's JSON), else None."""
    if isinstance(key, int) and not isinstance(key, bool):
        return key if key >= 0 else None
    return int(key) if isinstance(key, str) and key.isdigit() else None


def is_per_experience_key(key: str, train_keys: Sequence[str]) -> bool:
    """`train.per_experience.<experience>.<setting>` or `methods.<m>.train.per_experience.<experience>.<setting>`
    (a setting of `train_keys`): a dotted key `--set`, `--config` and a suite's `settings:` accept (the
    experience is checked later)."""
    parts = key.split(".")
    if parts[:1] == ["methods"] and len(parts) > 2:
        parts = parts[2:]
    return len(parts) == 4 and parts[:2] == ["train", PER_EXPERIENCE] and parts[3] in train_keys \
        and parts[3] != PER_EXPERIENCE


def check_suite_recipes(suite: "SuiteDef", methods: Sequence[str], protocols: Sequence[str],
                        defaults: Dict[str, Any]) -> None:
    """Every method a suite's `recipes:` names is registered, every protocol it names is one of the suite's,
    and every train and eval key is a known setting of `defaults` (`clipbench.spec.DEFAULTS`; values are
    checked when resolved)."""
    from clipbench.types import unknown_key

    DEFAULTS = defaults

    where = f"the `recipes:` of suite '{suite.name}' ({suite.source})"
    for method, entry in suite.recipes.items():
        if method not in methods:
            raise unknown_key(method, list(methods), "a method", where)
        parts = [("", entry)] + [(f"protocols.{p}.", part) for p, part in (entry.get("protocols") or {}).items()]
        for prefix, part in parts:
            if prefix and prefix.split(".")[1] not in protocols:
                raise unknown_key(prefix.split(".")[1], list(protocols), "a protocol of the suite", where)
            for section, known in (("train", list(DEFAULTS["train"]) + [PER_EXPERIENCE]), ("eval", list(DEFAULTS["eval"]))):
                for key in part.get(section) or {}:
                    if key not in known:
                        raise unknown_key(str(key), known, f"recipes.{method}.{prefix}{section}", where)

