"""A tokenizer and the prior trained on its codes, loaded together and sampled in three lines:

    from stages.pipeline import Pipeline
    pipe = Pipeline.from_pretrained("user/mnist-vqgen")   # a Hub id (revision=...), a run folder or a published folder
    images = pipe.generate(n=8, labels=7, seed=0)          # a list of PIL images

What `from_pretrained` accepts:
- a published folder or Hub repo (what `cli.py push` writes): `vqgen.json` names the `tokenizer/` and `prior/`
  subfolders (each config.json + model.safetensors); a Hub id is fetched into the Hub cache (safetensors only)
  and found there again when offline;
- a run folder (`tokenizer/` beside one or more prior folders; `prior=` picks one when there are several);
- a prior folder (the tokenizer is the `tokenizer` folder beside it, as for `cli.py generate --prior`).
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from priors import Prior, load_prior
from stages import metrics as M
from stages.errors import UserError, read_json_object
from stages.generate import GenerateConfig, check_pair, chunk_generator, validate
from stages.hub import check_hub_id, hub_snapshot, load_tokenizer, looks_local, read_config

INDEX_FILE = "vqgen.json"  # the index of a published folder: which subfolder holds which model
INDEX_FORMAT = 1  # version of the vqgen.json layout; a reader refuses a newer one


@dataclass
class PipelineFolders:
    """Where the two models of a pipeline lie on disk, and what is known about them."""

    tokenizer: Path
    prior: Path
    index: dict = field(
        default_factory=dict
    )  # vqgen.json of a published folder; {} for a run or prior folder
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
    return PipelineFolders(run / "tokenizer", chosen[0], {}, _class_names(run / "codes" / INDEX_FILE))


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
                "stages.hub.load_tokenizer or priors.load_prior"
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
            local.parent / "tokenizer", local, {}, _class_names(local.parent / "codes" / INDEX_FILE)
        )
    if (local / "tokenizer").is_dir():
        return _from_run(path, local, prior)
    raise UserError(
        f"{path}: neither a run folder (tokenizer/ + a prior) nor a published vqgen folder ({INDEX_FILE})"
    )


def _label_list(labels: int | list[int] | torch.Tensor | None) -> list[int] | None:
    if labels is None:
        return None
    if isinstance(labels, torch.Tensor):
        return [int(x) for x in labels.reshape(-1)]
    if isinstance(labels, int):
        return [labels]
    return [int(x) for x in labels]


class Pipeline:
    """A tokenizer and a prior that belong together (checked: codebook size, grid and tokenizer fingerprint)."""

    def __init__(self, tokenizer, prior: Prior, class_names: list[str] | None = None):
        check_pair(prior, tokenizer)
        self.tokenizer, self.prior = tokenizer.eval(), prior.eval()
        self.class_names = class_names

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        prior: str | None = None,
        revision: str | None = None,
        device: str | None = None,
    ) -> "Pipeline":
        """Load both models from a Hub id (at `revision`), a published folder, a run folder or a prior folder."""
        folders = locate(path, prior, revision)
        pipe = cls(load_tokenizer(folders.tokenizer), load_prior(folders.prior), folders.class_names)
        return pipe.to(device) if device else pipe

    def to(self, device: str | torch.device) -> "Pipeline":
        self.tokenizer.to(device)
        self.prior.to(device)
        return self

    @torch.inference_mode()
    def sample_codes(
        self,
        n: int = 16,
        labels: int | list[int] | torch.Tensor | None = None,
        seed: int = 0,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        cfg_scale: float = 3.0,
        batch_size: int = 100,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(n, H, W) code grids and their (n,) labels. `labels`: one class for all, one per sample, or None for a
        row per class (a conditional prior) or unconditional samples; the same rules as `cli.py generate`."""
        cfg = GenerateConfig(
            labels=_label_list(labels),
            n=n,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            cfg_scale=cfg_scale,
        )
        wanted = validate(cfg, self.prior)
        n = n if wanted is None else wanted.numel()
        grids = []
        for i in range(
            0, n, batch_size
        ):  # chunk by chunk, each with its own seed: the images `generate` writes
            lab = wanted[i : i + batch_size] if wanted is not None else None
            b = lab.numel() if lab is not None else min(batch_size, n - i)
            generator = chunk_generator(seed, i // batch_size, self.prior.device)
            grids.append(self.prior.sample(b, lab, temperature, top_k, top_p, cfg_scale, generator).cpu())
        return torch.cat(grids), wanted

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, H, W) codes -> (B, C, S, S) images in [-1, 1], on the CPU."""
        device = next(self.tokenizer.parameters()).device
        return torch.cat(
            [self.tokenizer.decode(codes[i : i + 256].to(device)).cpu() for i in range(0, len(codes), 256)]
        )

    def generate(
        self, n: int = 16, labels: int | list[int] | torch.Tensor | None = None, seed: int = 0, **sampling
    ) -> list[Image.Image]:
        """`n` images as PIL images (sampling options as in `sample_codes`)."""
        codes, _ = self.sample_codes(n, labels, seed, **sampling)
        return [M.image_grid(image[None], nrow=1, pad=0) for image in self.decode(codes)]


def generate_sources(
    source: str, prior: str | None, tokenizer: str | None, revision: str | None
) -> tuple[str, str]:
    """`cli.py generate --from SOURCE`: the prior and tokenizer folders that run_generate is given."""
    if tokenizer:
        raise UserError("--from names both the prior and the tokenizer; leave out --tokenizer")
    folders = locate(source, prior, revision)
    return str(folders.prior), str(folders.tokenizer)
