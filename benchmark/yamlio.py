"""YAML reading with errors that name the file and line, and floats like `1e-3` read as floats."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, Tuple

import yaml

from .errors import ClipbenchError


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-3` as a float (PyYAML follows YAML 1.1, which needs `1.0e-3`)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def load_yaml_text(text: str, source: str) -> Any:
    """Parse YAML text; a syntax error becomes a ClipbenchError naming `source` and the line."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        raise ClipbenchError(f"malformed YAML in {where}: {err.problem or err}") from None
    except yaml.YAMLError as err:
        raise ClipbenchError(f"malformed YAML in {source}: {err}") from None


def load_yaml(path: str | Path) -> Any:
    """Read and parse a YAML file (see `load_yaml_text`)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ClipbenchError(f"cannot read {path}: {err.strerror}") from None
    return load_yaml_text(text, str(path))


Marks = Dict[Tuple[str, ...], int]  # key path in a document -> its 1-based line


def _marks(node: yaml.Node, path: Tuple[str, ...], out: Marks, source: str) -> None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            here = path + (str(key.value),)
            if here in out:  # YAML would keep the last silently
                raise ClipbenchError(f"{source}:{key.start_mark.line + 1}: key '{key.value}' appears twice "
                                     f"(first on line {out[here]}); keep one")
            out[here] = key.start_mark.line + 1
            _marks(value, here, out, source)


def load_yaml_marked(path: str | Path) -> Tuple[Any, Marks]:
    """A YAML file and the line of every mapping key in it (`("params", "n_experiences") -> 12`), so a
    check of the document's keys can name the file and line of a mistake."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ClipbenchError(f"cannot read {path}: {err.strerror}") from None
    doc = load_yaml_text(text, str(path))  # syntax errors, named with their line
    marks: Marks = {}
    node = yaml.compose(text, Loader=_Loader)
    if node is not None:
        _marks(node, (), marks, str(path))
    return doc, marks


def parse_scalar(text: str) -> Any:
    """A `--set` value: YAML scalar syntax (`3`, `1e-4`, `true`, `null`, `[0, 1]`, `image`)."""
    return load_yaml_text(text, "--set value")
