"""`NAME=VALUE` command-line options parsed into a dataclass config, each converted to its field's type."""

import types
import typing
from dataclasses import fields
from enum import Enum
from typing import Any


def _items(value: str) -> list[str]:
    """'1,2,4', '[1, 2, 4]' or '(1, 2, 4)' -> ['1', '2', '4']; '' or '[]' -> []."""
    inner = value.strip()
    if inner[:1] + inner[-1:] in ("[]", "()"):
        inner = inner[1:-1]
    return [item.strip() for item in inner.split(",")] if inner.strip() else []


def _convert(value: str, annotation: Any, where: str) -> Any:
    if isinstance(annotation, str):  # postponed annotations: fall back to the textual type name
        annotation = {"int": int, "float": float, "str": str, "bool": bool}.get(annotation, annotation)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    is_union = origin in (typing.Union, types.UnionType)
    options = args if is_union else ()
    if options and value.lower() == "none" and type(None) in options:
        return None
    kind = next((o for o in options if o is not type(None)), annotation) if options else annotation
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is typing.Literal:
        match = [a for a in args if str(a) == value]
        if not match:
            raise ValueError(f"{where}: expected one of {', '.join(map(str, args))}, got {value!r}")
        return match[0]
    if isinstance(kind, type) and issubclass(kind, Enum):
        try:
            return kind(value) if value in {m.value for m in kind} else kind[value]
        except KeyError:
            choices = ", ".join(str(m.value) for m in kind)
            raise ValueError(f"{where}: expected one of {choices}, got {value!r}") from None
    if origin in (list, tuple) or kind in (list, tuple):
        items = _items(value)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(items) != len(args):
                raise ValueError(f"{where}: expected {len(args)} comma-separated values, got {value!r}")
            return tuple(_convert(v, a, where) for v, a in zip(items, args))
        item_type = args[0] if args else str
        converted = [_convert(v, item_type, where) for v in items]
        return tuple(converted) if (origin is tuple or kind is tuple) else converted
    if kind is bool:
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{where}: expected true or false, got {value!r}")
    if kind in (int, float, str):
        try:
            return kind(value)
        except ValueError:
            raise ValueError(f"{where}: expected {kind.__name__}, got {value!r}") from None
    if kind is Any or kind is object:
        return value
    raise ValueError(f"{where}: options of type {kind!r} cannot be given on the command line; use --config")


def parse_options(owner: str, config_class: type, options: dict[str, str], **fixed: Any) -> Any:
    """`config_class(**fixed, **converted options)`; an unknown option or a bad value is a ValueError naming it."""
    known = {f.name: f for f in fields(config_class)}
    hints = typing.get_type_hints(config_class)
    values = dict(fixed)
    for key, raw in options.items():
        if key not in known:
            raise ValueError(f"{owner} has no option {key!r}; options: {', '.join(sorted(known))}")
        values[key] = _convert(raw, hints.get(key, known[key].type), f"{owner} option {key}")
    return config_class(**values)


def split_assignments(flags: list[str], flag_name: str) -> dict[str, str]:
    """["a=1", "b=x"] -> {"a": "1", "b": "x"}."""
    out = {}
    for flag in flags:
        key, eq, value = flag.partition("=")
        if not eq or not key:
            raise ValueError(f"{flag_name} {flag!r} must look like OPTION=VALUE")
        out[key.strip()] = value.strip()
    return out
