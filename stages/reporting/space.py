"""`vqgen push --space`: the web demo as a Hugging Face Space folder, `space/` in the published repo.

    space/app.py            the demo of stages/reporting/demo.py over the published model (its Hub id)
    space/requirements.txt  what the Space installs: torch, gradio and vqgen
    space/README.md         the Space's card: sdk gradio, app_file app.py, the model it serves

Upload it as a Space with `huggingface-cli upload --repo-type space USER/NAME-demo space/` (or copy it into a
Space repo). Loading a published model never downloads this folder (only JSON, safetensors, README and PNG files).
"""

from pathlib import Path

import vqgen
from vqgen.stages.core.files import write_text

APP = '''"""A Hugging Face Space serving the vqgen model {repo_id} (written by `vqgen push --space`).

Set VQGEN_MODEL to serve another model (a Hub id, or a run or published folder)."""

import os

from vqgen.stages.reporting.demo import DemoModels, build_app, space_theme

MODEL = os.environ.get("VQGEN_MODEL", "{repo_id}")
demo = build_app(DemoModels.load(MODEL))

if __name__ == "__main__":
    demo.queue().launch(theme=space_theme())  # Spaces set GRADIO_SERVER_NAME and GRADIO_SERVER_PORT
'''

REQUIREMENTS = """torch
gradio>=5
# vqgen itself: this version from PyPI once it is published there; until then name where yours comes from,
# e.g. a git URL (vqgen @ git+https://...) or a wheel uploaded beside this file.
vqgen=={version}
"""

CARD = """---
title: {title}
emoji: 🎨
sdk: gradio
app_file: app.py
models:
- {repo_id}
tags:
- vqgen
---

A demo of [{repo_id}](https://huggingface.co/{repo_id}), a vqgen tokenizer and autoregressive prior: generate
images (class, temperature, top-k/top-p, guidance and its schedule, seed), reconstruct an uploaded image through
the tokenizer (its code grid and PSNR), and read the model's card.
"""


def write_space(folder: Path, repo_id: str) -> list[Path]:
    """Write the Space folder for the published model `repo_id`; returns its files."""
    title = repo_id.split("/")[-1][:30]
    return [
        write_text(APP.format(repo_id=repo_id), folder / "app.py"),
        write_text(REQUIREMENTS.format(version=vqgen.__version__), folder / "requirements.txt"),
        write_text(CARD.format(title=title, repo_id=repo_id), folder / "README.md"),
    ]
