"""The web demo (`vqgen demo RUN|PUBLISHED|HUB_ID`): a Gradio app, as LlamaGen, VAR and MaskGIT ship one.

Three tabs: **Generate** (prior, class, temperature, top-k/top-p, guidance and its schedule, seed, n; the images
appear chunk by chunk as they are decoded, seeded as `vqgen generate --batch-size 8` seeds them), **Reconstruct**
(an uploaded image through the tokenizer: its code grid as a picture, the reconstruction and the PSNR) and the
model's **card**. A bad input (a temperature out of range, guidance on an unconditional prior, no image) is a
message in the app, never a traceback. gradio is an optional extra (`pip install -e .[demo]`); the functions
below that do the work take and return plain values and PIL images, so they are tested without a browser.
"""

import colorsys
import math
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from vqgen.stages.artifacts.models import load_prior, load_tokenizer
from vqgen.stages.artifacts.published import locate
from vqgen.stages.core.errors import UserError
from vqgen.stages.data.images import fit_array, to_float
from vqgen.stages.sampling.config import GUIDANCE_SCHEDULES, SamplingConfig, default_cfg_scale
from vqgen.stages.sampling.sampler import check_pair, decode, resolve_labels, sample_chunks, to_pil

CHUNK = 8  # images sampled and decoded per step of the progress shown in the app
MAX_IMAGES = 64
ALL_CLASSES = "a row per class"
DISPLAY = 160  # small images (28 px digits) are enlarged to at least this many pixels, without smoothing


@dataclass
class DemoModels:
    """What a demo serves: one tokenizer, the priors beside it (a run may hold several) and the model card."""

    source: str
    tokenizer: torch.nn.Module
    prior_folders: dict[str, Path]
    class_names: list[str] | None
    card: str
    priors: dict = field(default_factory=dict)  # name -> loaded prior, filled on first use

    @classmethod
    def load(cls, source: str, revision: str | None = None) -> "DemoModels":
        """From a run folder (every prior-* in it), a published folder or a Hub id (one prior)."""
        run = Path(source).expanduser()
        names = (
            sorted(p.name for p in run.glob("prior-*") if (p / "config.json").is_file())
            if run.is_dir()
            else []
        )
        folders = locate(source, names[0] if names else None, revision)
        priors = {n: run / n for n in names} if names else {folders.prior.name: folders.prior}
        tokenizer = load_tokenizer(folders.tokenizer).eval()
        return cls(
            source, tokenizer, priors, folders.class_names, model_card(folders.tokenizer, folders.prior)
        )

    def prior(self, name: str):
        if name not in self.prior_folders:
            raise UserError(f"no prior named {name!r}; choose one of {', '.join(self.prior_folders)}")
        if name not in self.priors:
            prior = load_prior(self.prior_folders[name]).eval()
            check_pair(prior, self.tokenizer)
            prior.to(next(self.tokenizer.parameters()).device)
            self.priors[name] = prior
        return self.priors[name]

    def to(self, device) -> "DemoModels":
        """Serve on `device`: the tokenizer now, each prior when it is first loaded."""
        self.device = torch.device(device)
        self.tokenizer.to(self.device)
        return self

    def defaults(self, name: str) -> tuple[float, float]:
        """The prior's own temperature and guidance scale (what `vqgen generate` uses without flags)."""
        prior = self.prior(name)
        return prior.config.sample_temperature, default_cfg_scale(prior)

    def class_choices(self) -> list[str]:
        prior = self.prior(next(iter(self.prior_folders)))
        count = prior.config.num_classes
        names = self.class_names or [str(i) for i in range(count)]
        return [ALL_CLASSES, *[f"{i}: {names[i]}" if names[i] != str(i) else str(i) for i in range(count)]]


