"""`cli.py push`: publish a run's tokenizer and prior as one Hugging Face Hub repo.

The uploaded folder (`--dry-run OUT` writes exactly this folder and uploads nothing):

    README.md                  model card: YAML metadata (model-index metrics) + samples, usage, configuration
    vqgen.json                 index: format, vqgen version, which subfolder holds which model, class names
    samples.png                a grid sampled from the pushed weights (seed 0, a row per class)
    tokenizer/                 README.md + config.json + model.safetensors   (vqgen.load_tokenizer)
    prior/                     README.md + config.json + model.safetensors   (vqgen.load_prior)
    training_state/            only with --with-training-state: the newest intact checkpoint of each stage
        tokenizer/step_NNNNNNN/state.safetensors + state.json, tokenizer/run_config.json
        prior/step_NNNNNNN/state.safetensors + state.json, prior/run_config.json
    space/                     only with --space: app.py + requirements.txt + README.md, the web demo as a Space

The weights are copied byte for byte from the run. The token comes from HF_TOKEN or the Hugging Face login
(huggingface_hub reads it) and is never printed, logged or written to a file. After a push, the target revision
holds exactly this layout (older files stay in the repo's git history).
"""

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import vqgen
from PIL import Image
from vqgen.stages.artifacts.card import (
    CardInputs,
    build_card,
    check_card,
    component_card,
    eval_results,
    redact_paths,
)
from vqgen.stages.artifacts.hub import check_hub_id, ensure_hub_reachable
from vqgen.stages.artifacts.models import load_prior, load_tokenizer
from vqgen.stages.artifacts.published import INDEX_FILE, INDEX_FORMAT, locate
from vqgen.stages.artifacts.runs import lexical
from vqgen.stages.core.device import resolve_device
from vqgen.stages.core.errors import UserError, one_line
from vqgen.stages.core.files import disk_writes, save_png, write_json
from vqgen.stages.reporting.space import write_space
from vqgen.stages.sampling.sampler import (
    SamplingConfig,
    check_pair,
    class_grid_labels,
    decode_grid,
    sample_chunks,
)
from vqgen.stages.training import checkpoint as ckpt

MODEL_FILES = ("config.json", "model.safetensors")
SAMPLES_PER_CLASS = 8  # samples.png: 8 per row, one row per class (at most 10 classes)


@dataclass
class PushConfig:
    run: str  # a run folder (tokenizer/ + prior folders), or a prior folder inside one
    repo_id: str  # "user/name" on the Hub
    prior: str | None = None  # which prior, when the run holds several (gru or prior-gru)
    private: bool = False  # create the repo private (an existing repo keeps its visibility)
    revision: str | None = None  # branch to push to (created from main if missing); default: main
    dry_run: str | None = None  # write the upload folder here and upload nothing
    with_training_state: bool = False  # also publish the newest training checkpoints (safetensors + JSON)
    # the card's licence id (https://huggingface.co/docs/hub/repositories-licenses)
    license: str = "apache-2.0"
    seed: int = 0  # seed of samples.png
    device: str = "auto"  # where samples.png is sampled and decoded: cpu | cuda | cuda:N | mps | auto
    space: bool = False  # also write space/: the web demo as a Hugging Face Space (stages/reporting/space.py)


def _read_json(path: Path, key: str | None = None) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    data = data.get(key, {}) if key and isinstance(data, dict) else data
    return data if isinstance(data, dict) else {}


def _copy_model(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True)
    for name in MODEL_FILES:
        shutil.copyfile(src / name, dst / name)


def _newest_checkpoint(folder: Path) -> Path | None:
    for path in reversed(ckpt.list_checkpoints(folder)):
        if ckpt.verify_checkpoint(path) is None:
            return path
    return None


def _copy_training_state(run_dirs: dict[str, Path], out: Path) -> dict[str, str]:
    """The newest intact checkpoint of each stage (and its run_config.json) under out/training_state/."""
    placed = {}
    for kind, run_dir in run_dirs.items():
        newest = _newest_checkpoint(run_dir)
        if newest is None:
            continue
        dst = out / "training_state" / kind
        shutil.copytree(newest, dst / newest.name)
        if (run_dir / "run_config.json").is_file():  # published without local paths (their last part only)
            write_json(redact_paths(_read_json(run_dir / "run_config.json")), dst / "run_config.json")
        placed[kind] = f"training_state/{kind}/{newest.name}"
    if not placed:
        where = " or ".join(str(d / ckpt.CHECKPOINT_DIR) for d in run_dirs.values())
        raise UserError(f"--with-training-state: no intact checkpoint under {where}")
    return placed


