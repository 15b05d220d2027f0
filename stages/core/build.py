"""Models built from their registry names and command-line options: a tokenizer config from an architecture or
size preset with fields changed, and a prior from its name, the codes' facts and `--prior-opt` values."""

import typing
from dataclasses import fields
from typing import Any

from vqgen.priors import Prior
from vqgen.stages.core.errors import UserError, one_line
from vqgen.stages.core.options import parse_options
from vqgen.stages.core.registry import PRIORS, tokenizer_preset


def tokenizer_config(arch: str, model: dict[str, Any], quantizer: dict[str, Any]) -> Any:
    """The config of architecture or preset `arch` with the given fields changed (None: keep the preset's).
    A field the architecture does not have is a UserError naming it."""
    preset = tokenizer_preset(arch)
    config = preset.config
    for values, target in ((model, config), (quantizer, config.quantizer)):
        values = {k: v for k, v in values.items() if v is not None}
        known = {f.name for f in fields(target)}
        for name in sorted(set(values) - known):
            flag = "--" + {"num_res_blocks": "res-blocks"}.get(name, name.replace("_", "-"))
            raise UserError(f"{flag} does not apply to --arch {arch} (a {preset.arch} tokenizer)")
        for name, value in values.items():
            setattr(target, name, value)
    return config


def prior_config_class(cls: type[Prior]) -> type:
    """The dataclass a prior's __init__ takes (its `config` annotation)."""
    return typing.get_type_hints(cls.__init__)["config"]


def sized_options(name: str, size: str | None, options: dict[str, str]) -> dict[str, str]:
    """`options` over the fields of the prior's size preset `size` (`train-prior --size`; an option given keeps
    its own value); an unknown preset is a UserError, raised before anything is read or built."""
    if size is None:
        return options
    sizes = prior_config_class(PRIORS.get(name)).sizes()
    if size not in sizes:
        have = (
            f"has the sizes {', '.join(sizes)}"
            if sizes
            else "has no size presets (transformer and llamagen do)"
        )
        raise UserError(f"--size {size}: prior {name!r} {have}")
    return {**{k: str(v) for k, v in sizes[size].items()}, **options}


def build_prior(name: str, meta: dict, options: dict[str, str]) -> Prior:
    """The registered prior `name`, sized by the codes' facts (`meta`, codes.json) and configured by `options`
    (`--prior-opt` values as strings); a bad option or a config that makes no model is a UserError."""
    cls = PRIORS.get(name)
    fixed = {
        "prior_type": name,
        "vocab_size": meta["vocab_size"],
        "grid_height": meta["grid_height"],
        "grid_width": meta["grid_width"],
        "num_classes": meta["num_classes"],
        "tokenizer_fingerprint": meta["tokenizer_fingerprint"],
    }
    for key in options:
        if key in fixed:
            raise UserError(f"--prior-opt {key} comes from the codes and cannot be set")
    try:
        config = parse_options(f"prior {name!r}", prior_config_class(cls), options, **fixed)
    except (ValueError, TypeError) as exc:
        raise UserError(str(exc)) from None
    try:
        return cls(config)
    except Exception as exc:  # right types, but no model: a negative size, heads that do not divide, ...
        raise UserError(f"prior {name!r}: these options make no valid model ({one_line(exc)})") from None
