"""A name -> class registry that third-party packages extend through an entry-point group.

Built-in entries are named by import path and imported lazily; entry points are read only when a name is not
found among the registered ones, or when everything is listed. Every entry is checked to subclass `base`.
"""

import importlib
import re
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from vqgen.stages.core.errors import UserError, one_line

T = TypeVar("T")
# A name is also part of a folder name (prior-NAME), so it holds no '/' and cannot be '..'.
VALID_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class RegistryEntry:
    name: str
    target: str  # "module:Class"
    source: str  # "built-in", "registered" or "entry point (package x.y)"


class Registry(Generic[T]):
    def __init__(self, kind: str, group: str, base: type, builtins: dict[str, str]):
        self.kind, self.group, self.base = kind, group, base
        self._entries = {name: RegistryEntry(name, target, "built-in") for name, target in builtins.items()}
        self._classes: dict[str, type] = {}
        self._entry_points_read = False

    def register(self, name: str):
        """Class decorator, `@register_prior("mine")`, for a class defined in-process; a taken name is an error."""

        if not VALID_NAME.match(name):
            raise ValueError(f"{self.kind} name {name!r} must be letters, digits, '_', '.' or '-'")

        def decorate(cls: type) -> type:
            entry = self._entries.get(name)
            target = f"{cls.__module__}:{cls.__qualname__}"
            if entry is not None and entry.target != target:
                raise ValueError(f"{self.kind} name {name!r} is already registered by {entry.target}")
            self._check(name, cls)
            self._entries.setdefault(name, RegistryEntry(name, target, "registered"))
            self._classes[name] = cls
            return cls

        return decorate

    def _check(self, name: str, cls: object) -> None:
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise UserError(
                f"{self.kind} {name!r} ({cls!r}) does not subclass {self.base.__module__}.{self.base.__name__}; "
                f"fix the {self.kind} or its entry point in group {self.group!r}"
            )

    def _read_entry_points(self) -> None:
        if self._entry_points_read:
            return
        self._entry_points_read = True
        for ep in entry_points(group=self.group):
            if ep.name in self._entries:
                continue  # built-ins and explicit registrations win; the name stays unique
            dist = getattr(ep, "dist", None)
            source = f"entry point ({dist.name} {dist.version})" if dist else "entry point"
            self._entries[ep.name] = RegistryEntry(ep.name, ep.value, source)

    def refresh(self) -> None:
        """Read the entry points again (after a package was installed into the running interpreter)."""
        self._entry_points_read = False

    def get(self, name: str) -> type:
        """The class registered under `name`, imported on first use."""
        if name in self._classes:
            return self._classes[name]
        if name not in self._entries:
            self._read_entry_points()
        entry = self._entries.get(name)
        if entry is None:
            known = ", ".join(sorted(self.names()))
            raise UserError(f"unknown {self.kind} {name!r}; available: {known}")
        if not VALID_NAME.match(name):
            raise UserError(
                f"{self.kind} name {name!r} from {entry.source} is not a valid name (letters, digits, '_', '.', '-'); "
                f"fix its entry point in group {self.group!r}"
            )
        module_name, _, attr = entry.target.partition(":")
        try:
            obj = importlib.import_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except Exception as exc:  # a broken third-party package must not crash with a traceback
            raise UserError(
                f"{self.kind} {name!r} from {entry.source} failed to load ({entry.target}): {one_line(exc)}"
            ) from None
        self._check(name, obj)
        self._classes[name] = obj
        return obj

    def names(self) -> list[str]:
        self._read_entry_points()
        return sorted(self._entries)

    def entries(self) -> list[RegistryEntry]:
        self._read_entry_points()
        return [self._entries[n] for n in sorted(self._entries)]


def _priors() -> Registry:
    from vqgen.priors import BUILTIN_PRIORS, Prior

    return Registry(kind="prior", group="vqgen.priors", base=Prior, builtins=BUILTIN_PRIORS)


def _plugins() -> Registry:
    from vqgen.plugins import BUILTIN_PLUGINS, TrainingPlugin

    return Registry(kind="plugin", group="vqgen.plugins", base=TrainingPlugin, builtins=BUILTIN_PLUGINS)


def _tokenizers() -> Registry:
    from vqgen.stages.tokenizer import BUILTIN_TOKENIZERS, Tokenizer

    return Registry(kind="tokenizer", group="vqgen.tokenizers", base=Tokenizer, builtins=BUILTIN_TOKENIZERS)


def _quantizers() -> Registry:
    from vqgen.stages.tokenizer import BUILTIN_QUANTIZERS, Quantizer, use_quantizer_lookup

    registry = Registry(
        kind="quantizer", group="vqgen.quantizers", base=Quantizer, builtins=BUILTIN_QUANTIZERS
    )
    use_quantizer_lookup(registry.get)  # tokenizers build their quantizer by name through this registry
    return registry


# The host's registries: built-ins named by the bottom packages, third-party entries read from entry points.
PRIORS: Registry = _priors()
PLUGINS: Registry = _plugins()
TOKENIZERS: Registry = _tokenizers()
QUANTIZERS: Registry = _quantizers()
register_prior = PRIORS.register  # in-process registration (a notebook): `@register_prior("mine")`
register_plugin = PLUGINS.register
register_tokenizer = TOKENIZERS.register
register_quantizer = QUANTIZERS.register


@dataclass
class TokenizerPreset:
    name: str  # what --arch takes: an architecture's name (its default config) or a size preset's
    arch: str  # the registered architecture
    config: object  # a fresh copy of the preset's dataclass config


def tokenizer_presets() -> list[TokenizerPreset]:
    """Every architecture (with its default config) and every size preset it names in its PRESETS."""
    import copy

    out = []
    for arch in TOKENIZERS.names():
        cls = TOKENIZERS.get(arch)
        out.append(TokenizerPreset(arch, arch, config_class(cls)()))
        out += [TokenizerPreset(n, arch, copy.deepcopy(c)) for n, c in cls.PRESETS.items() if n != arch]
    return out


def tokenizer_preset(name: str) -> TokenizerPreset:
    """The architecture or size preset called `name`; unknown names are a UserError listing the known ones."""
    presets = tokenizer_presets()
    found = [p for p in presets if p.name == name]
    if not found:
        known = ", ".join(p.name for p in presets)
        raise UserError(f"unknown tokenizer architecture {name!r}; available: {known}")
    return found[0]


def config_class(cls: type) -> type:
    """The dataclass a model's __init__ takes as `config`."""
    import typing
    from dataclasses import is_dataclass

    hint = typing.get_type_hints(cls.__init__).get("config")
    if not (isinstance(hint, type) and is_dataclass(hint)):
        raise UserError(
            f"{cls.__module__}.{cls.__qualname__} does not take a dataclass `config`; fix the model"
        )
    return hint
