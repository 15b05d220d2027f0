"""`vqgen demo RUN|PUBLISHED|HUB_ID`: the web demo (stages/reporting/demo.py) on 127.0.0.1, a free port unless
--port says one; the URL is printed, and it serves until Ctrl-C."""

from dataclasses import dataclass

from vqgen.stages.core.errors import UserError


@dataclass
class DemoConfig:
    source: str  # a run folder, a published folder or a Hub id
    revision: str | None = None  # with a Hub id: branch, tag or commit
    host: str = "127.0.0.1"
    port: int | None = None  # None: a free port
    device: str = "auto"


def run_demo(cfg: DemoConfig, say=print, block: bool = True) -> str:
    """Load the models, build the app and serve it; returns the URL (at once when `block` is False)."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UserError("the demo needs gradio: pip install -e '.[demo]' (or pip install gradio)") from None
    from vqgen.stages.core.device import resolve_device
    from vqgen.stages.reporting.demo import DemoModels, build_app, launch

    device = resolve_device(cfg.device)  # a device that is not here: refused before anything is loaded
    models = DemoModels.load(cfg.source, cfg.revision).to(device)
    say(f"demo: {cfg.source} with {', '.join(models.prior_folders)} on {device}")
    return launch(build_app(models), cfg.host, cfg.port, say=say, block=block)
