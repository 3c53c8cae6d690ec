"""Run specs: frozen, fully resolved descriptions of one run, identified by a hash of their JSON.

Settings are layered, later wins: clipbench defaults < method and protocol defaults < suite file
(its train/eval, then its `settings:`) < `--config` file < `--set key=value`; then, with `recipe:
reference`, a method's recipe from the suite's `recipes:` replaces its training settings
(`clipbench.recipes`); last, a method's own training settings (`methods.<name>.train.<key>`, from any
layer) replace the general ones for that method. Every key a user sets must already exist in that tree (a typo fails with a did-you-mean
instead of being silently ignored).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Literal, Optional, Sequence, Tuple

from .augment import RECIPES
from .errors import ClipbenchError
from .schedules import SCHEDULES
from .models import weights_fingerprint
from .recipes import apply_recipe, check_per_experience, is_per_experience_key, nameable_experiences
from .types import field_types, problem
from .yamlio import deep_merge, load_yaml_marked, parse_scalar

if TYPE_CHECKING:  # only named in annotations: the catalog reads this module's DEFAULTS
    from clipbench.protocols.catalog import ProtocolDef, SuiteDef

DEFAULTS: Dict[str, Any] = {
    "model": {"arch": None, "pretrained": None},
    # Training settings (docs/settings.md, "Training settings"); every one is checked by `validate_train`.
    "train": {
        "epochs": 1, "batch_size": 32, "lr": 1e-5, "weight_decay": 0.0,
        "optimizer": "adamw", "momentum": 0.9,  # adamw | adam | sgd (momentum: SGD only)
        "ce_classes": "seen",  # seen (every class so far) or current (each sample over its own experience's classes)
        "schedule": "constant",  # constant | step (StepLR, as CL-CLIP) | cosine (as ZSCL's cosine_lr)
        "warmup_steps": 0,  # linear warm-up over the first steps of each experience (ZSCL: 100)
        "step_size": 10, "step_gamma": 0.1,  # schedule step: lr x gamma every step_size epochs
        "label_smoothing": 0.0,  # of the cross-entropy (ZSCL: 0.2)
        "grad_clip": 0.0,  # max norm of the trainable parameters' gradient; 0 = off
        "augment": "none",  # train-time augmentation recipe: none | clclip | zscl (clipbench.augment)
        "iterations": 0,  # 0 = train `epochs` epochs; > 0 = exactly this many steps per experience
    },
    "eval": {"batch_size": 256},
    # cuts every run short, over every method's own recipe (`limit.steps`: at most this many training steps per
    # experience and per method-internal loop; 0 = no limit): for smoke checks; recorded in the spec
    "limit": {"steps": 0},
    "precision": "fp32",  # fp32 everywhere; amp_bf16 autocasts evaluation and training on a GPU
    "data_root": None,
    "recipe": "shared",  # shared (the suite's recipe for every method) | reference (clipbench.recipes)
    "methods": {},  # per method: overrides of its Config fields
    "protocols": {},  # per protocol: overrides of its builder params
}


OPTIMIZERS = ("adamw", "adam", "sgd")
CE_CLASSES = ("seen", "current")


def _integer(low: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def _number(ok: Callable[[float], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and ok(v)


def _one_of(names: Sequence[str]) -> Tuple[Callable[[Any], bool], str]:
    return (lambda v: v in names), "one of " + ", ".join(names)


# key -> (check, what is allowed): every train setting, checked before anything runs
TRAIN_RULES: Dict[str, Tuple[Callable[[Any], bool], str]] = {
    "epochs": (_integer(1), "an integer >= 1"),
    "batch_size": (_integer(1), "an integer >= 1"),
    "iterations": (_integer(0), "an integer >= 0 (0: train `epochs` epochs)"),
    "lr": (_number(lambda x: x > 0), "a number > 0"),
    "weight_decay": (_number(lambda x: x >= 0), "a number >= 0"),
    "optimizer": _one_of(OPTIMIZERS),
    "momentum": (_number(lambda x: 0 <= x < 1), "a number in [0, 1)"),
    "ce_classes": _one_of(CE_CLASSES),
    "schedule": _one_of(SCHEDULES),
    "warmup_steps": (_integer(0), "an integer >= 0"),
    "step_size": (_integer(1), "an integer >= 1 (epochs)"),
    "step_gamma": (_number(lambda x: 0 < x <= 1), "a number in (0, 1]"),
    "label_smoothing": (_number(lambda x: 0 <= x < 1), "a number in [0, 1)"),
    "grad_clip": (_number(lambda x: x >= 0), "a number >= 0 (0: off)"),
    "augment": _one_of(tuple(RECIPES)),
}


def validate_train(train: Dict[str, Any], eval_settings: Dict[str, Any]) -> None:
    """Check every resolved train setting (and the evaluation batch size): one ClipbenchError line
    naming the key, the value and what is allowed. Keys outside `TRAIN_RULES` (a typo in a suite
    file or a method's `train_defaults`) fail too."""
    unknown = sorted(set(train) - set(TRAIN_RULES) - {"per_experience"})  # per_experience: clipbench.recipes
    if unknown:
        raise ClipbenchError(f"unknown setting 'train.{unknown[0]}' (in a suite, protocol or method's train defaults); "
                             f"known: {', '.join(sorted(TRAIN_RULES))}")
    checks = [(f"train.{k}", train[k], *TRAIN_RULES[k]) for k in TRAIN_RULES]
    checks.append(("eval.batch_size", eval_settings.get("batch_size"), _integer(1), "an integer >= 1"))
    for key, value, ok, allowed in checks:
        if not ok(value):
            raise ClipbenchError(f"{key}={value!r} is not allowed: expected {allowed}")


def validate_seeds(seeds: Sequence[Any], source: str) -> None:
    """Seeds are integers >= 0 (a builder seeding numpy with a negative one would fail mid-run): one
    ClipbenchError line naming the seed and where it came from."""
    for seed in seeds:
        if not _integer(0)(seed):
            raise ClipbenchError(f"seed {seed!r} in {source} is not allowed: expected an integer >= 0")


@dataclass(frozen=True)
class RunSpec:
    """One run: method x protocol x model x seed with every setting resolved. Never mutated."""

    suite: str
    method: str
    method_version: int
    method_config: Dict[str, Any]
    protocol: str
    protocol_version: int
    protocol_kind: str
    protocol_params: Dict[str, Any]
    model: Dict[str, Any]  # arch, pretrained, weights (fingerprint)
    seed: int
    train: Dict[str, Any]
    eval: Dict[str, Any]
    precision: str
    data_root: Optional[str] = field(default=None, compare=False)  # where data lives, not what it is
    # what the data is: per dataset the protocol reads, a fingerprint of its files (relative paths,
    # sizes, modification times); and the versions of the code that turns those files into numbers
    data: Dict[str, str] = field(default_factory=dict)
    code: Dict[str, Any] = field(default_factory=dict)
    # which recipe it trains with (mode, source, the file it comes from: clipbench.recipes); in the record,
    # not in the id: the settings it names are `train` and `eval`, which the id hashes
    recipe: Dict[str, Any] = field(default_factory=dict, compare=False)
    # `limit.steps` when set (a run cut short: its numbers differ); absent from the JSON otherwise, so the
    # ids of ordinary runs are what they were before the setting existed
    limit: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d.pop("data_root")
        if not d["limit"]:
            d.pop("limit")
        return d

    def portable_dict(self) -> Dict[str, Any]:
        """`to_dict` with the data root too: what another process (a worker, a Slurm or Ray task) needs to
        rebuild the spec with `from_dict`."""
        return {**self.to_dict(), "data_root": self.data_root}

    def canonical_json(self) -> str:
        d = self.to_dict()
        d.pop("recipe")
        return json.dumps(d, sort_keys=True, separators=(",", ":"), default=str)

    @property
    def id(self) -> str:
        """First 12 hex digits of sha256 over the canonical JSON (data_root and the recipe's label excluded;
        the resolved settings, the data's fingerprint and the code versions included)."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:12]

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "RunSpec":
        return cls(**d)


def _leaf_items(tree: Dict[str, Any], prefix: str = "") -> List[Tuple[str, Any]]:
    items: List[Tuple[str, Any]] = []
    for k, v in tree.items():
        path = f"{prefix}{k}"
        items.extend(_leaf_items(v, path + ".") if isinstance(v, dict) and v else [(path, v)])
    return items


def _leaf_keys(tree: Dict[str, Any], prefix: str = "") -> List[str]:
    return [k for k, _ in _leaf_items(tree, prefix)]


def _check_known(key: str, known: Sequence[str], source: str, value: Any = None, at: str = "") -> None:
    """`key` is a known setting and, when `known` maps keys to types, `value` is of its type. `at` (file:line)
    starts the error line when given."""
    where = f"{at}: " if at else ""
    if is_per_experience_key(key, list(TRAIN_RULES)):  # train.per_experience.<experience>.<setting>: checked when resolved
        return
    if key not in known:
        close = difflib.get_close_matches(key, known, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ClipbenchError(f"{where}unknown setting '{key}' in {source}.{hint} Known settings: {', '.join(sorted(known))}")
    found = problem(value, known[key]) if isinstance(known, dict) else None
    if found:
        raise ClipbenchError(f"{where}{key}={value!r} in {source} is not allowed: {found}")


def _set_dotted(tree: Dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


# the types of the settings outside train (train values are checked by `validate_train`)
SETTING_TYPES: Dict[str, Any] = {"model.arch": str, "model.pretrained": Optional[str], "eval.batch_size": int,
                                 "precision": Literal["fp32", "amp_bf16"], "data_root": Optional[str],
                                 "recipe": Literal["shared", "reference"], "limit.steps": int}


def known_settings(method_configs: Dict[str, type], protocols: Dict[str, ProtocolDef]) -> Dict[str, Any]:
    """Every key `--set` and `--config` accept, with its type (`Any`: checked later, or unchecked): a
    method's `Config` fields, a protocol's builder `params` (its declared ones, else those of its file)."""
    keys: Dict[str, Any] = {k: SETTING_TYPES.get(k, Any) for k in _leaf_keys(DEFAULTS)
                            if not k.startswith(("methods", "protocols"))}
    keys.update({f"methods.{m}.{f}": t for m, config in method_configs.items() for f, t in field_types(config).items()})
    # a method's own training settings, over the general ones (a suite giving one method its reference's recipe)
    keys.update({f"methods.{m}.train.{k}": Any for m in method_configs for k in DEFAULTS["train"]})
    for p, d in protocols.items():
        declared = d.builder_params()
        keys.update({f"protocols.{p}.{k}": t for k, t in (field_types(declared) if declared else
                                                          {k: Any for k in d.params}).items()})
    return keys


def dotted_tree(items: Dict[str, Any], known: Optional[Dict[str, Any]], source: str,
                lines: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """A settings tree from `{dotted key: value}`, each key and value checked against `known` (None:
    unchecked); `lines` gives a key's file:line for the error."""
    tree: Dict[str, Any] = {}
    for key, value in items.items():
        if known is not None:
            _check_known(key, known, source, value, (lines or {}).get(key, ""))
        _set_dotted(tree, key, value)
    return tree


def _has_dotted(tree: Dict[str, Any], key: str) -> bool:
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def user_overrides(config_file: Optional[str], sets: Sequence[str], known: Sequence[str]) -> Dict[str, Any]:
    """The `--config` file merged with `--set key=value` pairs, every key checked against `known`."""
    tree: Dict[str, Any] = {}
    if config_file:
        doc, marks = load_yaml_marked(config_file)
        doc = doc or {}
        if not isinstance(doc, dict):
            raise ClipbenchError(f"{config_file}: expected a mapping of settings at the top level")
        # a key may be nested (`train: {lr: 0.5}`) or dotted (`train.lr: 0.5`, as in --set): both are applied
        lines = {".".join(path): line for path, line in marks.items()}
        for key, value in _leaf_items(doc):
            at = f"{config_file}:{lines[key]}" if key in lines else ""
            _check_known(key, known, config_file, value, at)
            rule = TRAIN_RULES.get(key.rpartition(".")[2]) if key.startswith("train.") or ".train." in key else None
            if rule and not rule[0](value):  # named with its file and line (the planner checks every layer again)
                raise ClipbenchError(f"{at or config_file}: {key}={value!r} is not allowed: expected {rule[1]}")
            if _has_dotted(tree, key):
                raise ClipbenchError(f"{at or config_file}: setting '{key}' is given twice (nested and dotted); keep one")
            _set_dotted(tree, key, value)
    for item in sets:
        if "=" not in item:
            raise ClipbenchError(f"--set expects key=value, got '{item}'")
        key, raw = item.split("=", 1)
        value = parse_scalar(raw)
        _check_known(key.strip(), known, "--set", value)
        _set_dotted(tree, key.strip(), value)
    return tree


def code_versions(protocol: ProtocolDef) -> Dict[str, Any]:
    """The versions of the code between a protocol's files and a run's numbers, beyond the method's and the
    protocol's own: the builder, the image preprocessing and the evaluation."""
    from .evaluate import EVALUATION_VERSION
    from .preprocess import PREPROCESS_VERSION

    return {"builder": f"{protocol.builder}:{protocol.builder_version()}", "preprocess": PREPROCESS_VERSION,
            "evaluation": EVALUATION_VERSION}


def resolve_specs(suite: SuiteDef, method_cls: Any, protocol: ProtocolDef, seeds: Sequence[int],
                  overrides: Dict[str, Any], strict_weights: bool = True,
                  fingerprints: Optional[Dict[str, str]] = None) -> List[RunSpec]:
    """The specs of one method x protocol over `seeds`, with every layer applied.

    With `strict_weights` False (dry runs), unavailable weights do not stop planning: the spec's
    weights read "unavailable: <why>". `fingerprints` memoises the data fingerprints over a plan.
    """
    settings = deep_merge(DEFAULTS, {"train": getattr(method_cls, "train_defaults", {})})
    settings = deep_merge(settings, {"train": protocol.train})
    settings = deep_merge(settings, {"model": suite.model, "train": suite.train, "eval": suite.eval,
                                     "data_root": suite.data_root, "recipe": suite.recipe})
    suite_settings = dotted_tree(suite.settings, None, "")  # checked by the planner
    settings = deep_merge(settings, suite_settings)
    settings = deep_merge(settings, overrides)
    recipe = apply_recipe(settings, suite, method_cls, protocol, overrides, suite_settings, DEFAULTS["train"])
    own = dict(settings["methods"].get(method_cls.name, {}))
    settings["train"] = deep_merge(settings["train"], own.pop("train", {}))  # `methods.<name>.train.<key>`
    validate_train(settings["train"], settings["eval"])
    limit = {k: v for k, v in settings["limit"].items() if v}
    if not _integer(0)(settings["limit"]["steps"]):
        raise ClipbenchError(f"limit.steps={settings['limit']['steps']!r} is not allowed: expected an integer >= 0 (0: no limit)")
    model = settings["model"]
    if not model.get("arch"):
        raise ClipbenchError(f"suite '{suite.name}' names no model.arch")
    try:
        fingerprint = weights_fingerprint(model["arch"], model.get("pretrained"))
    except ClipbenchError as err:
        if strict_weights:
            raise
        fingerprint = f"unavailable: {err}"
    config_values = deep_merge(method_cls.config_fields(), own)
    config = method_cls.Config(**config_values)  # validates (e.g. `part`)
    params = deep_merge(protocol.params, settings["protocols"].get(protocol.name, {}))
    if params != protocol.params:  # a dataset spec set by the suite's settings, --config or --set
        protocol.check_dataset_specs(params, "the suite's settings, --config or --set")
    check_per_experience(settings["train"], nameable_experiences(protocol, params), protocol.name, TRAIN_RULES)
    data = protocol.data_fingerprint(settings["data_root"], params, fingerprints)
    code = code_versions(protocol)
    return [
        RunSpec(
            suite=suite.name, method=method_cls.name, method_version=method_cls.version,
            method_config=asdict(config), protocol=protocol.name, protocol_version=protocol.version,
            protocol_kind=protocol.kind, protocol_params=params,
            model={"arch": model["arch"], "pretrained": model.get("pretrained"), "weights": fingerprint},
            seed=int(seed), train=settings["train"], eval=settings["eval"], precision=settings["precision"],
            data_root=settings["data_root"], data=data, code=code, recipe=recipe, limit=limit,
        )
        for seed in seeds
    ]
