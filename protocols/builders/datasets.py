"""The `datasets` builder: a class- or task-incremental stream over one real dataset, described in its YAML."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Literal, Optional, Tuple

import numpy as np

from clipbench.errors import BadValue, ClipbenchError
from clipbench.streams import Streams, duplicate_classes_error, same_prompts

from ..catalog import register_assets, register_builder
from ..values import ClassIds, PositiveInt, Sizes, Templates, TrainTemplate
from .dataset_specs import (DEFAULT_TEMPLATES, HeldoutParams, Spec, asset_report, experience_sizes, experience_sizes_problem, heldout_sets, heldout_specs, load_labelled, split_by_class, subsample)


@dataclass
class DatasetsParams(HeldoutParams):
    """The `datasets` builder's parameters (a protocol file's `params:`); the builder reads the mapping."""

    REQUIRED: ClassVar[Tuple[str, ...]] = ("target",)
    target: Spec = field(default_factory=dict)  # the labelled dataset split into experiences
    class_order: Optional[ClassIds] = None  # class ids in learning order (default: natural)
    n_experiences: PositiveInt = 1  # equal parts, unless `increments` or `increment` is given
    increments: Optional[Sizes] = None  # classes of each experience
    increment: Optional[PositiveInt] = None  # classes of each experience after the `initial` one
    initial: Optional[PositiveInt] = None
    templates: Templates = field(default_factory=lambda: list(DEFAULT_TEMPLATES))
    train_template: TrainTemplate = ""
    kind: Literal["class_incremental", "task_incremental"] = "class_incremental"

    @staticmethod
    def check(params: Dict[str, Any]) -> Optional[Tuple[str, str]]:
        """(key, problem) of values that do not fit together, known before any file is read (None: fine)."""
        if params.get("initial") is not None and params.get("increment") is None:
            return "initial", "initial is the first experience's class count before `increment`; give increment too"
        if params.get("class_order"):
            problem = experience_sizes_problem(len(params["class_order"]), params, "class_order lists")
            if problem:
                return ("increments" if "increments" in params else "increment" if "increment" in params
                        else "n_experiences"), problem
        return None


# version 3: an image folder's hidden and image-less sub-folders are no classes, hidden files no images
@register_builder("datasets", version=3, params=DatasetsParams)
def build_datasets(params: Dict[str, Any], data_root: Optional[str], seed: int) -> Streams:
    """A class- or task-incremental stream over one target dataset, with held-out sets.

    params: target (spec), class_order (ids, default natural), n_experiences | increment(s),
    train_per_class / test_per_class (subsample, fixed by subsample_seed), templates,
    train_template, kind, zeroshot / retrieval (named specs), reference (spec).
    Images are listed here and decoded by the runner with the model's own preprocessing.
    """
    target = params["target"]
    rng = np.random.default_rng(int(params.get("subsample_seed", 0)))
    train, names = load_labelled(target, "train", data_root, "target")
    test, _ = load_labelled(target, "test", data_root, "target")
    train = subsample(train, params.get("train_per_class"), rng)
    test = subsample(test, params.get("test_per_class"), rng)
    order = [int(c) for c in params.get("class_order") or range(len(names))]
    unknown = [c for c in order if c >= len(names)]
    if unknown:
        raise BadValue("class_order", f"class id {unknown[0]} is not a class of the target, which has {len(names)} "
                       f"classes (ids 0 to {len(names) - 1})")
    sizes = experience_sizes(len(order), params, "class_order lists" if params.get("class_order") else "the target has")
    bounds = np.cumsum([0] + sizes).tolist()
    class_names, templates = [names[c] for c in order], list(params.get("templates", DEFAULT_TEMPLATES))
    same = same_prompts(class_names, [templates] * len(class_names))
    if same:
        raise ClipbenchError(duplicate_classes_error("the target", same))
    return Streams(
        kind=params.get("kind", "class_incremental"),
        class_names=class_names,
        templates=templates,
        train_template=params.get("train_template", ""),
        train=split_by_class(train, order, sizes), test=split_by_class(test, order, sizes),
        experience_classes=[list(range(bounds[k], bounds[k + 1])) for k in range(len(sizes))],
        **heldout_sets(params, data_root),
    )


@register_assets("datasets")
def datasets_assets(params: Dict[str, Any], data_root: Optional[str]) -> List[Dict[str, Any]]:
    return asset_report([("target", params["target"])] + heldout_specs(params), data_root)
