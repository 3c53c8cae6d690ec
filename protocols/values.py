"""Value rules of protocol files, declared next to what they check: a builder's `Params` fields and a dataset
format's keys are annotated `Annotated[type, Rule]` with the aliases below, so every protocol file, suite
setting, `--config` and `--set protocols.<name>.<param>` is checked the same way before anything runs (one
line naming the file, line and fix), and a new builder or format gets the same checks by using them.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Dict, List, Optional

from clipbench.streams import template_problem, templates_problem
from clipbench.types import Rule


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def at_least(low: int, why: str = "") -> Rule:
    """An integer >= `low`."""
    expects = f"an integer >= {low}" + (f" ({why})" if why else "")
    return Rule(expects, lambda v: None if _is_int(v) and v >= low else f"expected {expects}")


def _fraction(v: Any) -> Optional[str]:
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 < v < 1:
        return None
    return ("expected a number between 0 and 1, both excluded (the share of each class held out for testing, "
            "e.g. 0.2): 0 leaves no test images, 1 no train images")


def _sizes(v: Any) -> Optional[str]:
    if isinstance(v, (list, tuple)) and v and all(_is_int(x) and x >= 1 for x in v):
        return None
    return "expected a non-empty list of class counts, each an integer >= 1 (e.g. [2, 2, 2])"


def _class_ids(v: Any) -> Optional[str]:
    if not isinstance(v, (list, tuple)) or not v or not all(_is_int(x) and x >= 0 for x in v):
        return "expected a non-empty list of class ids, integers >= 0 (positions in the dataset's class list)"
    repeated = sorted({x for x in v if list(v).count(x) > 1})
    if repeated:
        return f"class id {repeated[0]} appears {list(v).count(repeated[0])} times; list each class once"
    return None


def _names(v: Any) -> Optional[str]:
    if isinstance(v, (list, tuple)) and v and len(set(v)) == len(v):
        return None
    repeated = next((x for x in v if list(v).count(x) > 1), None) if isinstance(v, (list, tuple)) else None
    return f"{repeated!r} appears twice; list each once" if repeated is not None else "expected a non-empty list"


def _random_split(v: Any) -> Optional[str]:
    if isinstance(v, dict) and set(v) == {"train", "seed"} and _fraction(v["train"]) is None and _is_int(v["seed"]) \
            and v["seed"] >= 0:
        return None
    return ("expected {train: a number between 0 and 1, both excluded, seed: an integer >= 0} (ZSCL's split: "
            "{train: 0.8, seed: 42})")


def equal_parts_problem(n_classes: int, n_experiences: int) -> Optional[str]:
    """Why `n_experiences` cannot split `n_classes` classes into equal parts (None: it can)."""
    if n_experiences >= 1 and n_classes % n_experiences == 0 and n_classes >= n_experiences:
        return None
    return (f"n_experiences {n_experiences} does not split the {n_classes} classes into equal parts: use a divisor of "
            f"{n_classes}")


PositiveInt = Annotated[int, at_least(1)]
Fraction = Annotated[float, Rule("a number between 0 and 1, both excluded", _fraction)]
Sizes = Annotated[List[int], Rule("a non-empty list of integers >= 1", _sizes)]
ClassIds = Annotated[List[int], Rule("a non-empty list of distinct integers >= 0", _class_ids)]
UniqueNames = Annotated[List[str], Rule("a non-empty list of distinct names", _names)]
Template = Annotated[str, Rule("a template with {c}, e.g. 'a photo of a {c}.'", template_problem)]
# "" (the default): each class's first template
TrainTemplate = Annotated[str, Rule("a template with {c}, or '' (each class's first template)",
                                    lambda v: None if v == "" else template_problem(v))]
Templates = Annotated[List[str], Rule("a non-empty list of templates, each with {c}", templates_problem)]
RandomSplit = Annotated[Dict[str, Any], Rule("{train: fraction, seed: integer >= 0}", _random_split)]
