"""YAML reading with errors that name the file and line, and floats like `1e-3` read as floats."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import yaml

from .errors import ClipbenchError


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-3` as a float (PyYAML follows YAML 1.1, which needs `1.0e-3`)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


# the most values a document may expand to through aliases (`*name`) beyond the values written in it: a
# small file of nested aliases would otherwise expand to billions in memory ("billion laughs")
MAX_ALIAS_EXPANSION = 100_000


def _children(node: yaml.Node) -> List[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def check_aliases(root: yaml.Node, source: str, limit: int = MAX_ALIAS_EXPANSION) -> None:
    """Refuse a composed document whose aliases refer to themselves (a value inside itself) or expand to
    more than max(`limit`, the values written) values. Counts without expanding: each node's expanded size
    once, depth-first on an explicit stack (a deep document needs no deep recursion)."""
    written = set()
    sizes: Dict[int, int] = {}
    active = set()  # nodes whose children are being counted: reaching one again is a cycle
    stack: List[Tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            active.discard(key)
            sizes[key] = 1 + sum(sizes[id(c)] for c in _children(node))
            if sizes[key] > max(limit, len(written)):
                raise ClipbenchError(f"{source}:{node.start_mark.line + 1}: YAML aliases (*name) here expand to "
                                     f"more than {max(limit, len(written))} values; write the values out, or use "
                                     "fewer aliases")
            continue
        if key in sizes:
            continue
        if key in active:
            raise ClipbenchError(f"{source}:{node.start_mark.line + 1}: a YAML alias (*name) refers to a value that "
                                 "contains it; a value cannot hold itself")
        written.add(key)
        active.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node))


def load_yaml_text(text: str, source: str) -> Any:
    """Parse YAML text; a syntax error becomes a ClipbenchError naming `source` and the line. Aliases are
    bounded (`check_aliases`), so a small file cannot take much memory or time."""
    return _load(text, source)


def _load(text: str, source: str, marks: Optional[Marks] = None) -> Any:
    """`load_yaml_text`; with `marks`, also the line of every mapping key (`_marks`), read from the composed
    nodes before they are constructed (constructing merges `<<` keys into them)."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        check_aliases(node, source)
        if marks is not None:
            _marks(node, (), marks, source)
        return loader.construct_document(node)
    except RecursionError:  # PyYAML composes and constructs recursively
        raise ClipbenchError(f"{source}: YAML nested too deeply; flatten it") from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        raise ClipbenchError(f"malformed YAML in {where}: {err.problem or err}") from None
    except yaml.YAMLError as err:
        raise ClipbenchError(f"malformed YAML in {source}: {err}") from None
    finally:
        loader.dispose()


def read_text(path: Path) -> str:
    """A text file as UTF-8; unreadable or not UTF-8, one ClipbenchError line naming the file (and line)."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as err:
        raise ClipbenchError(f"cannot read {path}: {err.strerror}") from None
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise ClipbenchError(f"{path}:{line}: byte 0x{err.object[err.start]:02x} is not UTF-8: save the file as "
                             "UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None


def load_yaml(path: str | Path) -> Any:
    """Read and parse a YAML file (see `load_yaml_text`)."""
    path = Path(path)
    return load_yaml_text(read_text(path), str(path))


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
    text = read_text(path)
    marks: Marks = {}
    doc = _load(text, str(path), marks)  # syntax errors, named with their line
    return doc, marks


def parse_scalar(text: str) -> Any:
    """A `--set` value: YAML scalar syntax (`3`, `1e-4`, `true`, `null`, `[0, 1]`, `image`)."""
    return load_yaml_text(text, "--set value")


def deep_merge(base: Dict[str, Any], over: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """`base` with `over` laid on top: mappings merge key by key, any other value replaces (settings layers,
    a protocol file over the files it includes). Neither argument is changed."""
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out
