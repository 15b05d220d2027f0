"""RUN/report.html: one self-contained page per run (every picture inlined as a data URI, no script, no network)
with each stage's metrics, curves, sample grids and reconstructions, and `vqgen evaluate`'s tables when the run
has been evaluated. With other runs to compare, their curves are drawn on the same axes and their metrics side
by side.

A run here is a folder with `metrics.json` (a tokenizer run: RUN/metrics.json, or a prior folder), together with
its prior folders RUN/prior-*/ that hold a metrics.json.
"""

import base64
import html
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from vqgen.stages.core.errors import UserError
from vqgen.stages.reporting.charts import line_chart
from vqgen.stages.reporting.run_plots import CHARTS, curves

STYLE = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;
padding:0 1rem;color:#222}h1{font-size:1.6rem}h2{border-bottom:1px solid #ddd;padding-bottom:.3rem;margin-top:2.2rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.9rem}td,th{border:1px solid #ddd;padding:.25rem .6rem;
text-align:right}th{background:#f5f5f5}td:first-child,th:first-child{text-align:left}.grid{display:flex;
flex-wrap:wrap;gap:12px}.grid figure{margin:0}figcaption{font-size:.8rem;color:#555}img{max-width:100%;
image-rendering:auto}.pix{image-rendering:pixelated;min-width:320px}.muted{color:#666;font-size:.85rem}"""


@dataclass
class Stage:
    """One trained stage: its folder, its kind (tokenizer or prior), results and history from metrics.json."""

    name: str
    folder: Path
    kind: str
    results: dict
    history: list[dict]


def read_stages(run: Path) -> list[Stage]:
    """The stages of a run folder (the tokenizer first, then each prior), or of a single prior folder."""
    run = Path(run)
    if not run.is_dir():
        raise UserError(f"{run}: no such run folder")
    stages = []
    for folder in [run, *sorted(p for p in run.glob("prior-*") if p.is_dir())]:
        path = folder / "metrics.json"
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"{path}: not readable metrics ({exc})") from None
        kind = "tokenizer" if "tokenizer" in data else "prior" if "prior" in data else None
        if kind is None or not isinstance(data.get(kind), dict):
            raise UserError(f"{path}: not a vqgen metrics.json (no tokenizer or prior section)")
        name = "tokenizer" if kind == "tokenizer" else folder.name
        stages.append(Stage(name, folder, kind, data[kind], list(data.get("history") or [])))
    if not stages:
        raise UserError(f"{run}: no metrics.json in it or in its prior-* folders; train it first")
    return stages


def data_uri(image: "Image.Image | Path") -> str:
    if isinstance(image, Path):
        payload = image.read_bytes()
    else:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        payload = buffer.getvalue()
    return "data:image/png;base64," + base64.b64encode(payload).decode("ascii")


