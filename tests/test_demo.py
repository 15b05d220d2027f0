"""The web demo as a person uses it: `vqgen demo RUN` started as a real process, driven through gradio_client
(generate and reconstruct return images of the right size; a bad input is a message), and opened in headless
Chromium (Debian's `chromium`, driven by Playwright): click Generate, wait for the images, save a screenshot.
The report.html of a run is opened the same way and its images must load.

The browser tests need a Chromium executable (`apt-get install chromium`; CHROMIUM=path to name another). Without
one they are skipped, unless VQGEN_REQUIRE_BROWSER=1 (set by .ci/run), where a missing browser fails them.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT
from PIL import Image

pytest.importorskip("gradio_client")
SHOTS = Path(os.environ.get("VQGEN_SCREENSHOTS", ROOT / "runs" / "screenshots"))


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A run folder of an untrained tiny tokenizer (16 px grey, 4x4 codes of 16) and a class-conditional GRU prior
    on its codes, in the layout `tokenize` and `train-prior` write: the demo serves any such pair."""
    import json

    from vqgen.stages.artifacts.models import save_model
    from vqgen.stages.core.build import build_prior, tokenizer_config
    from vqgen.stages.core.registry import TOKENIZERS

    root = tmp_path_factory.mktemp("demo") / "run"
    config = tokenizer_config(
        "vqvae",
        {"image_size": 16, "channels": 1, "base_channels": 8, "num_res_blocks": 1},
        {"codebook_size": 16, "code_dim": 4},
    )
    tokenizer = TOKENIZERS.get(config.model_type)(config)
    save_model(tokenizer, root / "tokenizer")
    grid = config.grid_size
    meta = {"vocab_size": 16, "grid_height": grid, "grid_width": grid, "num_classes": 3,
            "tokenizer_fingerprint": tokenizer.fingerprint(), "class_names": ["ant", "bee", "cat"]}  # fmt: skip
    (root / "codes").mkdir()
    (root / "codes" / "codes.json").write_text(json.dumps(meta))
    prior = build_prior("gru", meta, {"embed_dim": "8", "hidden_size": "8", "num_layers": "1"})
    save_model(prior, root / "prior-gru")
    return root


@pytest.fixture(scope="module")
def demo_url(run):
    """`python cli.py demo RUN` in its own process; the URL it prints. Stopped with Ctrl-C (SIGINT) at the end."""
    env = {
        **os.environ,
        "PYTHONWARNINGS": "ignore",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "NO_PROXY": "127.0.0.1",
    }
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), "demo", str(run), "--device", "cpu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    lines, deadline = [], time.monotonic() + 240
    url = None
    while url is None and time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            break
        lines.append(line)
        found = re.search(r"serving (http://127\.0\.0\.1:\d+/)", line)
        url = found.group(1) if found else None
    if url is None:
        process.kill()
        pytest.fail("the demo did not start:\n" + "".join(lines)[-3000:])
    yield url
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def test_generate_and_reconstruct_through_gradio_client(demo_url, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(demo_url, verbose=False)
    gallery = client.predict("prior-gru", "1: bee", 1.0, 0, 0, None, "constant", 0, 6, api_name="/generate")
    assert len(gallery) == 6
    sizes = {Image.open(item["image"]).size for item in gallery}
    assert sizes == {(160, 160)}  # 16 px samples, enlarged 10x without smoothing
    upload = tmp_path / "photo.png"
    Image.new("RGB", (40, 30), (200, 40, 40)).save(upload)
    codes, pair, line = client.predict(handle_file(str(upload)), api_name="/reconstruct")
    assert Image.open(codes).size == (224, 224)  # the 4x4 code grid, one colour per code
    assert Image.open(pair).size == (320, 160)  # input | reconstruction at 16 px, enlarged
    assert re.match(r"PSNR -?\d+\.\d\d dB at 16 px; 4x4 codes of 16", line), line


def test_bad_input_is_a_message_in_the_app(demo_url):
    from gradio_client import Client

    client = Client(demo_url, verbose=False)
    with pytest.raises(Exception, match=r"temperature must lie in") as caught:
        client.predict("prior-gru", "1: bee", 500.0, 0, 0, None, "constant", 0, 4, api_name="/generate")
    assert "Traceback" not in str(caught.value)
    with pytest.raises(Exception, match=r"upload an image first"):
        client.predict(None, api_name="/reconstruct")


def chromium() -> str:
    found = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("VQGEN_REQUIRE_BROWSER") == "1":
        pytest.fail("no chromium executable, and VQGEN_REQUIRE_BROWSER=1 (apt-get install chromium)")
    pytest.skip("no chromium executable (apt-get install chromium, or CHROMIUM=path)")


@pytest.fixture(scope="module")
def browser():
    executable = chromium()
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox", "--disable-gpu"])
        yield browser
        browser.close()


def test_the_demo_in_a_browser(demo_url, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(demo_url, wait_until="domcontentloaded", timeout=120_000)
    page.locator("#generate").click(timeout=120_000)
    images = page.locator("#samples img")
    images.nth(14).wait_for(
        state="attached", timeout=180_000
    )  # 16 asked, a row per class: 3 x 5, as they come
    page.wait_for_function(
        "() => [...document.querySelectorAll('#samples img')].every(i => i.complete && i.naturalWidth > 0)",
        timeout=60_000,
    )
    assert images.count() == 15
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "demo-generate.png"), full_page=True)
    page.get_by_role("tab", name="Model card").click()
    assert page.get_by_text("vqgen").first.is_visible()
    page.close()