def model_card(tokenizer_dir: Path, prior_dir: Path) -> str:
    """The published card (README.md beside vqgen.json), else the prior's and the tokenizer's own cards."""
    published = prior_dir.parent / "README.md"
    if published.is_file() and (prior_dir.parent / "vqgen.json").is_file():
        return strip_front_matter(published.read_text(encoding="utf-8", errors="replace"))
    cards = [p / "README.md" for p in (prior_dir, tokenizer_dir) if (p / "README.md").is_file()]
    texts = [strip_front_matter(c.read_text(encoding="utf-8", errors="replace")) for c in cards]
    return "\n\n---\n\n".join(texts) or "This model has no card."


def strip_front_matter(text: str) -> str:
    """A card without its YAML header (shown as metadata on the Hub, noise in the app)."""
    if text.startswith("---\n"):
        end = text.find("\n---", 4)
        if end != -1:
            return text[end + 4 :].lstrip()
    return text


def enlarge(image: Image.Image, least: int = DISPLAY) -> Image.Image:
    factor = max(1, math.ceil(least / max(image.size)))
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


def parse_class(choice: str | None) -> int | None:
    if choice in (None, "", ALL_CLASSES):
        return None
    return int(str(choice).split(":")[0])


def generate_images(
    models: DemoModels, prior_name: str, class_choice: str | None, n: int, seed: int, settings: SamplingConfig
) -> Iterator[list[Image.Image]]:
    """The images so far after each chunk of CHUNK samples (the last yield holds all of them)."""
    if not 1 <= int(n) <= MAX_IMAGES:
        raise UserError(f"n must lie between 1 and {MAX_IMAGES}, got {n}")
    settings.validate()
    prior = models.prior(prior_name)
    label = parse_class(class_choice)
    wanted = resolve_labels(prior, int(n), None if label is None else [label])  # None: a row per class
    count = int(n) if wanted is None else wanted.numel()
    images: list[Image.Image] = []
    for _, grids in sample_chunks(prior, count, CHUNK, wanted, settings, int(seed)):
        images += [enlarge(im) for im in to_pil(decode(models.tokenizer, grids))]
        yield images


def code_picture(codes: torch.Tensor, codebook_size: int, size: int = 224) -> Image.Image:
    """(H, W) codes as a picture: each code its own colour (hue by golden-ratio steps), enlarged to about `size`."""
    hues = (np.arange(codebook_size) * 0.618033988749895) % 1.0
    palette = np.array([colorsys.hsv_to_rgb(h, 0.65, 0.95) for h in hues]) * 255
    pixels = palette[codes.cpu().numpy()].astype(np.uint8)  # (H, W, 3)
    return enlarge(Image.fromarray(pixels, "RGB"), size)


def reconstruct_image(models: DemoModels, image: Image.Image | None) -> tuple[Image.Image, Image.Image, str]:
    """An uploaded image through the tokenizer: (code grid picture, reconstruction beside the input, PSNR line)."""
    if image is None:
        raise UserError("upload an image first")
    cfg = models.tokenizer.config
    resize = "center-crop" if cfg.channels == 3 else "pad"
    pixels = torch.tensor(fit_array(image, cfg.image_size, cfg.channels, resize))[None]  # (1, C, S, S)
    x = to_float(pixels).to(next(models.tokenizer.parameters()).device)
    with torch.no_grad():
        codes = models.tokenizer.encode(x)  # (1, h, w)
        recon = models.tokenizer.decode(codes).clamp(-1, 1)
    mse = float(((recon.cpu() - x.cpu()) / 2).pow(2).mean())  # on [0, 1] pixels
    psnr = 10 * math.log10(1 / max(mse, 1e-12))
    pair = to_pil(torch.cat([x.cpu(), recon.cpu()], dim=3))[
        0
    ]  # the input and its reconstruction side by side
    grid = f"{codes.shape[1]}x{codes.shape[2]}"
    line = f"PSNR {psnr:.2f} dB at {cfg.image_size} px; {grid} codes of {models.tokenizer.config.quantizer.codebook_size}"
    return code_picture(codes[0], cfg.quantizer.codebook_size), enlarge(pair, 2 * DISPLAY), line


