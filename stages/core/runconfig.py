"""Runs described by a file, and resumed without retyping a flag.

`--config run.yaml` (or `.json`) sets any field of a command's dataclass config by its field name: flat
(`steps: 800`) or nested as the saved `run_config.json` is (`train: {steps: 800}`). Each leaf name is a field name,
unique within the command's config; fields without a flag (warm-up, LR floor, clipping, checkpoints kept, ...)
are reached this way too. Flags on the command line override the file.

`--resume` starts from the run's saved `run_config.json`: options not given again keep their saved values; an
option given with another value is refused in one line, except the few that are safe to change mid-run (more
steps, how often to checkpoint or log), which are taken with a warning.

A config file is read with limits, as anything a user may have been sent: at most 1 MiB, a regular file (never
`/dev/zero` or a pipe), YAML without anchors or aliases (no alias bombs, no self-reference), nesting at most 16
deep, and option names as plain strings. `overwrite`, `resume` and the run folder are never taken from a file
(a saved run_config.json records them): a file that sets them gets one warning line and they are left out.
Every value, from a flag, a file or a saved run, is checked against its field's one declared range (`LIMITS` on
each config dataclass, which the CLI's --help and option parsing read too; `check_limits`), and every choice
against its enum (a field typed with an Enum, such as DataConfig.resize).
"""

import dataclasses
import enum
import json
import math
import os
import stat
import sys
import typing
from pathlib import Path
from typing import Any

from vqgen.stages.core.errors import UserError, one_line

# Changing these on --resume changes how long or how verbosely a run goes on, not what it computes.
SAFE_ON_RESUME = {
    "steps", "sample_every", "checkpoint_every", "keep_checkpoints", "log_every", "log_with", "max_nonfinite",
    "record_data_order", "eval_batch_size", "eval_every", "device", "compile", "num_workers", "checkpoint_shard_gb",
    "epochs", "patience", "keep_last", "augment",
}  # fmt: skip
# Where a run is and what to do with it are the command line's alone: a run folder or a copy of its
# run_config.json is a place and a description, never an instruction to replace or continue a run.
NOT_FROM_FILES = {"resume", "overwrite", "run_dir", "out"}
# Paths a run records relative to its own folder (so that a run can be moved or copied whole): never compared on
# --resume, and when not given again, found from the run folder.
RELATIVE_PATHS = {"codes"}
NOT_COMPARED = NOT_FROM_FILES | RELATIVE_PATHS
MAX_FILE_BYTES = 1 << 20
MAX_DEPTH = 16


def read_config_file(path: str | Path) -> dict:
    """A YAML or JSON file holding one mapping, read with the limits of the module docstring; anything else is a
    one-line UserError."""
    path = Path(path)
    where = f"--config {path}"
    try:
        with open(path, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise UserError(f"{where}: not a regular file; give a YAML or JSON file")
            raw = f.read(MAX_FILE_BYTES + 1)
        if len(raw) > MAX_FILE_BYTES:
            raise UserError(f"{where}: larger than {MAX_FILE_BYTES >> 20} MiB; a config file is a few lines")
        text = raw.decode()
        yaml_file = path.suffix.lower() in (".yaml", ".yml")
        data = _read_yaml(text, where) if yaml_file else json.loads(text)
    except UserError:
        raise
    except RecursionError:
        raise UserError(f"{where}: nested more than {MAX_DEPTH} deep") from None
    except Exception as exc:  # missing, unreadable, not YAML/JSON
        raise UserError(f"{where}: cannot read it ({one_line(exc)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{where}: must hold a mapping of option names to values")
    _check_plain(data, where, 0)
    return data


def _read_yaml(text: str, where: str) -> Any:
    """YAML without anchors and aliases (checked on the event stream, before anything is built) and at most
    MAX_DEPTH deep."""
    import yaml

    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise UserError(
                f"{where}: YAML anchors and aliases (&name, *name) are not accepted; write values out"
            )
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise UserError(f"{where}: nested more than {MAX_DEPTH} deep")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
    return yaml.safe_load(text)


def _check_plain(value: Any, where: str, depth: int) -> None:
    """Option names are strings, nesting is bounded."""
    if depth > MAX_DEPTH:
        raise UserError(f"{where}: nested more than {MAX_DEPTH} deep")
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if isinstance(value, dict) and not isinstance(key, str):
            raise UserError(f"{where}: option names must be text, got {key!r}")
        _check_plain(item, where, depth + 1)


def file_values(data: dict, where: str, folder: Path) -> dict[str, Any]:
    """A config file's fields by name (`flat_file`), without those a file never sets (NOT_FROM_FILES: one
    warning line names them); a run's own relative paths (RELATIVE_PATHS) are read from the file's `folder`."""
    values = flat_file(data, where)
    for name in RELATIVE_PATHS & set(values):
        if isinstance(values[name], str):
            values[name] = str(Path(folder) / values[name])
    ignored = sorted(set(values) & NOT_FROM_FILES)
    if ignored:
        print(
            f"warning: {where}: {', '.join(ignored)} ignored: the run folder, --overwrite and --resume are "
            "taken from the command line only",
            file=sys.stderr,
        )
    return {k: v for k, v in values.items() if k not in NOT_FROM_FILES}


def leaves(config: Any) -> dict[str, tuple[str, Any]]:
    """{dotted path: (field name, value)} of a dataclass config's non-dataclass fields."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            out.update({f"{f.name}.{k}": v for k, v in leaves(value).items()})
        else:
            out[f.name] = (f.name, value)
    return out


def flat_file(data: dict, where: str) -> dict[str, Any]:
    """A (possibly nested) config mapping -> {field name: value}; one name with two values is an error."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        items = (
            flat_file(value, where).items()
            if isinstance(value, dict) and key != "prior_options"
            else [(key, value)]
        )
        for name, v in items:
            if name in out and out[name] != v:
                raise UserError(f"{where}: {name} is given twice, as {out[name]!r} and {v!r}")
            out[name] = v
    return out


