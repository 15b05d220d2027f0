"""vqgen command line: thin typed commands that parse options and delegate to vqgen.stages.

    python cli.py tokenize --run runs/demo            # stage one on the embedded MNIST digits
    python cli.py train-prior --prior gru --codes runs/demo/codes
    python cli.py generate --prior runs/demo/prior-gru --label 7
    python cli.py priors | plugins | tokenizers | quantizers | formats   # what is installed, and from where

A user's mistake prints one line and exits with code 2; an interrupted run keeps its checkpoint.
"""

import sys
from pathlib import Path

import typer


def _run_from_clone() -> None:
    """`python cli.py ...` in a clone: load this folder as the package `vqgen` (and only under that name: the
    folder leaves sys.path, so `stages` or `priors` never shadow a user's modules), then run its CLI."""
    import importlib.util

    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    spec = importlib.util.spec_from_file_location(
        "vqgen", here / "__init__.py", submodule_search_locations=[str(here)]
    )
    package = importlib.util.module_from_spec(spec)
    sys.modules["vqgen"] = package
    spec.loader.exec_module(package)
    from vqgen.cli import main as package_main

    package_main()
    raise SystemExit(0)


if __name__ == "__main__" and not __package__:
    _run_from_clone()

from vqgen.command_line import models, results, train  # noqa: E402
from vqgen.command_line.app import run_app  # noqa: E402

app = typer.Typer(
    help="vqgen: an image tokenizer (VQ-VAE, VQGAN) and swappable autoregressive priors, in one pipeline.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's plain help: an option's help wraps below it, readable at 80 columns
)
COMMANDS = {  # name -> the typed command (vqgen.command_line), in the order --help lists them
    "tokenize": train.tokenize,
    "train-prior": train.train_prior,
    "generate": results.generate,
    "push": models.push,
    "evaluate": results.evaluate,
    "encode": train.encode,
    "import": models.import_,
    "export": models.export,
    "report": results.report,
    "demo": results.demo,
    "priors": models.priors,
    "tokenizers": models.tokenizers,
    "quantizers": models.quantizers,
    "plugins": models.plugins,
    "formats": models.formats,
}
for name, command in COMMANDS.items():
    app.command(name)(command)


def main() -> None:
    """Entry point: user mistakes become one line on stderr and exit code 2 (vqgen.command_line.app)."""
    from vqgen.stages.artifacts.hub import use_short_hub_timeouts
    from vqgen.stages.core.progress import quiet_library_bars

    use_short_hub_timeouts()  # before huggingface_hub is imported
    quiet_library_bars()  # in a log: no per-batch bars from datasets and huggingface_hub (before their import)
    run_app(app)


if __name__ == "__main__":
    main()