def _sample_grid(tokenizer, prior, seed: int) -> tuple[Image.Image, str]:
    """samples.png: SAMPLES_PER_CLASS per row, a row per class (at most 10), and its caption for the card."""
    k = prior.config.num_classes
    sampling = SamplingConfig().for_prior(prior)
    labels = class_grid_labels(min(k, 10), SAMPLES_PER_CLASS) if k else None
    n = labels.numel() if labels is not None else 8 * SAMPLES_PER_CLASS
    codes = torch.cat([g.cpu() for _, g in sample_chunks(prior, n, 100, labels, sampling, seed)])
    caption = f"Samples from the published weights: seed {seed}."
    if k:
        more = f" (the first {min(k, 10)} of {k})" if k > 10 else ""
        caption = (
            f"Samples from the published weights: seed {seed}, temperature {sampling.temperature:g}, guidance "
            f"scale {sampling.cfg_scale:g} ({sampling.cfg_schedule}), one row per class{more}."
        )
    return decode_grid(tokenizer, codes, nrow=SAMPLES_PER_CLASS), caption


def build_upload_folder(cfg: PushConfig, out: Path) -> list[str]:
    """Write the folder that `push` uploads into `out` (created; must not exist). Returns its files, sorted."""
    folders = locate(cfg.run, cfg.prior)
    tokenizer, prior = load_tokenizer(folders.tokenizer), load_prior(folders.prior)
    check_pair(prior, tokenizer)
    device = resolve_device(cfg.device)
    tokenizer.to(device)
    prior.to(device)
    out.mkdir(parents=True)
    _copy_model(folders.tokenizer, out / "tokenizer")
    _copy_model(folders.prior, out / "prior")
    tokenizer_config, prior_config = (
        _read_json(out / "tokenizer/config.json"),
        _read_json(out / "prior/config.json"),
    )
    component_card("tokenizer", cfg.repo_id, tokenizer_config).save(out / "tokenizer" / "README.md")
    component_card("prior", cfg.repo_id, prior_config).save(out / "prior" / "README.md")
    grid, caption = _sample_grid(tokenizer, prior, cfg.seed)
    save_png(grid, out / "samples.png")
    run_dirs = {"tokenizer": folders.tokenizer.parent, "prior": folders.prior}
    state = _copy_training_state(run_dirs, out) if cfg.with_training_state else None
    index = {
        "format": INDEX_FORMAT,
        "vqgen_version": vqgen.__version__,
        "tokenizer": "tokenizer",
        "prior": "prior",
        "prior_type": prior_config.get("prior_type"),
        "tokenizer_fingerprint": tokenizer.fingerprint(),
        "class_names": folders.class_names,
        "samples": "samples.png",
        "training_state": state,
    }
    write_json(index, out / INDEX_FILE)
    if cfg.space:
        write_space(out / "space", cfg.repo_id)
    files = sorted([str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()] + ["README.md"])
    inputs = CardInputs(
        repo_id=cfg.repo_id,
        tokenizer_config=tokenizer_config,
        prior_config=prior_config,
        tokenizer_metrics=_read_json(run_dirs["tokenizer"] / "metrics.json", "tokenizer"),
        prior_metrics=_read_json(folders.prior / "metrics.json", "prior"),
        tokenizer_run=_read_json(run_dirs["tokenizer"] / "run_config.json"),
        prior_run=_read_json(folders.prior / "run_config.json"),
        class_names=folders.class_names,
        license=cfg.license,
        samples_caption=caption,
        training_state=state,
        files=tuple(files),
    )
    card = build_card(inputs)
    try:
        check_card(card, eval_results(inputs))
    except ValueError as exc:
        raise UserError(f"the generated model card does not round-trip: {one_line(exc)}") from None
    card.save(out / "README.md")
    return files


