"""Type checks of setting values against declared types (dataclass fields: methods' `Config`, builders'
`Params`), so a wrong type fails before anything runs with one line naming the key and what it expects.

Understood annotations: int (not bool), float (an int is accepted), str, bool, Any, Optional[X], Union,
List[X], Sequence[X], Tuple[X, ...], Dict[K, V], Literal[...], and `Annotated[X, Rule(...)]`: X, and a
value rule (a range, no repeats, a valid prompt template) declared next to the field; anything else is
accepted unchecked.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from typing import Any, Callable, Dict, Optional, Sequence

from .errors import ClipbenchError


@dataclasses.dataclass(frozen=True)
class Rule:
    """A rule on a value beyond its type, for `Annotated[X, Rule(...)]`: `expects` says in words what is
    allowed ("an integer >= 1"); `problem(value)` says what is wrong with a value of type X and how to fix
    it (None: nothing)."""

    expects: str
    problem: Callable[[Any], Optional[str]]


def problem(value: Any, annotation: Any) -> Optional[str]:
    """What is wrong with `value` for `annotation`, in words (None: it fits): the type expected, or the
    problem a value rule names."""
    if typing.get_origin(annotation) is typing.Annotated:
        base, *extras = typing.get_args(annotation)
        if not matches(value, base):
            return f"expected {describe(annotation)}"
        for rule in extras:
            found = rule.problem(value) if isinstance(rule, Rule) else None
            if found:
                return found
        return None
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union and value is not None:  # Optional[Annotated[...]]: the rule's own words
        for a in args:
            if a is not type(None) and typing.get_origin(a) is typing.Annotated and matches(value, typing.get_args(a)[0]):
                return problem(value, a)
    return None if matches(value, annotation) else f"expected {describe(annotation)}"


def matches(value: Any, annotation: Any) -> bool:
    """Whether `value` (as YAML or `--set` gives it) fits `annotation`."""
    if annotation is Any or annotation is dataclasses.MISSING:
        return True
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return problem(value, annotation) is None
    if origin is typing.Union:
        return any(matches(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if annotation is str:
        return isinstance(value, str)
    if origin in (list, tuple, typing.Sequence, getattr(typing, "MutableSequence", list)) or annotation in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        inner = [a for a in args if a is not Ellipsis]
        return not inner or all(matches(v, inner[0]) for v in value)
    if origin is dict or annotation is dict:
        return isinstance(value, dict) and (not args or all(matches(k, args[0]) and matches(v, args[1])
                                                                for k, v in value.items()))
    return True  # an annotation this checker does not know: accepted


def describe(annotation: Any) -> str:
    """`annotation` in words, for error lines."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        rules = [r.expects for r in args[1:] if isinstance(r, Rule)]
        return rules[0] if rules else describe(args[0])
    if origin is typing.Union:
        inner = [a for a in args if a is not type(None)]
        text = " or ".join(describe(a) for a in inner)
        return f"{text} or null" if len(inner) < len(args) else text
    if origin is typing.Literal:
        return "one of " + ", ".join(map(str, args))
    if origin in (list, tuple, typing.Sequence):
        inner = [a for a in args if a is not Ellipsis]
        plural = {int: "integers", float: "numbers", str: "strings", bool: "booleans"}
        return f"a list of {plural.get(inner[0], describe(inner[0]))}" if inner else "a list"
    if origin is dict:
        return "a mapping"
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def field_types(cls: type) -> Dict[str, Any]:
    """Field name -> resolved annotation of a dataclass (string annotations resolved)."""
    hints = typing.get_type_hints(cls, include_extras=True)  # keeps Annotated value rules
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls)}


def check(key: str, value: Any, annotation: Any, where: str = "") -> None:
    """Raise one ClipbenchError line when `value` does not fit `annotation` (its type, or a value rule)."""
    found = problem(value, annotation)
    if found:
        prefix = f"{where}: " if where else ""
        raise ClipbenchError(f"{prefix}{key}={value!r} is not allowed: {found}")


def check_fields(cls: type, values: Dict[str, Any], what: str, where: Callable[[Optional[str]], str]) -> None:
    """Every key of `values` is a field of dataclass `cls` (did-you-mean otherwise) of the right type.
    `where(key)` names the file and line of a key (or the source) for the error line."""
    types = field_types(cls)
    for key, value in values.items():
        if key not in types:
            raise unknown_key(str(key), types, what, where(key))
        check(f"{what}.{key}" if what else str(key), value, types[key], where(key))


def unknown_key(key: str, known: Sequence[str], what: str, where: str) -> ClipbenchError:
    """One line: where, the unknown key, a did-you-mean and the known keys."""
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    inside = f" in {what}" if what else ""
    return ClipbenchError(f"{where}: unknown key '{key}'{inside}.{hint} Known: {', '.join(sorted(known))}")
