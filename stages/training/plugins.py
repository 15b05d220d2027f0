"""The host side of training plugins: `--plugin NAME` and `--plugin-opt NAME.FIELD=VALUE` -> configured plugins.

Plugins themselves (vqgen.plugins) know no host; here their plain errors become one-line user errors.
"""

from dataclasses import is_dataclass

from vqgen.plugins.base import TrainingPlugin
from vqgen.stages.core.errors import UserError, one_line
from vqgen.stages.core.options import parse_options
from vqgen.stages.core.registry import PLUGINS


def parse_option_flags(flags: list[str]) -> dict[str, dict[str, str]]:
    """["gan.weight=0.8", ...] -> {"gan": {"weight": "0.8"}}."""
    out: dict[str, dict[str, str]] = {}
    for flag in flags:
        name, dot, rest = flag.partition(".")
        key, eq, value = rest.partition("=")
        if not dot or not eq or not key:
            raise UserError(
                f"--plugin-opt {flag!r} must look like NAME.OPTION=VALUE, for example gan.weight=0.8"
            )
        out.setdefault(name, {})[key] = value
    return out


def build_plugins(names: list[str], option_flags: list[str], stage: str) -> list[TrainingPlugin]:
    """Instantiate the named plugins with their options; every error is a one-line UserError."""
    options = parse_option_flags(option_flags)
    for name in options:
        if name not in names:
            raise UserError(f"--plugin-opt given for {name!r}, which is not enabled; add --plugin {name}")
    plugins = []
    for name in dict.fromkeys(names):
        cls = PLUGINS.get(name)
        if not is_dataclass(cls.config_class):
            raise UserError(
                f"plugin {name!r} ({cls.__module__}) has no dataclass config_class; fix the plugin"
            )
        if stage not in cls.stages:
            raise UserError(f"plugin {name!r} works in stages {', '.join(cls.stages)}, not in {stage!r}")
        try:
            config = parse_options(f"plugin {name!r}", cls.config_class, options.get(name, {}))
        except (ValueError, TypeError) as exc:
            raise UserError(f"plugin {name!r}: {exc}") from None
        try:
            plugin = cls(config)
        except Exception as exc:  # right types, but no plugin: a negative size, an unknown loss name, ...
            raise UserError(
                f"plugin {name!r}: these options make no valid plugin ({one_line(exc)})"
            ) from None
        plugin.name = name
        plugins.append(plugin)
    return plugins
