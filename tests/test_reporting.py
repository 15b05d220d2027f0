"""Pictures of a run: plots/ written at each sample step and at the end of `tokenize` and `train-prior`, and
`vqgen report` writing one self-contained report.html (every image inlined, nothing fetched)."""

import base64
import io
import json
import re

import pytest
from conftest import TINY_TOKENIZER_FLAGS, assert_user_error, run_cli
from PIL import Image
from vqgen.stages.reporting.run_plots import CHARTS, write_plots

TINY_PRIOR = ["--prior-opt", "embed_dim=16", "--prior-opt", "hidden_size=16", "--prior-opt", "num_layers=1"]


def history(steps=4, gan=False, shift=0.0):
    rows = []
    for s in range(1, steps + 1):
        row = {"step": s * 10, "loss": 1.0 / s + shift, "psnr": 10 + s, "usage": 0.5, "lr": 1e-3}
        if gan:
            row.update(gan_weight=0.01 * s, d_loss=1.0, g_loss=-0.1)
        rows.append(row)
    return rows


def test_charts_follow_the_recorded_metrics(tmp_path):
    (tmp_path / "samples").mkdir()
    Image.new("RGB", (8, 8), "red").save(tmp_path / "samples" / "recon_0000010.png")
    Image.new("RGB", (8, 8), "blue").save(tmp_path / "samples" / "recon_final.png")
    written = {p.name for p in write_plots(tmp_path, history(gan=True), {"psnr": 12.0}, counts=[5, 3, 0, 0])}
    assert {
        "loss.png",
        "psnr.png",
        "codebook-usage.png",
        "lr.png",
        "gan-weight.png",
        "gan-losses.png",
    } <= written
    assert {"codebook-histogram.png", "reconstructions.png"} <= written
    assert "nll.png" not in written and "perplexity.png" not in written  # nothing recorded for them
    assert Image.open(tmp_path / "plots" / "reconstructions.png").getpixel((0, 0)) == (
        0,
        0,
        255,
    )  # the newest
    assert Image.open(tmp_path / "plots" / "loss.png").size == (640, 400)
    other = tmp_path / "other"
    write_plots(other, history(gan=False, shift=0.5))
    assert not (other / "plots" / "gan-weight.png").exists()
    loss = [Image.open(f / "plots" / "loss.png").tobytes() for f in (tmp_path, other)]
    assert loss[0] != loss[1]  # the curve is drawn from the values
    assert len({c.file for c in CHARTS}) == len(CHARTS)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, image_folder):
    run = tmp_path_factory.mktemp("report") / "run"
    tiny = TINY_TOKENIZER_FLAGS[: TINY_TOKENIZER_FLAGS.index("--sample-every")]
    result = run_cli(
        "tokenize",
        "--run",
        str(run),
        "--dataset",
        str(image_folder),
        "--steps",
        "4",
        *tiny,
        "--sample-every",
        "2",
        "--log-with",
        "trackio",
        env={"TRACKIO_DIR": str(run.parent / "trackio")},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (run.parent / "tokenize.log").write_text(result.stderr)
    result = run_cli(
        "train-prior",
        "--prior",
        "gru",
        "--codes",
        str(run / "codes"),
        "--steps",
        "4",
        "--batch-size",
        "8",
        "--sample-every",
        "2",
        "--eval-every",
        "2",
        *TINY_PRIOR,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return run


def test_a_run_leaves_plots_of_both_stages(trained):
    plots = {p.name for p in (trained / "plots").iterdir()}
    assert {"loss.png", "psnr.png", "codebook-usage.png", "perplexity.png", "codebook-histogram.png"} <= plots
    assert "reconstructions.png" in plots
    counts = json.loads((trained / "codes" / "codes.json").read_text())["vocab_size"]
    assert counts == 16
    prior_plots = {p.name for p in (trained / "prior-gru" / "plots").iterdir()}
    assert {"nll.png", "lr.png", "samples.png"} <= prior_plots


def test_report_is_one_self_contained_page(trained, tmp_path):
    other = tmp_path / "other"
    result = run_cli("report", str(trained), "--compare", str(trained), "--out", str(other / "cmp.html"))
    assert result.returncode == 0, result.stderr
    result = run_cli("report", str(trained))
    assert result.returncode == 0, result.stderr
    page = (trained / "report.html").read_text()
    assert "Tokenizer" in page and "Prior: prior-gru" in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing is fetched from a network
    sources = re.findall(r'src="([^"]+)"', page)
    assert len(sources) >= 8 and all(s.startswith("data:image/png;base64,") for s in sources)
    for s in sources:
        Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1]))).verify()
    compared = (other / "cmp.html").read_text()
    assert "Comparison" in compared and compared.count("<img") > page.count("<img")


def test_report_of_a_folder_without_metrics_is_one_line(tmp_path):
    assert_user_error(run_cli("report", str(tmp_path)), "no metrics.json")
    assert_user_error(run_cli("report", str(tmp_path / "missing")), "no such run folder")


def test_trackio_received_the_training_metrics(trained):
    import sqlite3

    (db,) = (trained.parent / "trackio").glob("*.db")
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT step, metrics FROM metrics").fetchall()
    logged = {step: json.loads(m) for step, m in rows}
    history = json.loads((trained / "metrics.json").read_text())["history"]
    assert logged and set(logged) == {h["step"] for h in history if "loss" in h}
    assert all(abs(logged[h["step"]]["loss"] - h["loss"]) < 1e-6 for h in history if "loss" in h)


def test_progress_in_a_log_is_a_few_plain_lines(trained):
    """stderr is a pipe here, as in CI or a scheduler's log: no carriage-return redraws, no per-batch bars of
    datasets, and the training and encoding bars each end on a line of their own."""
    log = (trained.parent / "tokenize.log").read_text()
    assert "\r" not in log
    assert "Saving the dataset" not in log and "Map" not in log
    assert any(line.startswith("tokenizer: 100%") and "4/4" in line for line in log.splitlines()), log
    assert any(line.startswith("encode: 100%") for line in log.splitlines()), log
    assert len(log.splitlines()) < 30, log


def test_progress_lines_are_spaced_in_time(monkeypatch, capsys):
    from vqgen.stages.core.progress import progress

    monkeypatch.setenv("VQGEN_PROGRESS_SECONDS", "3600")
    with progress(total=1000, desc="work") as bar:
        for _ in range(1000):
            bar.update(1)
    lines = capsys.readouterr().err.splitlines()
    assert "\r" not in "".join(lines) and 1 <= len(lines) <= 3, lines
    assert lines[-1].startswith("work: 100%") and "1000/1000" in lines[-1]


def test_progress_lines_in_a_log_keep_the_whole_postfix(capsys):
    """A log line is not cut at a terminal's width: the last figure of a long postfix is there in full."""
    from vqgen.stages.core.progress import progress

    with progress(total=10, desc="prior") as bar:
        bar.set_postfix(loss=3.5, bits_per_token=5.123456, note="x" * 80, val_bits_per_token=5.4321)
        bar.update(10)
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("prior: 100% 10/10") and last.endswith("val_bits_per_token=5.43]"), last
