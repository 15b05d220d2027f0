"""Pictures of a run: FOLDER/plots/*.png, drawn from the metrics the trainer records (its `history`, the same list
metrics.json keeps) at every sample step and again at the end, when the held-out results and the codes are known.

    RUN/plots/loss.png, psnr.png, codebook-usage.png, perplexity.png, dead-codes.png, lr.png, grad-norm.png,
              gan-weight.png + gan-losses.png (with --plugin gan), codebook-histogram.png (at the end),
              reconstructions.png (originals above their reconstructions: the newest samples/recon_*.png)
    RUN/prior-NAME/plots/nll.png (training and held-out bits/token), lr.png, grad-norm.png, samples.png

A chart is drawn only when the run recorded one of its metrics, so the same code serves every stage and plugin.
"""

from dataclasses import dataclass, field
from pathlib import Path

import torch
from vqgen.stages.core.files import save_png, write_bytes
from vqgen.stages.reporting.charts import bar_chart, line_chart


@dataclass(frozen=True)
class Chart:
    file: str
    title: str
    series: tuple[tuple[str, str], ...]  # (legend, history key)
    final: tuple[
        tuple[str, str], ...
    ] = ()  # (legend, key of the end-of-run results): one point at the last step
    log_y: bool = False
    scale: dict[str, float] = field(default_factory=dict)  # key -> factor (e.g. 100 for a share in percent)


CHARTS = (
    Chart("loss.png", "training loss", (("total", "loss"), ("reconstruction", "recon_loss"), ("quantizer", "vq_loss")),
          log_y=True),
    Chart("psnr.png", "PSNR (dB)", (("training batches", "psnr"),), (("held-out", "psnr"),)),
    Chart("codebook-usage.png", "codebook usage (%)", (("training batches", "usage"),),
          (("held-out", "codebook_usage"),), scale={"usage": 100, "codebook_usage": 100}),
    Chart("perplexity.png", "codebook perplexity", (("training batches", "perplexity"),),
          (("held-out", "perplexity"),)),
    Chart("dead-codes.png", "dead codes", (("training", "dead_codes"),), (("held-out", "dead_codes"),)),
    Chart("nll.png", "NLL (bits/token)", (("training batches", "bits_per_token"), ("held-out", "val_bits_per_token")),
          (("held-out (end)", "val_bits_per_token"),)),
    Chart("gan-weight.png", "GAN weight", (("applied", "gan_weight"), ("adaptive", "adaptive_weight"))),
    Chart("gan-losses.png", "GAN losses", (("generator", "g_loss"), ("discriminator", "d_loss"))),
    Chart("lr.png", "learning rate", (("lr", "lr"),)),
    Chart("grad-norm.png", "gradient norm", (("grad norm", "grad_norm"),), log_y=True),
)  # fmt: skip


def curves(chart: Chart, history: list[dict], final: dict | None) -> dict[str, list[tuple[float, float]]]:
    """The chart's series from the history (and the end-of-run results), each a list of (step, value)."""
    series = {
        legend: [(h["step"], h[key] * chart.scale.get(key, 1)) for h in history if key in h]
        for legend, key in chart.series
    }
    last = max((h["step"] for h in history), default=0)
    recorded_at_end = {k for h in history if h["step"] == last for k in h}
    for legend, key in chart.final:
        if final and isinstance(final.get(key), int | float) and key not in recorded_at_end:
            series[legend] = [(last, final[key] * chart.scale.get(key, 1))]
    return {legend: points for legend, points in series.items() if points}


def code_counts(codes: torch.Tensor, codebook_size: int) -> list[int]:
    """How often each code is used in `codes` (any shape), sorted from the most used code down."""
    counts = torch.bincount(codes.reshape(-1).long(), minlength=codebook_size)
    return sorted(counts.tolist(), reverse=True)


def codebook_histogram(counts: list[int]) -> "Image.Image":  # noqa: F821
    used = sum(1 for c in counts if c)
    total = sum(counts) or 1
    return bar_chart(
        f"% of the training codes' positions per code: {used} of {len(counts)} codes used",
        [100 * c / total for c in counts],
        xlabel="codes, from the most used down",
    )


def write_plots(
    folder: str | Path, history: list[dict], final: dict | None = None, counts: list[int] | None = None
) -> list[Path]:
    """Draw every chart the run has metrics for into FOLDER/plots/ (replacing older ones) and copy the newest
    sample grid beside them; returns the files written."""
    folder = Path(folder)
    out = folder / "plots"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for chart in CHARTS:
        series = curves(chart, history, final)
        if series:
            written.append(save_png(line_chart(chart.title, series, log_y=chart.log_y), out / chart.file))
    if counts:
        written.append(save_png(codebook_histogram(counts), out / "codebook-histogram.png"))
    for pattern, name in (("recon_*.png", "reconstructions.png"), ("samples_*.png", "samples.png")):
        grids = sorted((folder / "samples").glob(pattern))  # recon_final.png sorts after the numbered ones
        if grids:
            write_bytes(grids[-1].read_bytes(), out / name)
            written.append(out / name)
    return written
