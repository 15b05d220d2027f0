"""`NAME=VALUE` command-line options parsed into a dataclass config, each converted to its field's type."""

import types
import typing
from dataclasses import fields
from typing import Any


def _convert(value: str, annotation: Any, where: str) -> Any:
    if isinstance(annotation, str):  # postponed annotations: fall back to the textual type name
        annotation = {"int": int, "float": float, "str": str, "bool": bool}.get(annotation, annotation)
    is_union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    options = typing.get_args(annotation) if is_union else ()
    if options and value.lower() == "none" and type(None) in options:
        return None
    kind = next((o for o in options if o is not type(None)), annotation) if options else annotation
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
    return value


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
