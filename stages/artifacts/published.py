"""The published layout (what `push` writes and `Pipeline.from_pretrained` / `generate --from` read): `vqgen.json`
names the `tokenizer/` and `prior/` subfolders. Also finds the two models of a run folder or beside a prior folder.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

from vqgen.stages.artifacts.codes import CODES_META
from vqgen.stages.artifacts.hub import check_hub_id, hub_snapshot, looks_local, read_config
from vqgen.stages.core.errors import UserError, read_json_object

INDEX_FILE = "vqgen.json"  # the index of a published folder: which subfolder holds which model
INDEX_FORMAT = 1  # version of the vqgen.json layout; a reader refuses a newer one


@dataclass
class PipelineFolders:
    """Where the two models of a pipeline lie on disk, and what is known about them."""

    tokenizer: Path
    prior: Path
    # vqgen.json of a published folder; {} for a run or prior folder
    index: dict = field(default_factory=dict)
    class_names: list[str] | None = None  # label names, when the codes or the index record them


def _is_prior_folder(path: Path) -> bool:
    try:
        return "prior_type" in json.loads((path / "config.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def _class_names(meta_file: Path) -> list[str] | None:
    try:
        names = json.loads(meta_file.read_text()).get("class_names")
    except (OSError, ValueError, AttributeError):
        return None
    return [str(n) for n in names] if isinstance(names, list) else None


def read_index(folder: Path) -> dict | None:
    """vqgen.json of a published folder, or None when the folder has none."""
    index_file = Path(folder) / INDEX_FILE
    if not index_file.is_file():
        return None
    return read_json_object(index_file, f"{folder}: {INDEX_FILE}")


def _from_index(path: str | Path, root: Path, index: dict, prior: str | None) -> PipelineFolders:
    if index.get("format", 0) > INDEX_FORMAT:
        raise UserError(
            f"{path}: {INDEX_FILE} format {index['format']} is newer than this vqgen reads; upgrade vqgen"
        )
    folders = {}
    for kind in ("tokenizer", "prior"):
        sub = index.get(kind)
        if not isinstance(sub, str) or not (root / sub / "config.json").is_file():
            raise UserError(f"{path}: {INDEX_FILE} names no {kind} folder with a config.json")
        if Path(sub).is_absolute() or ".." in Path(sub).parts:  # the index may only name its own subfolders
            raise UserError(
                f"{path}: {INDEX_FILE} points the {kind} outside the folder ({sub!r}); refusing it"
            )
        folders[kind] = root / sub
    if prior and prior not in (index.get("prior_type"), index["prior"]):
        raise UserError(f"{path} holds one prior ({index.get('prior_type')}), not {prior!r}")
    names = index.get("class_names")
    return PipelineFolders(
        folders["tokenizer"], folders["prior"], index, names if isinstance(names, list) else None
    )


def _from_run(path: str | Path, run: Path, prior: str | None) -> PipelineFolders:
    candidates = sorted(
        p for p in run.iterdir() if p.is_dir() and p.name != "tokenizer" and _is_prior_folder(p)
    )
    if prior:
        chosen = [p for p in candidates if p.name in (prior, f"prior-{prior}")]
        if not chosen:
            have = ", ".join(p.name for p in candidates) or "none"
            raise UserError(f"{path}: no prior folder named {prior!r} (found: {have})")
    elif not candidates:
        raise UserError(f"{path}: no trained prior in this run; train one with `cli.py train-prior`")
    elif len(candidates) > 1:
        names = ", ".join(p.name for p in candidates)
        raise UserError(f"{path} holds several priors ({names}); choose one with --prior NAME")
    else:
        chosen = candidates
    return PipelineFolders(run / "tokenizer", chosen[0], {}, _class_names(run / "codes" / CODES_META))


def locate(path: str | Path, prior: str | None = None, revision: str | None = None) -> PipelineFolders:
    """The tokenizer and prior folders of a published folder, a Hub id (at `revision`), a run or a prior folder."""
    local = Path(path).expanduser()
    if not local.exists():
        if looks_local(path):
            raise UserError(f"{path}: no such folder")
        local = hub_snapshot(check_hub_id(str(path), "--from"), revision)
        if read_index(local) is None:
            raise UserError(
                f"{path}: not a vqgen pipeline repo (no {INDEX_FILE}); load a single model with "
                "vqgen.load_tokenizer or vqgen.load_prior"
            )
    elif revision:
        raise UserError(f"{path} is a local folder; --revision applies to Hub ids only")
    if not local.is_dir():
        raise UserError(f"{path} is a file; give a run folder, a prior folder or a published vqgen folder")
    index = read_index(local)
    if index is not None:
        return _from_index(path, local, index, prior)
    if (local / "config.json").is_file():
        if "prior_type" not in read_config(local):
            raise UserError(
                f"{path} is a tokenizer folder; give a run folder, a prior folder or a published folder"
            )
        return PipelineFolders(
            local.parent / "tokenizer", local, {}, _class_names(local.parent / "codes" / CODES_META)
        )
    if (local / "tokenizer").is_dir():
        return _from_run(path, local, prior)
    raise UserError(
        f"{path}: neither a run folder (tokenizer/ + a prior) nor a published vqgen folder ({INDEX_FILE})"
    )


def generate_sources(
    source: str, prior: str | None, tokenizer: str | None, revision: str | None
) -> tuple[str, str]:
    """`cli.py generate --from SOURCE`: the prior and tokenizer folders that run_generate is given."""
    if tokenizer:
        raise UserError("--from names both the prior and the tokenizer; leave out --tokenizer")
    folders = locate(source, prior, revision)
    return str(folders.prior), str(folders.tokenizer)