def _convert(value: Any, like: Any, name: str, where: str) -> Any:
    if isinstance(like, bool) or like is None or isinstance(like, (str, dict, list)):
        ok = like is None or isinstance(value, type(like)) or (isinstance(like, str) and value is None)
    else:  # numbers: an int is a valid float, a float is an int only when whole (and finite)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and isinstance(like, int) and isinstance(value, float):
            ok = math.isfinite(value) and value.is_integer()
        value = type(like)(value) if ok else value
    if not ok:
        raise UserError(f"{where}: {name} should be {type(like).__name__}, got {json.dumps(value)}")
    return value


def set_fields(config: Any, values: dict[str, Any], where: str) -> Any:
    """A copy of `config` with the named fields set, wherever they lie in the nested dataclasses."""
    by_name: dict[str, list[str]] = {}
    for path, (name, _) in leaves(config).items():
        by_name.setdefault(name, []).append(path)
    unknown = sorted(set(values) - set(by_name))
    if unknown:
        raise UserError(
            f"{where}: unknown option(s) {', '.join(unknown)}; options: {', '.join(sorted(by_name))}"
        )
    config = dataclasses.replace(config)
    for name, value in values.items():
        for path in by_name[name]:
            *parents, leaf = path.split(".")
            holder = config
            for p in parents:  # copy the nested configs on the way, so the defaults are never changed
                setattr(holder, p, dataclasses.replace(getattr(holder, p)))
                holder = getattr(holder, p)
            setattr(holder, leaf, _convert(value, getattr(holder, leaf), name, where))
    return config


def resumed(config: Any, saved_file: Path, given: set[str]) -> Any:
    """The saved configuration of a run, with the options in `given` (named on the command line or in --config)
    taken from `config` where they are safe to change; any other change is refused."""
    if not saved_file.is_file():
        return config
    try:
        saved_values = flat_file(json.loads(saved_file.read_text()), str(saved_file))
    except ValueError as exc:
        raise UserError(f"--resume: {saved_file} is unreadable ({one_line(exc)})") from None
    now = {name: value for name, value in leaves(config).values()}
    relative = {
        k: str(saved_file.parent / v)
        for k, v in saved_values.items()
        if k in RELATIVE_PATHS and k not in given and isinstance(v, str)
    }
    saved_values = {k: v for k, v in saved_values.items() if k in now and k not in NOT_COMPARED}
    saved_values.update(relative)
    changes = {}
    for name in sorted(given & set(saved_values)):
        new, old = now[name], saved_values[name]
        if new == old or (isinstance(new, tuple | list) and list(new) == old):
            continue
        if name not in SAFE_ON_RESUME:
            raise UserError(
                f"--resume: {name} was {old!r} in this run and is now {new!r}; resume with the run's own settings "
                "(leave the option out) or start a new run"
            )
        print(f"warning: --resume: {name} changes from {old!r} to {new!r}", file=sys.stderr)
        changes[name] = new
    kept = {k: v for k, v in saved_values.items() if k not in changes}
    return set_fields(set_fields(config, kept, str(saved_file)), changes, "--resume")


def _choice_enum(cls: type, name: str) -> type[enum.Enum] | None:
    """The Enum a dataclass field is typed with (alone or in an Optional), or None."""
    hint = typing.get_type_hints(cls).get(name)
    for kind in (hint, *typing.get_args(hint)):
        if isinstance(kind, type) and issubclass(kind, enum.Enum):
            return kind
    return None


def _choice(choices: type[enum.Enum], value: Any, flag: str) -> enum.Enum:
    """`value` as a member of `choices`, or one line naming the option and the choices."""
    try:
        return choices(value)
    except ValueError:
        names = [str(m.value) for m in choices]
        raise UserError(f"{flag} must be {', '.join(names[:-1])} or {names[-1]}, got {value!r}") from None


def check_limits(config: Any, where: str = "") -> None:
    """Every field of `config` (and of the dataclasses inside it) within its declared range: `LIMITS` on its
    dataclass, {field: (lowest, highest)}; a float must be finite; a choice (a field typed with an Enum) one of
    the enum's values, and made that member. The same check for a flag, a file and a saved run; a value out of
    range is one line naming the option."""
    limits = getattr(type(config), "LIMITS", {})
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            check_limits(value, where)
            continue
        choices = _choice_enum(type(config), f.name)
        if choices is not None and value is not None:
            setattr(config, f.name, _choice(choices, value, f"{where}--{f.name.replace('_', '-')}"))
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        low, high = limits.get(f.name, (None, None))
        flag = f"--{f.name.replace('_', '-')}"
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{where}{flag} must be a finite number, got {value}")
        if (low is not None and value < low) or (high is not None and value > high):
            raise UserError(f"{where}{flag} must lie in [{low}, {high}], got {value:g}")