def _check(cfg: PushConfig) -> None:
    resolve_device(cfg.device)  # a device that is not here: refused before anything is built
    if "/" not in cfg.repo_id:
        raise UserError(f"--repo-id {cfg.repo_id!r}: give the full Hub id, USER/NAME or ORG/NAME")
    check_hub_id(cfg.repo_id, "--repo-id")
    if not Path(cfg.run).is_dir():
        raise UserError(f"{cfg.run}: no such run folder")


# a dry run builds inside OUT under this prefix: a killed one leaves nothing outside OUT


STAGING = ".staging-"


def _dry_run(cfg: PushConfig, out: Path) -> list[str]:
    """Write the upload folder into OUT: built in a staging folder inside OUT (never beside it), then moved up.
    What a killed dry run left there is cleared; a failed one removes the OUT it created."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--dry-run {out} is a file; choose a new folder (nothing is overwritten)")
    leftovers = [p for p in out.iterdir() if p.name.startswith(STAGING)] if out.is_dir() else []
    if out.is_dir() and any(p not in leftovers for p in out.iterdir()):
        raise UserError(f"--dry-run {out} already exists; choose a new folder (nothing is overwritten)")
    created = not out.exists()
    for p in leftovers:
        shutil.rmtree(p, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING, dir=out))
    try:
        with disk_writes(out, None, "the upload folder"):
            files = build_upload_folder(cfg, staging / "upload")
        for entry in sorted((staging / "upload").iterdir()):
            os.replace(entry, out / entry.name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not any(out.iterdir()):
            out.rmdir()
        raise
    shutil.rmtree(staging, ignore_errors=True)
    return files


def run_push(cfg: PushConfig) -> dict:
    """Build the upload folder; with dry_run keep it there, else upload it. Returns what was done."""
    _check(cfg)
    if cfg.dry_run:
        out = lexical(cfg.dry_run)
        files = _dry_run(cfg, out)
        return {"folder": str(out), "files": files, "uploaded": False}
    from huggingface_hub import get_token

    if not get_token():
        raise UserError(
            "no Hugging Face token: set HF_TOKEN or log in with `hf auth login` (or use --dry-run OUT)"
        )
    ensure_hub_reachable(f"push to {cfg.repo_id}")
    with tempfile.TemporaryDirectory(prefix="vqgen-push-") as tmp:
        folder = Path(tmp) / "upload"
        with disk_writes(tmp, None, "the upload folder"):
            files = build_upload_folder(cfg, folder)
        return {**_upload(cfg, folder), "files": files, "uploaded": True}


def _redacted(exc: BaseException) -> str:
    """one_line(exc) with the token blanked out, should a library ever echo it in an error."""
    from huggingface_hub import get_token

    token = get_token()
    return one_line(exc).replace(token, "***") if token else one_line(exc)


def _upload(cfg: PushConfig, folder: Path) -> dict:
    """Validate the card on the Hub, create the repo (and branch), and commit the folder as the new contents."""
    from huggingface_hub import HfApi, ModelCard

    card = ModelCard.load(folder / "README.md")
    try:
        card.validate()  # huggingface_hub's own card validation: the Hub checks the YAML metadata
    except ValueError as exc:
        raise UserError(f"the Hugging Face Hub rejected the model card: {_redacted(exc)}") from None
    except Exception as exc:
        raise UserError(f"could not validate the model card on the Hub: {_redacted(exc)}") from None
    api = HfApi()
    prior_type = _read_json(folder / INDEX_FILE).get("prior_type")
    try:
        url = api.create_repo(cfg.repo_id, private=cfg.private, exist_ok=True)
        if cfg.revision:
            api.create_branch(cfg.repo_id, branch=cfg.revision, exist_ok=True)
        info = api.upload_folder(
            repo_id=cfg.repo_id,
            folder_path=folder,
            revision=cfg.revision,
            delete_patterns=["*"],
            commit_message=f"vqgen push: tokenizer + {prior_type} prior",
        )
    except Exception as exc:
        raise UserError(f"push to {cfg.repo_id} failed: {_redacted(exc)}") from None
    return {"url": str(url), "commit": info.oid, "revision": cfg.revision or "main"}
