"""One small registry class shared by every axis (datasets, backbones, strategies).

Follows timm's pattern (`register_model`, `create_model`, `list_models`): entries register
themselves with a decorator when their module is imported, and every lookup of an unknown
name fails with the list of valid names, so a typo on the command line is a one-line fix.
"""

from __future__ import annotations

import fnmatch
import importlib
import pkgutil
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """An unknown registry name; the message lists the valid ones."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it readable
        return str(self.args[0])


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

    def _load(self) -> None:
        """Import every module of the axis package once: adding a file is all it takes."""
        if self._loaded:
            return
        self._loaded = True
        pkg = importlib.import_module(self._package)  # type: ignore[arg-type]
        for mod in pkgutil.iter_modules(pkg.__path__):
            if not mod.name.startswith("_"):
                importlib.import_module(f"{self._package}.{mod.name}")

    def get(self, name: str) -> T:
        self._load()
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
        self._load()
        return name in self._entries

    def create(self, name: str, **kwargs: Any) -> Any:
        return self.get(name)(**kwargs)  # type: ignore[operator]