def test_the_report_in_a_browser(run, browser, tmp_path):
    import json

    from vqgen.stages.reporting.report import write_report

    history = [
        {"step": s, "loss": 1 / s, "bits_per_token": 4 - s / 10, "val_bits_per_token": 4.1 - s / 10}
        for s in range(1, 6)
    ]
    (run / "prior-gru" / "metrics.json").write_text(
        json.dumps({"prior": {"val_bits_per_token": 3.6}, "history": history})
    )
    path = write_report(run, out=tmp_path / "report.html")
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.goto(path.as_uri())
    loaded = page.evaluate("() => [...document.images].map(i => i.complete && i.naturalWidth > 0)")
    assert len(loaded) == 2 and all(loaded)  # the loss and NLL curves of the prior
    assert page.evaluate("() => [...document.images].map(i => i.naturalWidth)") == [640, 640]
    page.screenshot(path=str(SHOTS / "report.png"), full_page=True)
    page.close()


def test_push_space_serves_the_published_model(run, tmp_path):
    """`push --space` writes space/ beside the published model; its app.py, started as a Space starts it
    (GRADIO_SERVER_* set, VQGEN_MODEL pointing at the published folder instead of the Hub), generates."""
    import urllib.request

    from conftest import run_cli
    from gradio_client import Client
    from vqgen.stages.reporting.demo import free_port

    out = tmp_path / "publish"
    result = run_cli(
        "push", str(run), "--repo-id", "you/tiny-vqgen", "--dry-run", str(out), "--space", "--device", "cpu"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in (out / "space").iterdir()) == ["README.md", "app.py", "requirements.txt"]
    assert 'os.environ.get("VQGEN_MODEL", "you/tiny-vqgen")' in (out / "space" / "app.py").read_text()
    assert "sdk: gradio" in (out / "space" / "README.md").read_text()
    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "VQGEN_MODEL": str(out), "GRADIO_ANALYTICS_ENABLED": "False", "NO_PROXY": "127.0.0.1"}  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "app.py"],
        cwd=out / "space",
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url, deadline = f"http://127.0.0.1:{port}/", time.monotonic() + 240
    try:
        while True:
            try:
                urllib.request.urlopen(url, timeout=5).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("the Space app did not start:\n" + process.stdout.read().decode()[-3000:])
                time.sleep(1)
        gallery = Client(url, verbose=False).predict(
            "prior", "2: cat", 1.0, 0, 0, 1.0, "constant", 0, 3, api_name="/generate"
        )
        assert len(gallery) == 3
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
