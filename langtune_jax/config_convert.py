"""Plain YAML data -> the typed config tree, generically from the type hints; ``--set`` overrides.

:func:`from_dict` converts a mapping into a dataclass (unknown keys name the dotted key and list
the valid ones; a wrong type names the key, the expected type and the value; a section's
``__post_init__`` message is prefixed with its dotted key). :func:`apply_overrides` applies
``KEY=VALUE`` items (values parsed as YAML, numbers index lists) to the plain data first.
:mod:`langtune_jax.config` composes the sections and reads the files.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A configuration problem, with a message that names the key and the fix."""


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(tp))
        return f"{origin.__name__}[{args}]"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return f"a mapping ({tp.__name__})"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the type hint ``tp``; returns the converted value.

    Raises:
      ConfigError: naming ``key``, the expected type and the value.
    """
    if tp is Any:
        return value
    wrong = ConfigError(
        f"config key '{key}': expected {_type_name(tp)}, got {type(value).__name__} {value!r}"
    )
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise wrong
        return from_dict(tp, value, prefix=key)
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(
                f"config key '{key}': {value!r} is not valid; choose {_type_name(tp)}"
            )
        return value
    if origin in (typing.Union, types.UnionType):
        return _convert_union(value, tp, key, wrong)
    if origin in (list, dict):
        return _convert_container(value, tp, key, wrong)
    return _convert_scalar(value, tp, wrong)


def _convert_union(value: Any, tp: Any, key: str, wrong: ConfigError) -> Any:
    """``X | Y | None``: the first member that takes ``value``; a lone member's own error."""
    args = typing.get_args(tp)
    if value is None:
        if type(None) in args:
            return None
        raise wrong
    errors = []
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _convert(value, arg, key)
        except ConfigError as err:
            errors.append(err)
    if len(errors) == 1:
        raise errors[0]
    raise wrong


def _convert_container(value: Any, tp: Any, key: str, wrong: ConfigError) -> Any:
    """``list[T]`` (a tuple is taken as a list) and ``dict[K, V]``, item by item."""
    if typing.get_origin(tp) is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise wrong
        return [_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    key_tp, val_tp = typing.get_args(tp) or (str, Any)
    if not isinstance(value, dict):
        raise wrong
    return {
        _convert(k, key_tp, f"{key}.<key>"): _convert(v, val_tp, f"{key}.{k}")
        for k, v in value.items()
    }


def _convert_scalar(value: Any, tp: Any, wrong: ConfigError) -> Any:
    """``bool``, ``int`` (not a bool), ``float`` (an int or a number-like string), ``str``, or
    any other class by ``isinstance``."""
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong
        return value
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 reads "1e-3" (no dot) as a string; accept what Python reads as a number.
            try:
                return float(value)
            except ValueError:
                raise wrong from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong
        return float(value)
    if isinstance(tp, type) and not isinstance(value, tp):  # bool, str and other classes
        raise wrong
    return value


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a plain mapping, checking keys and types recursively.

    Args:
      cls: the dataclass type.
      data: plain data (from YAML).
      prefix: dotted key of this section, used in error messages.

    Raises:
      ConfigError: unknown key, wrong type, or a failed ``__post_init__`` check.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    where = f"'{prefix}'" if prefix else "the top level"
    for name in data:
        if name not in fields:
            raise ConfigError(
                f"unknown config key '{_join(prefix, name)}' in {where}; valid keys: "
                + ", ".join(sorted(fields))
            )
    for name, field in fields.items():
        required = (
            field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        )
        if required and name not in data:
            raise ConfigError(f"missing required config key '{_join(prefix, name)}' in {where}")
    kwargs = {
        name: _convert(value, hints[name], _join(prefix, name)) for name, value in data.items()
    }
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        raise ConfigError(f"config section {where}: {err}") from None


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else str(name)


def parse_override(item: str) -> tuple[list[str], Any]:
    """Split one ``a.b.0.c=value`` override into its key parts and its YAML-parsed value."""
    if "=" not in item:
        raise ConfigError(
            f"override {item!r} must look like section.key=value (e.g. train.steps=100)"
        )
    dotted, raw = item.split("=", 1)
    parts = [p for p in dotted.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({err})") from None
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a nested dict, in place.

    A numeric part indexes a list: ``data.sources.0.path=x`` sets the first source's path, and the
    index one past the end appends an item (``data.sources.1.path=y`` adds a second source).
    """
    for item in overrides:
        parts, value = parse_override(item)
        node: Any = data
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            here = ".".join(parts[: i + 1])
            if isinstance(node, list):
                node, part = _list_slot(node, part, item, ".".join(parts[:i]))
            elif not isinstance(node, dict):
                raise ConfigError(
                    f"override {item!r}: '{'.'.join(parts[:i])}' is a value, not a section"
                )
            if last:
                node[part] = value
                break
            child = node[part] if isinstance(node, list) else node.get(part)
            if child is None:
                child = [] if parts[i + 1].isdigit() else {}
                node[part] = child
            if not isinstance(child, (dict, list)):
                raise ConfigError(f"override {item!r}: '{here}' is a value, not a section")
            node = child
    return data


def _list_slot(items: list, part: str, item: str, where: str) -> tuple[list, int]:
    """``(items, index)`` for a numeric key part; the index one past the end appends a slot."""
    if not part.isdigit():
        raise ConfigError(
            f"override {item!r}: '{where}' is a list; index its items by number "
            f"(e.g. {where}.0.{part})"
        )
    index = int(part)
    if index > len(items):
        raise ConfigError(
            f"override {item!r}: '{where}' has {len(items)} item(s); use an index up to "
            f"{len(items) - 1}, or {len(items)} to append one"
        )
    if index == len(items):
        items.append(None)
    return items, index
