"""Typed strategy options: each strategy declares a frozen dataclass, the YAML's `options:` is
checked against it once, when the strategy is built (before any data is loaded).

A strategy writes

    @dataclass(frozen=True)
    class Options(StrategyOptions):
        tau: float = 0.7                      # plain types are checked and coerced (int → float)
        crop_source: Literal["attention", "mask"] = "attention"   # choices are checked
        lambda0: float | None = None          # None allowed only where the type says so

        weight: Annotated[float, Bounds(ge=0)] = 0.1             # range checks are declared

        def __post_init__(self):              # checks across fields: raise OptionError(field, message)
            super().__post_init__()
            if self.weight == 0 and self.crop_source == "mask": ...

and reads `self.options.tau`. Unknown keys, wrong types and bad choices fail with one line
that names the strategy, the option, the value and the accepted values (the fix).

Supported annotations: bool, int, float, str, Literal[...], X | None, dict[...] / Mapping,
list[...] / tuple[...] (given as YAML lists; stored as tuples, so options stay hashable).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from dkbench.errors import UserError


class InvalidOptionsError(UserError, ValueError):
    """`strategy.options` that do not fit the strategy's `Options` (raised by `parse_options`)."""


class OptionError(ValueError):
    """A bad strategy option; `field` names it (the strategy name is added by `parse_options`)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"option '{field}' {message}")
        self.field = field


@dataclass(frozen=True)
class Bounds:
    """A numeric option's range, declared in its annotation: ``Annotated[float, Bounds(ge=0)]``."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def violation(self, value: float) -> str | None:
        """None if `value` is inside, else how the range reads (for the message)."""
        inside = ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                  and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))
        if inside:
            return None
        parts = [f"{op} {bound:g}" for op, bound in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
                 if bound is not None]
        return " and ".join(parts)


#: the common ranges, by name
NonNegative = Annotated[float, Bounds(ge=0)]
Positive = Annotated[float, Bounds(gt=0)]
Fraction = Annotated[float, Bounds(ge=0, le=1)]
Count = Annotated[int, Bounds(ge=1)]
NonNegativeInt = Annotated[int, Bounds(ge=0)]


@dataclass(frozen=True)
class StrategyOptions:
    """Options every strategy accepts. `dropout` applies before a classification head."""

    dropout: Annotated[float, Bounds(ge=0, lt=1)] = 0.0

    def __post_init__(self) -> None:
        """The declared ranges (`Bounds`) of every field, however the options were made; subclasses
        add checks that involve several options after ``super().__post_init__()``."""
        hints = typing.get_type_hints(type(self), include_extras=True)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            broken = _out_of_bounds(hints[f.name], value)
            if broken:
                raise OptionError(f.name, f"must be {broken}, got {value!r}")

    def as_dict(self) -> dict[str, Any]:
        """Plain containers (for metadata.json): tuples back to lists, nested dicts copied."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _describe(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is Annotated:
        return _describe(get_args(annotation)[0])
    if origin is Literal:
        return f"one of {list(get_args(annotation))}"
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in get_args(annotation))
    if origin in (list, tuple, Sequence):
        return "a list"
    if origin in (dict, Mapping):
        return "a mapping"
    return getattr(annotation, "__name__", str(annotation))


def _coerce(annotation: Any, value: Any) -> Any:
    """The value as the annotation's type, or TypeError (the caller words the message)."""
    origin = get_origin(annotation)
    if annotation is Any:
        return value
    if origin is Annotated:  # the range is checked by `parse_options`, after the type
        return _coerce(get_args(annotation)[0], value)
    if origin is Literal:
        if value in get_args(annotation):
            return value
        raise TypeError
    if origin in (Union, types.UnionType):
        args = get_args(annotation)
        if value is None:
            if type(None) in args:
                return None
            raise TypeError
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value)
            except TypeError:
                continue
        raise TypeError
    if origin in (list, tuple, Sequence):
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise TypeError
        args = [a for a in get_args(annotation) if a is not Ellipsis]
        return tuple(_coerce(args[0], v) for v in value) if args else tuple(value)
    if origin in (dict, Mapping) or annotation in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise TypeError
        return dict(value)
    if annotation in (bool, str):  # exactly that type: no 0/1 for booleans, no numbers for names
        if isinstance(value, annotation):
            return value
        raise TypeError
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise TypeError
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError
        return float(value)
    if isinstance(annotation, type) and isinstance(value, annotation):
        return value
    raise TypeError


def parse_options(options_type: type[StrategyOptions], raw: Mapping[str, Any] | None, owner: str) -> StrategyOptions:
    """`raw` (the YAML's options, plain containers) checked against `options_type`.

    Raises ValueError with one line: ``strategy 'x': option 'y' must be …, got … (set
    strategy.options.y=…)``."""
    raw = dict(raw or {})
    fields = {f.name: f for f in dataclasses.fields(options_type)}
    hints = typing.get_type_hints(options_type, include_extras=True)
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise InvalidOptionsError(
            f"strategy '{owner}': unknown option(s) {unknown}; it takes {sorted(fields)} "
            f"(check the spelling in strategy.options)"
        )
    values = {}
    for name, value in raw.items():
        try:
            values[name] = _coerce(hints[name], value)
        except TypeError:
            raise InvalidOptionsError(
                f"strategy '{owner}': option '{name}' must be {_describe(hints[name])}, got {value!r} "
                f"(fix strategy.options.{name})"
            ) from None
    try:
        return options_type(**values)
    except OptionError as err:
        raise InvalidOptionsError(f"strategy '{owner}': {err} (fix strategy.options.{err.field})") from None


def _out_of_bounds(annotation: Any, value: Any) -> str | None:
    """How `value` breaks a `Bounds` declared in `annotation` (also inside ``X | None`` and on a
    list's elements: "each >= 1"), or None."""
    if value is None:
        return None
    origin = get_origin(annotation)
    if origin is Annotated:
        base, *extras = get_args(annotation)
        for bounds in (e for e in extras if isinstance(e, Bounds)):
            broken = bounds.violation(value)
            if broken:
                return broken
        return _out_of_bounds(base, value)
    if origin in (Union, types.UnionType):
        for arg in get_args(annotation):
            if arg is not type(None):
                broken = _out_of_bounds(arg, value)
                if broken:
                    return broken
        return None
    if origin in (list, tuple, Sequence) and isinstance(value, tuple):
        element = next((a for a in get_args(annotation) if a is not Ellipsis), Any)
        for item in value:
            broken = _out_of_bounds(element, item)
            if broken:
                return f"a list of values each {broken}"
    return None
