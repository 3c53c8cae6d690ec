"""docs/methods.md's method x suite table of recipes (`recipe_table()`), from the suite files' `recipes:`
(`clipbench.recipes`); `tests/test_recipes.py` keeps docs/methods.md equal to it."""

from __future__ import annotations

from typing import Sequence

SUITE_ORDER = ("paper", "cil_cifar100", "cil_tinyimagenet", "mtil", "mtil_cil", "mtil_fewshot", "xtail")


def recipe_table(suites: Sequence[str] = SUITE_ORDER) -> str:
    """docs/methods.md's method x suite table under `recipe: reference`: which recipe each cell trains with (`own`:
    its authors' on this benchmark; `own*`: its authors' from another benchmark; `suite`: the suite's; `-`:
    no gradient training; blank: not run there), then where each suite's and each own recipe comes from."""
    from clipbench.methods.base import METHODS
    from clipbench.protocols.catalog import get_protocol, get_suite

    defs = [get_suite(s) for s in suites]
    rows, notes = [], []
    for name in METHODS.names():
        cls = METHODS.get(name)
        cells = []
        for suite in defs:
            kinds = {get_protocol(p).kind for p in suite.protocols}
            listed = suite.methods == "all" or name in suite.methods
            if not listed or not kinds & set(cls.supports):
                cells.append("")
            elif not cls.trains:
                cells.append("-")
            elif name in suite.recipes:
                cells.append("own" if suite.recipes[name].get("ran_here", True) else "own*")
            else:
                cells.append("suite")
        rows.append(f"| `{name}` | " + " | ".join(cells) + " |")
    for suite in defs:
        notes.append(f"- `{suite.name}` (`recipe: {suite.recipe}`), its recipe: {suite.train_source}")
        for name, entry in suite.recipes.items():
            own = "its own" if entry.get("train") else "the suite's, which is its own"
            notes.append(f"  - `{name}`: {own}, {entry['source']}")
    header = "| method | " + " | ".join(f"`{s.name}`" for s in defs) + " |"
    return "\n".join([header, "|---|" + "---|" * len(defs), *rows, "", *notes]) + "\n"
