"""The `mtil` builder: one experience per dataset, as ZSCL's multi-domain task-incremental learning (MTIL) and the
protocols derived from it: few-shot MTIL (`train_per_class`), MTIL without task identity (`kind:
class_incremental`) and RAIL's X-TAIL (`kind: class_incremental`, `scoring: all`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Literal, Optional, Tuple

import numpy as np

from clipbench.errors import ClipbenchError
from clipbench.streams import KINDS, SCORINGS, LabelledImages, Streams

from ..catalog import register_assets, register_builder
from ..values import UniqueNames
from .dataset_specs import (DEFAULT_TEMPLATES, HeldoutParams, Spec, asset_report, heldout_sets, heldout_specs, load_labelled, subsample)


@dataclass
class MtilParams(HeldoutParams):
    """The `mtil` builder's parameters (a protocol file's `params:`); the builder reads the mapping."""

    REQUIRED: ClassVar[Tuple[str, ...]] = ("order", "datasets")
    order: UniqueNames = field(default_factory=list)  # dataset names, in task order
    datasets: Dict[str, Spec] = field(default_factory=dict)  # name -> labelled dataset spec (+ templates)
    kind: Literal["task_incremental", "class_incremental"] = "task_incremental"  # class_incremental: over every class seen
    scoring: Literal["", "all"] = ""  # "all": over every class of every dataset, seen or not, in every row

    @staticmethod
    def check(params: Dict[str, Any]) -> Optional[Tuple[str, str]]:
        """(key, problem) of values that do not fit together (None: fine): every task of `order` is a dataset."""
        unknown = [n for n in params.get("order") or [] if n not in (params.get("datasets") or {})]
        if unknown:
            return "order", (f"task {unknown[0]!r} is not one of the datasets ({', '.join(map(str, params.get('datasets') or {}))}); "
                             "name each task by its key under datasets:")
        return None


# version 3: an image folder's hidden and image-less sub-folders are no classes, hidden files no images
@register_builder("mtil", version=3, params=MtilParams)
def build_mtil(params: Dict[str, Any], data_root: Optional[str], seed: int) -> Streams:
    """ZSCL's multi-domain task-incremental learning: one task per dataset, in `order`, each trained
    and scored over its own classes with its own templates (a dataset's classes use that dataset's
    `templates`; training uses the first). params: datasets (name -> spec with templates), order
    (names), train_per_class / test_per_class (a fixed draw per class, `subsample_seed`, default 0),
    kind (default task_incremental: each dataset scored over its own classes; class_incremental: over
    every class seen so far), scoring ("all": over every class of every dataset, seen or not, in every row)."""
    if params.get("scoring", "") not in SCORINGS or params.get("kind", "task_incremental") not in KINDS:
        raise ClipbenchError(f"mtil builder: kind must be one of {', '.join(KINDS)} and scoring one of "
                             f"{', '.join(repr(s) for s in SCORINGS)}; got {params.get('kind')!r}, {params.get('scoring')!r}")
    rng = np.random.default_rng(int(params.get("subsample_seed", 0)))
    train, test, class_names, exp_classes, class_templates = [], [], [], [], []
    for name in params["order"]:
        spec = params["datasets"][name]
        tr, names = load_labelled(spec, "train", data_root, f"datasets.{name}")
        te, _ = load_labelled(spec, "test", data_root, f"datasets.{name}")
        tr, te = subsample(tr, params.get("train_per_class"), rng), subsample(te, params.get("test_per_class"), rng)
        offset = len(class_names)
        train.append(LabelledImages(tr.images, tr.labels + offset))
        test.append(LabelledImages(te.images, te.labels + offset))
        exp_classes.append(list(range(offset, offset + len(names))))
        class_names += names
        class_templates += [list(spec.get("templates", DEFAULT_TEMPLATES))] * len(names)
    return Streams(kind=params.get("kind", "task_incremental"), class_names=class_names, templates=class_templates[0],
                   train=train, test=test, experience_classes=exp_classes, class_templates=class_templates,
                   scoring=params.get("scoring", ""), **heldout_sets(params, data_root))


@register_assets("mtil")
def mtil_assets(params: Dict[str, Any], data_root: Optional[str]) -> List[Dict[str, Any]]:
    return asset_report([(f"task {n}", params["datasets"][n]) for n in params["order"]] + heldout_specs(params), data_root)
