"""A tokenizer and the prior trained on its codes, loaded together and sampled in three lines:

    from vqgen import Pipeline
    pipe = Pipeline.from_pretrained("user/mnist-vqgen")   # a Hub id (revision=...), a run folder or a published folder
    images = pipe.generate(n=8, labels=7, seed=0)          # a list of PIL images

What `from_pretrained` accepts:
- a published folder or Hub repo (what `vqgen push` writes): `vqgen.json` names the `tokenizer/` and `prior/`
  subfolders (each config.json + model.safetensors); a Hub id is fetched into the Hub cache (safetensors only)
  and found there again when offline;
- a run folder (`tokenizer/` beside one or more prior folders; `prior=` picks one when there are several);
- a prior folder (the tokenizer is the `tokenizer` folder beside it, as for `vqgen generate --prior`).

The same seed gives the very images `vqgen generate` writes (both sample in chunks seeded from (seed, chunk)).
"""

from dataclasses import asdict
from pathlib import Path

import torch
from PIL import Image
from vqgen.priors import Prior, SamplingOptions
from vqgen.stages.artifacts.models import load_prior, load_tokenizer
from vqgen.stages.artifacts.published import locate
from vqgen.stages.core.device import resolve_device
from vqgen.stages.sampling.sampler import (
    SamplingConfig,
    check_pair,
    decode,
    resolve_labels,
    sample_chunks,
    to_pil,
)


def _label_list(labels: int | list[int] | torch.Tensor | None) -> list[int] | None:
    if labels is None:
        return None
    if isinstance(labels, torch.Tensor):
        return [int(x) for x in labels.reshape(-1)]
    if isinstance(labels, int):
        return [labels]
    return [int(x) for x in labels]


class Pipeline:
    """A tokenizer and a prior that belong together (checked: codebook size, grid and tokenizer fingerprint)."""

    def __init__(self, tokenizer, prior: Prior, class_names: list[str] | None = None):
        check_pair(prior, tokenizer)
        self.tokenizer, self.prior = tokenizer.eval(), prior.eval()
        self.class_names = class_names

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        prior: str | None = None,
        revision: str | None = None,
        device: str | None = None,
    ) -> "Pipeline":
        """Load both models from a Hub id (at `revision`), a published folder, a run folder or a prior folder.
        `device`: cpu, cuda, cuda:N, mps or auto (as the commands' --device); None leaves them on the CPU."""
        target = resolve_device(device) if device is not None else None  # checked before anything is loaded
        folders = locate(path, prior, revision)
        pipe = cls(load_tokenizer(folders.tokenizer), load_prior(folders.prior), folders.class_names)
        return pipe.to(target) if target is not None else pipe

    def to(self, device: str | torch.device) -> "Pipeline":
        self.tokenizer.to(device)
        self.prior.to(device)
        return self

    @torch.inference_mode()
    def sample_codes(
        self,
        n: int = 16,
        labels: int | list[int] | torch.Tensor | None = None,
        seed: int = 0,
        batch_size: int = 100,
        sampling: SamplingOptions | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(n, H, W) code grids and their (n,) labels. `labels`: one class for all, one per sample, or None for a
        row per class (a conditional prior) or unconditional samples; the same rules as `vqgen generate`.
        `sampling`: temperature, top-k, top-p and guidance (a SamplingOptions, or a SamplingConfig whose None
        values are the prior's own); None: the prior's own defaults, as `vqgen generate`."""
        settings = SamplingConfig(**asdict(sampling)) if sampling is not None else SamplingConfig()
        settings.validate()
        wanted = resolve_labels(self.prior, n, _label_list(labels))
        n = n if wanted is None else wanted.numel()
        grids = [g.cpu() for _, g in sample_chunks(self.prior, n, batch_size, wanted, settings, seed)]
        return torch.cat(grids), wanted

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, H, W) codes -> (B, C, S, S) images in [-1, 1], on the CPU."""
        return decode(self.tokenizer, codes)

    def generate(
        self,
        n: int = 16,
        labels: int | list[int] | torch.Tensor | None = None,
        seed: int = 0,
        batch_size: int = 100,
        sampling: SamplingOptions | None = None,
    ) -> list[Image.Image]:
        """`n` images as PIL images (the arguments as in `sample_codes`)."""
        codes, _ = self.sample_codes(n, labels, seed, batch_size, sampling)
        return to_pil(self.decode(codes))
