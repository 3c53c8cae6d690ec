"""The `datasets` builder: a class- or task-incremental stream over one real dataset, described in its YAML."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Optional, Tuple

import numpy as np

from clipbench.streams import Streams

from ..catalog import register_assets, register_builder
from .dataset_specs import (DEFAULT_TEMPLATES, HeldoutParams, Spec, asset_report, experience_sizes, heldout_sets, heldout_specs, load_labelled, split_by_class, subsample)


@dataclass
class DatasetsParams(HeldoutParams):
    """The `datasets` builder's parameters (a protocol file's `params:`); the builder reads the mapping."""

    REQUIRED: ClassVar[Tuple[str, ...]] = ("target",)
    target: Spec = field(default_factory=dict)  # the labelled dataset split into experiences
    class_order: Optional[List[int]] = None  # class ids in learning order (default: natural)
    n_experiences: int = 1  # equal parts, unless `increments` or `increment` is given
    increments: Optional[List[int]] = None  # classes of each experience
    increment: Optional[int] = None  # classes of each experience after the `initial` one
    initial: Optional[int] = None
    templates: List[str] = field(default_factory=lambda: list(DEFAULT_TEMPLATES))
    train_template: str = ""
    kind: str = "class_incremental"


@register_builder("datasets", version=2, params=DatasetsParams)
def build_datasets(params: Dict[str, Any], data_root: Optional[str], seed: int) -> Streams:
    """A class- or task-incremental stream over one target dataset, with held-out sets.

    params: target (spec), class_order (ids, default natural), n_experiences | increment(s),
    train_per_class / test_per_class (subsample, fixed by subsample_seed), templates,
    train_template, kind, zeroshot / retrieval (named specs), reference (spec).
    Images are listed here and decoded by the runner with the model's own preprocessing.
    """
    target = params["target"]
    rng = np.random.default_rng(int(params.get("subsample_seed", 0)))
    train, names = load_labelled(target, "train", data_root)
    test, _ = load_labelled(target, "test", data_root)
    train = subsample(train, params.get("train_per_class"), rng)
    test = subsample(test, params.get("test_per_class"), rng)
    order = [int(c) for c in params.get("class_order") or range(len(names))]
    sizes = experience_sizes(len(order), params)
    bounds = np.cumsum([0] + sizes).tolist()
    return Streams(
        kind=params.get("kind", "class_incremental"),
        class_names=[names[c] for c in order],
        templates=list(params.get("templates", DEFAULT_TEMPLATES)),
        train_template=params.get("train_template", ""),
        train=split_by_class(train, order, sizes), test=split_by_class(test, order, sizes),
        experience_classes=[list(range(bounds[k], bounds[k + 1])) for k in range(len(sizes))],
        **heldout_sets(params, data_root),
    )


@register_assets("datasets")
def datasets_assets(params: Dict[str, Any], data_root: Optional[str]) -> List[Dict[str, Any]]:
    return asset_report([("target", params["target"])] + heldout_specs(params), data_root)
