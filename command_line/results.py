"""The commands that use a model: `generate` (images from a prior), `evaluate` (every stage of a run measured),
`report` (one page of a run's metrics and pictures) and `demo` (a web app over a trained model)."""

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from vqgen.command_line.options import (
    Device,
    Overwrite,
    Seed,
)
from vqgen.stages.core.errors import UserError


def generate(
    prior: Annotated[
        Optional[Path],
        typer.Option(help="A prior folder (default runs/demo/prior-gru); with --from, a prior's name."),
    ] = None,
    source: Annotated[
        Optional[str],
        typer.Option("--from", help="Hub id (user/name), published folder or run folder: tokenizer + prior."),
    ] = None,
    revision: Annotated[
        Optional[str], typer.Option(help="With --from a Hub id: branch, tag, commit.")
    ] = None,
    tokenizer: Annotated[
        Optional[str], typer.Option(help="Tokenizer folder (default: `tokenizer` beside the prior).")
    ] = None,
    label: Annotated[
        list[int], typer.Option("--label", help="Class to sample (repeatable; default: a row per class).")
    ] = [],  # noqa: B006
    n: Annotated[int, typer.Option("--n", min=1, max=10**8, help="Number of images.")] = 100,
    temperature: Annotated[
        Optional[float],
        typer.Option(help="Softmax temperature (> 0). Default: the prior's own (its config)."),
    ] = None,
    top_k: Annotated[Optional[int], typer.Option(min=1, help="Keep the k most likely codes.")] = None,
    top_p: Annotated[Optional[float], typer.Option(help="Nucleus sampling mass in (0, 1].")] = None,
    cfg_scale: Annotated[
        Optional[float],
        typer.Option(
            help="Classifier-free guidance (1 = off). Default: the prior's own for a conditional prior (its config)."
        ),
    ] = None,
    cfg_schedule: Annotated[
        str, typer.Option(help="Guidance over the positions: constant, linear (ramps up) or power.")
    ] = "constant",
    cfg_power: Annotated[
        float, typer.Option(min=0.0, max=100.0, help="Exponent of the power schedule.")
    ] = 1.0,
    cfg_interval: Annotated[
        tuple[float, float],
        typer.Option(help="Guide only positions whose fraction of the grid lies in [LO, HI)."),
    ] = (0.0, 1.0),
    seed: Seed = 0,
    out: Annotated[
        Optional[Path], typer.Option(help="Grid PNG (default: PRIOR/generated.png); images go beside it.")
    ] = None,
    batch_size: Annotated[
        int,
        typer.Option(
            min=1, max=65536, help="Images sampled, decoded and written per chunk (memory stays bounded)."
        ),
    ] = 100,
    device: Device = "auto",
    compile: Annotated[
        bool,
        typer.Option(
            "--compile",
            help="torch.compile the prior's per-token step (falls back to eager, with a warning).",
        ),
    ] = False,
    overwrite: Overwrite = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted generation with the same options.")
    ] = False,
) -> None:
    """Sample code grids from a prior and decode them into a PNG grid and individual images."""
    from vqgen.stages.commands.generate import GenerateConfig, run_generate
    from vqgen.stages.sampling.config import SamplingConfig

    prior_dir, tokenizer, out = _generate_paths(prior, source, revision, tokenizer, out)
    sampling = SamplingConfig(
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        cfg_scale=cfg_scale,
        cfg_schedule=cfg_schedule,
        cfg_power=cfg_power,
        cfg_interval=cfg_interval,
    )
    cfg = GenerateConfig(
        prior=prior_dir,
        tokenizer=tokenizer,
        labels=label or None,
        n=n,
        sampling=sampling,
        seed=seed,
        out=str(out) if out else None,
        overwrite=overwrite,
        batch_size=batch_size,
        resume=resume,
        device=device,
        compile=compile,
    )
    r = run_generate(cfg)
    speed = f", {r['tokens_per_s']:,.0f} tokens/s sampling" if r["sampled"] else ""
    typer.echo(f"wrote {r['out']} and {r['n']} images in {r['folder']} ({r['sampled']} sampled now{speed})")


def _generate_paths(
    prior: Optional[Path],
    source: Optional[str],
    revision: Optional[str],
    tokenizer: Optional[str],
    out: Optional[Path],
) -> tuple[str, Optional[str], Optional[Path]]:
    """(prior folder, tokenizer, --out) that generate's flags name: with --from, both models from one place (and
    the grid in ./generated.png unless --out says otherwise); --revision only with --from."""
    prior_dir = str(prior or "runs/demo/prior-gru")
    if source:
        from vqgen.stages.artifacts.published import generate_sources as resolve

        prior_dir, tokenizer = resolve(source, str(prior) if prior else None, tokenizer, revision)
        out = out or Path("generated.png")
    elif revision:
        raise UserError("--revision applies to --from only")
    return prior_dir, tokenizer, out


class FeatureChoice(str, Enum):
    auto = "auto"
    inception = "inception"
    classifier = "classifier"