def figure(image: "Image.Image | Path", caption: str, pixelated: bool = False) -> str:
    css = ' class="pix"' if pixelated else ""
    return (
        f'<figure><img{css} src="{data_uri(image)}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}"
    if isinstance(value, list | dict):
        return html.escape(json.dumps(value))
    return html.escape(str(value))


def metrics_table(columns: list[str], rows: list[tuple[str, list]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["metric", *columns])
    body = "".join(
        f"<tr><td>{html.escape(k)}</td>{''.join(f'<td>{_cell(v)}</td>' for v in values)}</tr>"
        for k, values in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def stage_metrics(stages: list[Stage]) -> str:
    """The end-of-run results of stages of one kind, one column per stage."""
    keys = sorted(
        {k for s in stages for k, v in s.results.items() if not isinstance(v, dict | list) or k == "grid"}
    )
    return metrics_table(
        [s.name for s in stages], [(k, [s.results.get(k, "") for s in stages]) for k in keys]
    )


def stage_curves(stages: list[Stage], labels: list[str]) -> list[str]:
    """Every chart the stages have metrics for; with several stages, one line per stage (its first series)."""
    figures = []
    for chart in CHARTS:
        if len(stages) == 1:
            series = curves(chart, stages[0].history, stages[0].results)
        else:
            series = {}
            for label, stage in zip(labels, stages):
                found = curves(chart, stage.history, stage.results)
                if found:
                    series[label] = next(iter(found.values()))
        if series:
            figures.append(figure(line_chart(chart.title, series, log_y=chart.log_y), chart.title))
    return figures


def stage_pictures(stage: Stage) -> list[str]:
    """Sample grids and reconstructions, and the codebook histogram that `tokenize` drew."""
    pictures = []
    candidates = [
        (stage.folder / "plots" / "codebook-histogram.png", "codebook usage histogram", False),
        (
            stage.folder / "samples" / "recon_final.png",
            "held-out originals above their reconstructions",
            True,
        ),
        (stage.folder / "generated.png", "generate: the newest grid", True),
    ]
    samples = sorted((stage.folder / "samples").glob("samples_*.png"))
    if samples:
        candidates.append((samples[-1], f"samples at training step {samples[-1].stem.split('_')[-1]}", True))
    for path, caption, pixelated in candidates:
        if path.is_file():
            pictures.append(figure(path, caption, pixelated))
    return pictures


def evaluation_section(run: Path) -> str:
    """`vqgen evaluate`'s report.md (tables and notes) as HTML, when the run has one."""
    path = Path(run) / "eval" / "report.md"
    if not path.is_file():
        return ""
    return "<h2>Evaluation</h2>" + markdown_to_html(path.read_text())


def markdown_to_html(text: str) -> str:
    """The markdown our reports are written in: headings, pipe tables, paragraphs, **bold** and `code`."""
    out, table = [], []

    def inline(s: str) -> str:
        s = html.escape(s)
        for mark, tag in (("**", "b"), ("`", "code")):
            parts = s.split(mark)
            s = "".join(p if i % 2 == 0 else f"<{tag}>{p}</{tag}>" for i, p in enumerate(parts))
        return s

    def flush() -> None:
        if table:
            rows = [r for r in table if not set(r.replace("|", "").strip()) <= set("-: ")]
            cells = [[c.strip() for c in r.strip().strip("|").split("|")] for r in rows]
            head = "".join(f"<th>{inline(c)}</th>" for c in cells[0])
            body = "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in cells[1:])
            out.append(f"<table><tr>{head}</tr>{body}</table>")
            table.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")) + 1, 4)
            out.append(f"<h{level}>{inline(line.lstrip('#').strip())}</h{level}>")
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
    flush()
    return "\n".join(out)


def render_report(run: Path, others: list[Path] = ()) -> str:
    """The HTML page: the run's stages (and, with `others`, the comparison)."""
    from vqgen import __version__

    runs = [Path(run), *map(Path, others)]
    by_run = [read_stages(r) for r in runs]
    parts = [f"<h1>vqgen run: {html.escape(runs[0].resolve().name)}</h1>"]
    parts.append(
        f'<p class="muted">{html.escape(str(runs[0]))} · written {time.strftime("%Y-%m-%d %H:%M")} by vqgen '
        f"{__version__} · self-contained: every picture is inside this file.</p>"
    )
    if len(runs) > 1:
        parts.append(comparison(runs, by_run))
    for stage in by_run[0]:
        title = "Tokenizer" if stage.kind == "tokenizer" else f"Prior: {stage.folder.name}"
        parts.append(f"<h2>{html.escape(title)}</h2>")
        parts.append(stage_metrics([stage]))
        parts.append('<div class="grid">' + "".join(stage_curves([stage], [stage.name])) + "</div>")
        parts.append('<div class="grid">' + "".join(stage_pictures(stage)) + "</div>")
    parts.append(evaluation_section(runs[0]))
    body = "\n".join(parts)
    return f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>vqgen report</title><style>{STYLE}</style></head><body>{body}</body></html>'


def comparison(runs: list[Path], by_run: list[list[Stage]]) -> str:
    """Each kind of stage across the runs: metrics side by side and curves overlaid."""
    parts = ["<h2>Comparison</h2>"]
    names = [r.resolve().name for r in runs]
    for kind in ("tokenizer", "prior"):
        stages, labels = [], []
        for name, run_stages in zip(names, by_run):
            for s in run_stages:
                if s.kind == kind:
                    stages.append(s)
                    labels.append(name if kind == "tokenizer" else f"{name}/{s.folder.name}")
        if len(stages) < 2:
            continue
        parts.append(f"<h3>{'Tokenizers' if kind == 'tokenizer' else 'Priors'}</h3>")
        keys = sorted({k for s in stages for k, v in s.results.items() if isinstance(v, int | float)})
        parts.append(metrics_table(labels, [(k, [s.results.get(k, "") for s in stages]) for k in keys]))
        parts.append('<div class="grid">' + "".join(stage_curves(stages, labels)) + "</div>")
    return "\n".join(parts)


def write_report(run: Path, others: list[Path] = (), out: Path | None = None) -> Path:
    """Write RUN/report.html (or OUT) in one piece and return its path."""
    from vqgen.stages.core.files import write_text

    page = render_report(run, others)
    return write_text(page, Path(out) if out else Path(run) / "report.html")
