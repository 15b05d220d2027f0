"""Reading vqgen artifacts from a local folder or a Hugging Face Hub id, safely (safetensors only, no pickle)."""

import json
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from stages.errors import UserError

UNSAFE_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def ensure_hub_reachable(what: str) -> None:
    """Fail fast, in one line, when the Hub endpoint cannot be reached (instead of a stack of retries).
    With HF_HUB_OFFLINE=1 nothing is checked: the libraries then answer from the local cache."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=5).close()
    except OSError as exc:
        raise UserError(
            f"{what}: cannot reach the Hugging Face Hub at {url.scheme}://{url.netloc} ({exc.strerror or exc}); "
            "check your network, set HF_HUB_OFFLINE=1 to use the local cache, or pass a local path"
        ) from None


def _hub_file(repo_id: str, filename: str, **hub_kwargs) -> Path:
    from huggingface_hub import hf_hub_download

    ensure_hub_reachable(repo_id)
    try:
        return Path(hf_hub_download(repo_id, filename, **hub_kwargs))
    except Exception as exc:  # offline, unknown repo, missing file: one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(
            f"{repo_id}: could not fetch {filename} from the Hugging Face Hub ({first})"
        ) from None


def read_config(path: str | Path, **hub_kwargs) -> dict:
    """config.json of a local model folder or a Hub repo, as a dict; every failure is a one-line UserError."""
    local = Path(path).expanduser()
    if local.exists():
        if not local.is_dir():
            raise UserError(f"{path} is a file; give the model folder that holds config.json")
        cfg_file = local / "config.json"
        if not cfg_file.is_file():
            raise UserError(f"{path}: no config.json here; is this a vqgen model folder?")
        if not (local / "model.safetensors").is_file():
            unsafe = [p.name for p in local.iterdir() if p.suffix in UNSAFE_WEIGHTS]
            hint = f" (found {', '.join(unsafe)}: pickled weights are never loaded)" if unsafe else ""
            raise UserError(f"{path}: no model.safetensors{hint}")
    elif str(path).startswith((".", "/", "~")):
        raise UserError(f"{path}: no such folder")
    else:
        cfg_file = _hub_file(str(path), "config.json", **hub_kwargs)
    try:
        config = json.loads(cfg_file.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: config.json is not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise UserError(f"{path}: config.json must hold a JSON object")
    return config


def load_tokenizer(path: str | Path, **hub_kwargs):
    """A trained VQVAE from a folder or Hub id."""
    from stages.tokenizer import VQVAE

    config = read_config(path, **hub_kwargs)
    if config.get("model_type") != "vqvae":
        raise UserError(f"{path}: not a vqgen tokenizer (model_type={config.get('model_type')!r})")
    try:
        return VQVAE.from_pretrained(str(path), **hub_kwargs)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{path}: config.json does not describe a valid tokenizer ({exc})") from None
    except Exception as exc:  # a truncated or corrupt safetensors file
        raise UserError(f"{path}: could not load model.safetensors ({type(exc).__name__}: {exc})") from None
