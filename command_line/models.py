"""The commands that move models and list them: `push` (to the Hub), `import` and `export` (other projects'
formats), and the registry listings (`priors`, `tokenizers`, `quantizers`, `plugins`)."""

from pathlib import Path
from typing import Annotated, Optional

import typer
from vqgen.command_line.app import listing, size_listing
from vqgen.command_line.options import (
    Device,
)


def push(
    run: Annotated[
        Path, typer.Argument(help="Run folder (tokenizer/ + prior folders) or a prior folder in one.")
    ],
    repo_id: Annotated[str, typer.Option("--repo-id", help="Hub repo to create or update: USER/NAME.")],
    prior: Annotated[
        Optional[str], typer.Option(help="Which prior, when the run holds several (gru or prior-gru).")
    ] = None,
    private: Annotated[bool, typer.Option("--private", help="Create the repo private.")] = False,
    revision: Annotated[
        Optional[str], typer.Option(help="Branch to push to (created if missing; default main).")
    ] = None,
    dry_run: Annotated[
        Optional[Path],
        typer.Option("--dry-run", help="Write the folder that would be uploaded here; upload nothing."),
    ] = None,
    with_training_state: Annotated[
        bool, typer.Option("--with-training-state", help="Also publish the newest training checkpoints.")
    ] = False,
    license: Annotated[str, typer.Option(help="Licence id for the model card.")] = "apache-2.0",
    space: Annotated[
        bool, typer.Option("--space", help="Add space/: the web demo as a Hugging Face Space folder.")
    ] = False,
    device: Device = "auto",
) -> None:
    """Publish a run's tokenizer, prior and model card as one Hugging Face Hub repo (token: HF_TOKEN or login)."""
    from vqgen.stages.commands.push import PushConfig, run_push

    cfg = PushConfig(
        run=str(run),
        repo_id=repo_id,
        prior=prior,
        private=private,
        revision=revision,
        dry_run=str(dry_run) if dry_run else None,
        with_training_state=with_training_state,
        license=license,
        device=device,
        space=space,
    )
    r = run_push(cfg)
    if r["uploaded"]:
        typer.echo(
            f"pushed {len(r['files'])} files to {r['url']} ({r['revision']}, commit {r['commit'][:12]})"
        )
    else:
        typer.echo(f"dry run: wrote the {len(r['files'])} files that would be uploaded to {r['folder']}")


def import_(
    fmt: Annotated[
        str,
        typer.Argument(
            metavar="FORMAT", help="llamagen-vq, taming, diffusers, or an installed import format."
        ),
    ],
    source: Annotated[
        str, typer.Argument(help="A local checkpoint file or folder, or a Hub id (user/name).")
    ],
    run: Annotated[
        Path, typer.Option("--run", help="Run folder to write RUN/tokenizer (or RUN/prior-NAME) into.")
    ],
    model: Annotated[
        Optional[str], typer.Option(help="The original's size preset: VQ-16, VQ-8 (llamagen-vq), GPT-B, ...")
    ] = None,
    codebook_size: Annotated[Optional[int], typer.Option(min=2, help="llamagen-vq: codes (16384).")] = None,
    codebook_embed_dim: Annotated[
        Optional[int], typer.Option(min=1, help="llamagen-vq: code dimensions (8).")
    ] = None,
    image_size: Annotated[
        Optional[int], typer.Option(min=1, help="Image size the tokenizer takes (256; the grid follows).")
    ] = None,
    model_config: Annotated[
        Optional[Path],
        typer.Option(help="taming: the model's yaml config (configs/*.yaml beside last.ckpt)."),
    ] = None,
    subfolder: Annotated[
        Optional[str], typer.Option(help="diffusers: the VQModel's folder inside a pipeline (vqvae).")
    ] = None,
    filename: Annotated[
        Optional[str], typer.Option(help="The checkpoint file inside a Hub repo or folder (vq_ds16_c2i.pt).")
    ] = None,
    revision: Annotated[Optional[str], typer.Option(help="Hub: branch, tag or commit.")] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing folder in --run.")
    ] = False,
    device: Device = "cpu",
) -> None:
    """Import a released model (LlamaGen, taming-transformers, diffusers) as a vqgen tokenizer or prior in RUN."""
    from vqgen.stages.commands.interop import ImportConfig, run_import

    options = dict(
        model=model,
        codebook_size=codebook_size,
        codebook_embed_dim=codebook_embed_dim,
        image_size=image_size,
        model_config=str(model_config) if model_config else None,
        subfolder=subfolder,
        filename=filename,
        revision=revision,
    )
    r = run_import(ImportConfig(fmt, source, str(run), overwrite, device, options))
    typer.echo(f"imported {r['summary']}; wrote {r['folder']} ({r['seconds']:.1f} s)")


def export(
    tokenizer: Annotated[
        str, typer.Argument(help="A vqgen tokenizer: RUN/tokenizer, a run folder or a Hub id.")
    ],
    fmt: Annotated[str, typer.Option("--format", help="The layout to write: diffusers (a VQModel folder).")],
    out: Annotated[Path, typer.Option("--out", help="The folder to write.")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out folder.")] = False,
) -> None:
    """Export a vqgen tokenizer for another library: `--format diffusers` writes a folder that
    diffusers.VQModel.from_pretrained loads."""
    from vqgen.stages.commands.interop import ExportConfig, run_export

    r = run_export(ExportConfig(tokenizer, fmt, str(out), overwrite))
    typer.echo(f"wrote {r['folder']} ({', '.join(r['files'])})")


def priors(
    sizes: Annotated[
        bool,
        typer.Option("--sizes", help="List the size presets (train-prior --size) with parameters and FLOPs."),
    ] = False,
    vocab_size: Annotated[
        int, typer.Option(min=2, max=2**20, help="--sizes: codes in the vocabulary.")
    ] = 16384,
    grid: Annotated[int, typer.Option(min=1, max=256, help="--sizes: side of the code grid.")] = 16,
    num_classes: Annotated[int, typer.Option(min=0, max=10**6, help="--sizes: classes.")] = 1000,
) -> None:
    """List every available prior and where it comes from; with --sizes, the size presets."""
    typer.echo(size_listing(vocab_size, grid, num_classes) if sizes else listing("prior"))


def tokenizers() -> None:
    """List every tokenizer architecture and size preset: parameters, FLOPs per image and where it comes from."""
    typer.echo(listing("tokenizer"))


def quantizers() -> None:
    """List every available quantizer and where it comes from."""
    typer.echo(listing("quantizer"))


def plugins() -> None:
    """List every available training plugin and where it comes from."""
    typer.echo(listing("plugin"))


def formats() -> None:
    """List every import format (vqgen import) and export format (vqgen export) and where it comes from."""
    from vqgen.command_line.app import format_listing

    typer.echo(format_listing())
