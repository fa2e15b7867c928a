"""Build typed dataclasses from YAML mappings, with one clear error per mistake.

A field's YAML key is its name unless `field(metadata={"key": ...})` says otherwise.
"""

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, TypeVar

from migratio.errors import ConfigError

T = TypeVar("T")


def build(cls: type[T], data: object, where: str) -> T:
    """Return cls(**data) after checking keys and types; `where` names the file (and section)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of keys, got {_kind(data)}")
    fields = {_key(f): f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(map(str, data)) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key '{unknown[0]}' (valid keys: {', '.join(sorted(fields))})")
    hints = typing.get_type_hints(cls)
    values = {}
    for key, f in fields.items():
        if key in data:
            values[f.name] = convert(hints[f.name], data[key], f"{where}: key '{key}'")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: missing required key '{key}'")
    return cls(**values)


def convert(hint: Any, value: object, where: str) -> Any:
    """Check value against a type hint and convert it (str -> Path, mapping -> dataclass)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _first_fitting(inner, value, where)
    if origin is Literal:  # (by type too: 1 is not true)
        if not any(value == a and type(value) is type(a) for a in args):
            raise ConfigError(f"{where} must be one of {', '.join(map(_yaml, args))}, got {_yaml(value, repr)}")
        return value
    if origin is list:
        items = _expect(value, list, "a list", where)
        return [convert(args[0], item, f"{where}[{i}]") for i, item in enumerate(items)]
    if origin is dict:
        mapping = _expect(value, dict, "a mapping", where)
        return {str(k): convert(args[1], v, f"{where}.{k}") for k, v in mapping.items()}
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where)
    return _scalar(hint, value, where)


def _first_fitting(hints: list[Any], value: object, where: str) -> Any:
    """The value as the first alternative of a union it fits (`int | str`); else the first one's error."""
    errors = []
    for hint in hints:
        try:
            return convert(hint, value, where)
        except ConfigError as exc:
            errors.append(exc)
    raise errors[0]


def _scalar(hint: Any, value: object, where: str) -> Any:
    if hint is Path:
        text = _expect(value, str, "a path", where)
        if not text:
            raise ConfigError(f"{where} must not be empty")
        return Path(text)
    if hint is bool:
        return _expect(value, bool, "true or false", where)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {_kind(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {_kind(value)}")
        return float(value)
    if hint is str:
        return _expect(value, str, "a string", where)
    raise TypeError(f"unsupported config type {hint!r}")  # programming error, not user input


def _expect(value: object, kind: type, label: str, where: str) -> Any:
    if not isinstance(value, kind):
        raise ConfigError(f"{where} must be {label}, got {_kind(value)}")
    return value


def _yaml(value: object, show: Callable[[object], str] = str) -> str:
    """A value as YAML spells a boolean (true, not True), anything else shown by `show`."""
    return str(value).lower() if isinstance(value, bool) else show(value)


def _kind(value: object) -> str:
    if value is None:
        return "nothing (null)"
    return f"{type(value).__name__} {value!r}"[:80]


def _key(f: dataclasses.Field) -> str:
    return f.metadata.get("key", f.name)
