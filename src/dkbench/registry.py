"""One small registry class shared by every axis (datasets, backbones, strategies).

Follows timm's pattern (`register_model`, `create_model`, `list_models`): entries register
themselves with a decorator when their module is imported, and every lookup of an unknown
name fails with the list of valid names, so a typo on the command line is a one-line fix.
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.util
import pkgutil
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from dkbench.errors import UserError

T = TypeVar("T")


class UnknownNameError(UserError, KeyError):
    """An unknown registry name; the message lists the valid ones."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it readable
        return str(self.args[0])


#: the user's own modules that register datasets, backbones or strategies (comma-separated
#: import names); installed packages can instead declare an entry point in the group below
PLUGINS_ENV = "DKBENCH_PLUGINS"
ENTRY_POINT_GROUP = "dkbench.plugins"
_plugins_loaded = False


def load_plugins() -> None:
    """Import the user's plugin modules once, so their `@register_*` decorators run. These are
    modules the user names (DKBENCH_PLUGINS) or installs (entry points): their own code, imported
    like any package, never a file dkbench reads as data."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    import os
    from importlib.metadata import entry_points

    for name in filter(None, (n.strip() for n in os.environ.get(PLUGINS_ENV, "").split(","))):
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise PluginError(f"plugin module '{name}' (from {PLUGINS_ENV}) cannot be imported: {err}; install "
                              "it or put its folder on PYTHONPATH") from None
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        entry.load()


class PluginError(UserError, ImportError):
    """A plugin module named by the user cannot be imported."""


class Registry(Generic[T]):
    """Name → entry (a class or factory), with the axis name used in error messages."""

    def __init__(self, axis: str, package: str | None = None):
        self.axis = axis
        self._package = package  # imported lazily so that every entry module registers
        self._entries: dict[str, T] = {}
        self._loaded = package is None

    def register(self, name: str | None = None) -> Callable[[T], T]:
        def decorator(entry: T) -> T:
            key = name or getattr(entry, "name", None) or entry.__name__  # type: ignore[attr-defined]
            if key in self._entries and self._entries[key] is not entry:
                raise ValueError(f"{self.axis} '{key}' is registered twice")
            self._entries[key] = entry
            return entry

        return decorator

    def _load_one(self, name: str) -> None:
        """Import only `package.<name>`, the module named after its main entry.

        A run looks up one dataset, one backbone and one strategy; importing the whole
        package would pull in every strategy's dependencies (MONAI alone costs ~1.5 s per
        job). Names without a module of their own (variants, backbone families registered
        from one file) find nothing here and fall back to the full scan of `_load`.
        """
        if self._loaded or name in self._entries or not name.isidentifier() or name.startswith("_"):
            return
        module = f"{self._package}.{self._module_index().get(name, name)}"
        if importlib.util.find_spec(module) is not None:  # absent module: not an error, just a miss
            importlib.import_module(module)  # a broken module raises as the full scan would

    def _module_index(self) -> dict[str, str]:
        """`MODULES` of the axis package's `__init__` (name → module, for entries whose module is
        named otherwise, e.g. a family file); tests/unit/test_registry.py keeps it truthful."""
        pkg = importlib.import_module(self._package)  # type: ignore[arg-type]
        return dict(getattr(pkg, "MODULES", {}))

    def _load(self) -> None:
        """Import every module of the axis package once: adding a file is all it takes."""
        if self._loaded:
            return
        self._loaded = True
        pkg = importlib.import_module(self._package)  # type: ignore[arg-type]
        for mod in pkgutil.iter_modules(pkg.__path__):
            if not mod.name.startswith("_"):
                importlib.import_module(f"{self._package}.{mod.name}")
        load_plugins()

    def _load_for(self, name: str) -> None:
        """Make `name` resolvable at the least import cost: its own module, else everything."""
        self._load_one(name)
        if name not in self._entries:
            self._load()

    def get(self, name: str) -> T:
        self._load_for(name)
        try:
            return self._entries[name]
        except KeyError:
            valid = ", ".join(sorted(self._entries)) or "(none registered)"
            raise UnknownNameError(
                f"unknown {self.axis} '{name}'. Valid {self.axis} names: {valid}. "
                f"Choose one on the command line, e.g. `{self.axis}=<name>`."
            ) from None

    def names(self, pattern: str = "*") -> list[str]:
        self._load()
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def items(self) -> Iterator[tuple[str, T]]:
        self._load()
        yield from sorted(self._entries.items())

    def __contains__(self, name: str) -> bool:
        self._load_for(name)
        return name in self._entries

    def create(self, name: str, **kwargs: Any) -> Any:
        return self.get(name)(**kwargs)  # type: ignore[operator]
