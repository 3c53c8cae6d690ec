"""`clipbench new method NAME`: write a small, working method file to start from."""

from __future__ import annotations

import keyword
import re
from pathlib import Path

from .errors import ClipbenchError

TEMPLATE = '''"""{title}: describe the method and cite its paper here."""

from dataclasses import dataclass

from clipbench.methods.base import MethodConfig, WithTeacher, register_method


@dataclass
class {cls}Config(MethodConfig):
    alpha: float = 1.0  # weight of the extra loss term; every field can be set with --set methods.{name}.alpha=...


@register_method
class {cls}(WithTeacher):
    """An L2 pull towards the model as it was before the current experience (a starting point:
    replace `loss` with your method). Say here where it departs from its paper."""

    name = "{name}"
    version = 1  # bump whenever this method's numbers could change
    Config = {cls}Config

    def loss(self, strategy):
        # the engine adds what this returns to the cross-entropy; never write strategy.loss yourself
        model = strategy.model
        params = dict(model.named_parameters())
        return self.config.alpha * sum(((params[n] - old) ** 2).sum() for n, old in self.teacher.items())
'''


def new_method(name: str, folder: Path) -> Path:
    """Write `<folder>/<name>.py` holding a registered method called `name`."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name) or keyword.iskeyword(name):
        raise ClipbenchError(f"method name '{name}' must be lowercase snake_case (letters, digits, _)")
    path = folder / f"{name}.py"
    if path.exists():
        raise ClipbenchError(f"{path} already exists; choose another name or edit that file")
    cls = "".join(part.capitalize() for part in name.split("_"))
    title = name.replace("_", " ")
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(TEMPLATE.format(name=name, cls=cls, title=title))
    return path