def build_app(models: DemoModels):
    """The Gradio Blocks app over `models` (not launched)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    with gr.Blocks(title=f"vqgen: {Path(models.source).name}") as app:
        gr.Markdown(f"## vqgen demo: `{models.source}`")
        with gr.Tab("Generate"):
            _generate_tab(gr, models)
        with gr.Tab("Reconstruct"):
            _reconstruct_tab(gr, models)
        with gr.Tab("Model card"):
            gr.Markdown(models.card)
    return app


def _as_message(gr, fn):
    """A user's mistake becomes a message in the app (gr.Error), never a traceback."""

    def wrapped(*args):
        try:
            result = fn(*args)
            yield from result if isinstance(result, Iterator) else [result]
        except (UserError, ValueError) as exc:
            raise gr.Error(str(exc), print_exception=False) from None

    return wrapped


def _generate_tab(gr, models: DemoModels) -> None:
    """The sampling settings (starting from the first prior's own), a Generate button and the gallery."""

    def generate(prior, klass, temperature, top_k, top_p, cfg_scale, schedule, seed, n):
        settings = SamplingConfig(
            temperature=temperature or None,
            top_k=int(top_k) if top_k else None,
            top_p=top_p or None,
            cfg_scale=cfg_scale,
            cfg_schedule=schedule,
        )
        yield from generate_images(models, prior, klass, n, seed, settings)

    first_name = next(iter(models.prior_folders))
    first_temperature, first_scale = models.defaults(first_name)
    with gr.Row():
        with gr.Column(scale=1):
            prior = gr.Dropdown(list(models.prior_folders), value=first_name, label="prior")
            klass = gr.Dropdown(models.class_choices(), value=ALL_CLASSES, label="class")
            temperature = gr.Number(first_temperature, label="temperature (the prior's own to start)")
            top_k = gr.Number(0, precision=0, label="top-k (0 = off)")
            top_p = gr.Number(0, label="top-p (0 = off)")
            cfg_scale = gr.Number(first_scale, label="guidance scale (1 = off; the prior's own to start)")
            schedule = gr.Dropdown(list(GUIDANCE_SCHEDULES), value="constant", label="guidance schedule")
            seed = gr.Number(0, precision=0, label="seed")
            n = gr.Slider(1, MAX_IMAGES, value=16, step=1, label="images")
            button = gr.Button("Generate", variant="primary", elem_id="generate")
        gallery = gr.Gallery(label="samples", columns=4, elem_id="samples", height="auto", format="png")
    inputs = [prior, klass, temperature, top_k, top_p, cfg_scale, schedule, seed, n]
    prior.change(_as_message(gr, models.defaults), prior, [temperature, cfg_scale])
    button.click(_as_message(gr, generate), inputs, gallery, api_name="generate")


def _reconstruct_tab(gr, models: DemoModels) -> None:
    """An upload, its code grid, the input beside its reconstruction and the PSNR."""
    with gr.Row():
        upload = gr.Image(type="pil", label="an image", elem_id="upload")
        codes = gr.Image(type="pil", label="its code grid (one colour per code)")
        recon = gr.Image(type="pil", label="input | reconstruction")
    psnr = gr.Textbox(label="PSNR")
    gr.Button("Reconstruct", elem_id="reconstruct").click(
        _as_message(gr, lambda im: reconstruct_image(models, im)),
        upload,
        [codes, recon, psnr],
        api_name="reconstruct",
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def launch(app, host: str = "127.0.0.1", port: int | None = None, say=print, block: bool = True) -> str:
    """Serve the app on HOST:PORT (a free port when none is given); says the URL, then serves until Ctrl-C."""
    port = port or free_port(host)
    app.queue().launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=True,
        quiet=True,
        show_error=False,
        theme=space_theme(),
        footer_links=[],
    )
    url = f"http://{host}:{port}/"
    say(f"demo: serving {url} (Ctrl-C to stop)")
    if block:
        app.block_thread()
    return url


def space_theme():
    """Gradio's default look with the system's fonts: nothing fetched from a font server, so it works offline."""
    import gradio as gr

    return gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
