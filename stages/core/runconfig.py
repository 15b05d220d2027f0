"""Runs described by a file, and resumed without retyping a flag.

`--config run.yaml` (or `.json`) sets any field of a command's dataclass config by its field name: flat
(`steps: 800`) or nested as the saved `run_config.json` is (`train: {steps: 800}`). Each leaf name is a field name,
unique within the command's config; fields without a flag (warm-up, LR floor, clipping, checkpoints kept, ...)
are reached this way too. Flags on the command line override the file.

`--resume` starts from the run's saved `run_config.json`: options not given again keep their saved values; an
option given with another value is refused in one line, except the few that are safe to change mid-run (more
steps, how often to checkpoint or log), which are taken with a warning.
"""

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from vqgen.stages.core.errors import UserError, one_line

# Changing these on --resume changes how long or how verbosely a run goes on, not what it computes.
SAFE_ON_RESUME = {
    "steps", "sample_every", "checkpoint_every", "keep_checkpoints", "log_every", "log_with", "max_nonfinite",
    "record_data_order", "eval_batch_size", "eval_every", "device", "compile", "num_workers", "epochs", "patience",
    "keep_last",
}  # fmt: skip
NOT_COMPARED = {"resume", "overwrite"}


def read_config_file(path: str | Path) -> dict:
    """A YAML or JSON file holding one mapping; anything else is a one-line UserError."""
    path = Path(path)
    try:
        text = path.read_text()
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # missing, unreadable, not YAML/JSON
        raise UserError(f"--config {path}: cannot read it ({one_line(exc)})") from None
    if not isinstance(data, dict):
        raise UserError(f"--config {path}: must hold a mapping of option names to values")
    return data


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
    else:  # numbers: an int is a valid float
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
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
    saved_values = {k: v for k, v in saved_values.items() if k in now and k not in NOT_COMPARED}
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
