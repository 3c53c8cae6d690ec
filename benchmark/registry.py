"""Name -> plugin registries, filled on first use by importing a package's modules.

Nothing is discovered at import time; the first `get`/`names` call imports every module of
the package (so a new file in `methods/` is found without being listed anywhere) and loads
third-party plugins from an entry point group.
"""

from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points
from typing import Callable, Dict, Generic, List, Optional, TypeVar

from .errors import ClipbenchError, unknown_name_error

T = TypeVar("T")


class Registry(Generic[T]):
    """A registry of named plugins of one kind (methods, builders, metrics...)."""

    def __init__(self, kind: str, package: Optional[str], entry_point_group: Optional[str] = None):
        self.kind = kind
        self._package = package
        self._group = entry_point_group
        self._items: Dict[str, T] = {}
        self._discovered = False

    def register(self, name: str, item: T) -> T:
        """Add `item` under `name`; two plugins may not share a name."""
        if name in self._items and self._items[name] is not item:
            raise ClipbenchError(f"two {self.kind}s are registered as '{name}'; rename one of them")
        self._items[name] = item
        return item

    def decorator(self, name_of: Callable[[T], str]) -> Callable[[T], T]:
        """A class/function decorator that registers under `name_of(item)`."""

        def decorate(item: T) -> T:
            return self.register(name_of(item), item)

        return decorate

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        if self._package:
            package = importlib.import_module(self._package)
            for info in pkgutil.iter_modules(package.__path__):
                if not info.name.startswith("_"):
                    importlib.import_module(f"{self._package}.{info.name}")
        if self._group:
            for ep in entry_points(group=self._group):
                ep.load()  # the loaded module registers itself with the decorator

    def get(self, name: str) -> T:
        """The plugin called `name`; an unknown name fails with the known names and a did-you-mean."""
        self._discover()
        if name not in self._items:
            raise unknown_name_error(self.kind, name, self._items)
        return self._items[name]

    def names(self) -> List[str]:
        """Every registered name, sorted."""
        self._discover()
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        self._discover()
        return name in self._items