def evaluate(
    run: Annotated[
        Optional[Path], typer.Option("--run", help="Run folder to evaluate (default runs/demo).")
    ] = None,
    compare: Annotated[
        bool,
        typer.Option(
            "--compare",
            help="Compare priors side by side: the FOLDERS given (runs or RUN/prior-*), or the priors of --run.",
        ),
    ] = False,
    folders: Annotated[
        Optional[list[Path]], typer.Argument(help="With --compare: run or prior folders.", show_default=False)
    ] = None,
    test_images: Annotated[
        Optional[Path],
        typer.Option(help="Evaluate on this folder of images or MNIST idx files, not the held-out split."),
    ] = None,
    n_samples: Annotated[int, typer.Option(min=1, max=10**7, help="Images sampled per prior.")] = 1000,
    cfg_scale: Annotated[
        Optional[float],
        typer.Option(
            min=-100.0,
            max=100.0,
            help="Classifier-free guidance for class-conditional priors (default: each prior's own, as generate).",
        ),
    ] = None,
    seed: Seed = 0,
    features: Annotated[
        FeatureChoice, typer.Option(help="FID features: Inception if it loads (auto), else the classifier.")
    ] = FeatureChoice.auto,
    device: Device = "auto",
    batch_size: Annotated[int, typer.Option(min=1, max=65536, help="Images or samples per batch.")] = 250,
    classifier_epochs: Annotated[
        int, typer.Option(min=1, max=10000, help="Training epochs of the feature classifier.")
    ] = 30,
    classifier_width: Annotated[
        int, typer.Option(min=1, max=4096, help="Width of the feature classifier.")
    ] = 32,
    out: Annotated[
        Optional[Path], typer.Option(help="--compare: output folder (default RUN/eval for one run).")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing evaluation (and comparison).")
    ] = False,
) -> None:
    """Evaluate a run: tokenizer reconstruction and rFID, and every prior's NLL, gFID, precision/recall and class
    accuracy; writes RUN/eval/metrics.json and report.md. With --compare, one table and a quality-vs-speed plot."""
    from vqgen.stages.commands.evaluate import CompareConfig, EvaluateConfig, run_compare, run_evaluate

    check_evaluate_flags(run, compare, folders, out)
    cfg = EvaluateConfig(
        run_dir=str(run or Path("runs/demo")),
        test_images=str(test_images) if test_images else None,
        n_samples=n_samples,
        cfg_scale=cfg_scale,
        seed=seed,
        features=features.value,
        device=device,
        batch_size=batch_size,
        classifier_epochs=classifier_epochs,
        classifier_width=classifier_width,
        overwrite=overwrite,
    )
    if compare:
        paths = [str(f) for f in folders] if folders else [cfg.run_dir]
        run_compare(CompareConfig(paths=paths, out=str(out) if out else None, evaluate=cfg), log=typer.echo)
    else:
        run_evaluate(cfg, log=typer.echo)


def check_evaluate_flags(
    run: Optional[Path], compare: bool, folders: Optional[list[Path]], out: Optional[Path]
):
    """evaluate's flags that only go together: FOLDERS and --out with --compare; FOLDERS or --run, not both."""
    if folders and not compare:
        raise UserError("folders given without --compare; evaluate one run with --run RUN")
    if folders and run is not None:
        raise UserError("give either --run RUN --compare or --compare FOLDER..., not both")
    if out is not None and not compare:
        raise UserError("--out is for --compare; an evaluation is written to RUN/eval")


def report(
    run: Annotated[Path, typer.Argument(help="Run folder (or a prior folder) to report on.")],
    compare: Annotated[
        list[Path], typer.Option("--compare", help="Another run to overlay and set beside it (repeatable).")
    ] = [],  # noqa: B006
    out: Annotated[Optional[Path], typer.Option(help="Write here instead of RUN/report.html.")] = None,
) -> None:
    """Write RUN/report.html: metrics, curves, samples and evaluation in one self-contained page (rebuilt
    from the run's files each time; opens offline)."""
    from vqgen.stages.commands.report import ReportConfig, run_report

    cfg = ReportConfig(run=str(run), compare=[str(c) for c in compare], out=str(out) if out else None)
    typer.echo(f"wrote {run_report(cfg)}")


def demo(
    source: Annotated[str, typer.Argument(help="A run folder, a published folder or a Hub id (user/name).")],
    revision: Annotated[Optional[str], typer.Option(help="With a Hub id: branch, tag or commit.")] = None,
    host: Annotated[
        str, typer.Option(help="Address to serve on (127.0.0.1: this machine only).")
    ] = "127.0.0.1",
    port: Annotated[
        Optional[int], typer.Option(min=1, max=65535, help="Port (default: a free one, printed).")
    ] = None,
    device: Device = "auto",
) -> None:
    """A web demo of a trained model: generate, reconstruct an uploaded image, read its card (needs gradio:
    pip install -e '.[demo]'). Serves until Ctrl-C."""
    from vqgen.stages.commands.demo import DemoConfig, run_demo

    run_demo(DemoConfig(source, revision, host, port, device), say=typer.echo)
