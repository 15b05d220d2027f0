"""The model card (README.md) of a published vqgen pipeline, built with huggingface_hub's ModelCard.

YAML metadata that the Hub reads: library name, tags, pipeline tag, dataset, licence, and the measured metrics as
evaluation results in the Hub's model-index form. The body shows the sample grid, the metrics, a usage snippet,
the file layout and the training configuration. Local paths in the configuration are reduced to their last
component; no token or credential ever goes into a card.
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.repocard_data import model_index_to_eval_results
from vqgen.stages.core.files import write_text

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")  # a Hub dataset id: "name" or "owner/name"
TASK = "unconditional-image-generation"  # the Hub's task id closest to (class-conditional) image generation
MNIST5K = ("ylecun/mnist", "MNIST (embedded 5,000-digit subset)")
# (key in metrics.json, model-index metric type, pretty name)
TOKENIZER_METRICS = [
    ("psnr", "psnr", "Tokenizer PSNR (dB)"),
    ("ssim", "ssim", "Tokenizer SSIM"),
    ("codebook_usage", "codebook_usage", "Tokenizer codebook usage"),
    ("perplexity", "perplexity", "Tokenizer codebook perplexity"),
    ("dead_codes", "dead_codes", "Tokenizer dead codes"),
]
PRIOR_METRICS = [
    ("val_bits_per_token", "nll_bits_per_token", "Prior validation NLL (bits/token)"),
    ("val_bits_per_dim", "nll_bits_per_dim", "Prior validation NLL (bits/dim)"),
]


@dataclass
class CardInputs:
    """What the card is made of; every dict may be empty when the run did not record it."""

    repo_id: str
    tokenizer_config: dict  # tokenizer/config.json
    prior_config: dict  # prior/config.json
    tokenizer_metrics: dict  # RUN/metrics.json["tokenizer"]
    prior_metrics: dict  # PRIOR/metrics.json["prior"]
    tokenizer_run: dict  # RUN/run_config.json
    prior_run: dict  # PRIOR/run_config.json
    class_names: list[str] | None
    license: str = "apache-2.0"
    samples: str = "samples.png"
    samples_caption: str = ""
    training_state: dict | None = None  # {"tokenizer": "training_state/tokenizer/step_...", "prior": ...}
    files: tuple[str, ...] = ()  # the published files, for the layout table


def local_path(value: str) -> bool:
    return value.startswith(("/", "./", "../", "~")) or ("/" in value and Path(value).exists())


def redact_paths(value):
    """A copy of a run configuration with local paths reduced to their last component."""
    if isinstance(value, dict):
        return {k: redact_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_paths(v) for v in value]
    if isinstance(value, str) and local_path(value):
        return Path(value).name
    return value


def dataset_of(tokenizer_run: dict) -> tuple[str | None, str, str]:
    """(Hub dataset id or None, model-index dataset type, pretty name) of the data the tokenizer was trained on."""
    name = (tokenizer_run.get("data") or {}).get("dataset")
    if name == "mnist5k":
        return MNIST5K[0], MNIST5K[0], MNIST5K[1]
    if isinstance(name, str) and not local_path(name) and HUB_ID.match(name) and not Path(name).exists():
        return name, name, name
    return None, "imagefolder", "a local image folder"


def eval_results(inputs: CardInputs) -> list[EvalResult]:
    _, dataset_type, dataset_name = dataset_of(inputs.tokenizer_run)
    results = []
    for metrics, table in (
        (inputs.tokenizer_metrics, TOKENIZER_METRICS),
        (inputs.prior_metrics, PRIOR_METRICS),
    ):
        for key, metric_type, metric_name in table:
            value = metrics.get(key)
            if isinstance(value, (int, float)):
                results.append(
                    EvalResult(
                        task_type=TASK,
                        task_name="Image generation",
                        dataset_type=dataset_type,
                        dataset_name=dataset_name,
                        dataset_split="held-out",
                        metric_type=metric_type,
                        metric_name=metric_name,
                        metric_value=round(float(value), 4),
                    )
                )
    return results


def card_data(inputs: CardInputs) -> ModelCardData:
    dataset_id, _, _ = dataset_of(inputs.tokenizer_run)
    prior_type = inputs.prior_config.get("prior_type", "prior")
    return ModelCardData(
        library_name="vqgen",
        pipeline_tag=TASK,
        license=inputs.license,
        datasets=[dataset_id] if dataset_id else None,
        tags=[
            "vqgen",
            "vq-vae",
            "image-tokenizer",
            "autoregressive-prior",
            f"{prior_type}-prior",
            "safetensors",
        ],
        model_name=inputs.repo_id.split("/")[-1],
        eval_results=eval_results(inputs) or None,
    )


def _metrics_table(metrics: dict, table: list[tuple[str, str, str]]) -> str:
    rows = [
        f"| {name} | {metrics[key]:.4g} |"
        for key, _, name in table
        if isinstance(metrics.get(key), (int, float))
    ]
    return "\n".join(["| metric | value |", "|---|---:|", *rows]) if rows else "_not recorded by this run_"


def _classes(names: list[str] | None) -> str:
    """The class names, worth listing only when they are not 0, 1, ..."""
    names = names or []
    if not names or names == [str(i) for i in range(len(names))]:
        return ""
    return "\n\nClasses (label: name): " + ", ".join(f"{i}: {n}" for i, n in enumerate(names)) + "."


def _training_state(places: dict[str, str]) -> str:
    if not places:
        return ""
    listed = "\n".join(f"- `{path}`: the {kind}'s newest checkpoint" for kind, path in places.items())
    return f"""
## Training state

The newest training checkpoints, in safetensors + JSON (model, optimizer, EMA and codebook buffers, plugin state
such as a GAN discriminator, RNG states, step), so that training can be resumed or fine-tuned:

{listed}

Copy a `step_NNNNNNN` folder into the `checkpoints/` folder of a run (the tokenizer's run folder, or the prior's
output folder) and run the same command with `--resume` (the configuration is below and in `run_config.json`).
"""


def _config_json(run: dict) -> str:
    return json.dumps(redact_paths(run), indent=2, sort_keys=True) if run else "{}"


def tokenizer_name(tc: dict) -> str:
    """'VQ-VAE', 'VQGAN', ... from a tokenizer's config.json, with its quantizer when it is not the codebook one."""
    model_type = str(tc.get("model_type", "?"))
    arch = {"vqvae": "VQ-VAE", "vqgan": "VQGAN"}.get(model_type, model_type)
    kind = (tc.get("quantizer") or {}).get("kind", "vq")
    return arch if kind == "vq" else f"{arch} ({str(kind).upper()})"


def _intro(inputs: CardInputs) -> str:
    """What the pipeline is, its samples, and how to use it."""
    tc, pc = inputs.tokenizer_config, inputs.prior_config
    q = tc.get("quantizer", {})
    grid = f"{pc.get('grid_height', '?')}x{pc.get('grid_width', '?')}"
    k = pc.get("num_classes", 0)
    _, _, dataset_name = dataset_of(inputs.tokenizer_run)
    conditioning = f"conditioned on {k} classes" if k else "unconditional"
    classes = _classes(inputs.class_names)
    label_arg, cli_label = (", labels=0", " --label 0") if k else ("", "")
    return f"""
# {inputs.repo_id.split("/")[-1]}

A two-stage image generator made with vqgen: a {tokenizer_name(tc)} tokenizer that turns
{tc.get("image_size", "?")}x{tc.get("image_size", "?")} images into a {grid} grid of codes from a codebook of
{q.get("codebook_size", "?")} entries, and a `{pc.get("prior_type", "?")}` autoregressive prior over those codes,
{conditioning}. Trained on {dataset_name}.{classes}

![samples]({inputs.samples})

{inputs.samples_caption}

## Use

```python
from vqgen import Pipeline

pipe = Pipeline.from_pretrained("{inputs.repo_id}")
images = pipe.generate(n=8{label_arg}, seed=0)  # a list of PIL images
```

or from the command line: `vqgen generate --from {inputs.repo_id}{cli_label} --n 8 --out generated.png`.
Loading reads only `config.json` and `model.safetensors` files (never pickles) and works offline from the Hub
cache once downloaded.

"""


def _details(inputs: CardInputs) -> str:
    """Metrics, the files, and the training configuration."""
    layout = "\n".join(f"- `{f}`" for f in inputs.files)
    resume = _training_state(inputs.training_state)
    return f"""## Metrics

Measured on held-out images of the training data by `vqgen tokenize` and `vqgen train-prior`.

Tokenizer:

{_metrics_table(inputs.tokenizer_metrics, TOKENIZER_METRICS)}

Prior:

{_metrics_table(inputs.prior_metrics, PRIOR_METRICS)}

{kept_weights(inputs.prior_metrics)}

## Files

{layout}

`vqgen.json` says which folder holds which model; each model folder loads on its own with
`vqgen.load_tokenizer` or `vqgen.load_prior`.
{resume}
## Training configuration

Tokenizer (`vqgen tokenize`):

```json
{_config_json(inputs.tokenizer_run)}
```

Prior (`vqgen train-prior`):

```json
{_config_json(inputs.prior_run)}
```
"""


def _body(inputs: CardInputs) -> str:
    return _intro(inputs) + _details(inputs)


def build_card(inputs: CardInputs) -> ModelCard:
    """The root README.md of a published pipeline."""
    return ModelCard(f"---\n{card_data(inputs).to_yaml()}\n---\n{_body(inputs)}")


def component_card(kind: str, repo_id: str, config: dict) -> ModelCard:
    """The short README.md of the `tokenizer/` or `prior/` subfolder, pointing to the root card."""
    what = (
        f"{tokenizer_name(config)} tokenizer"
        if kind == "tokenizer"
        else f"`{config.get('prior_type', '?')}` prior"
    )
    loader = "vqgen.load_tokenizer" if kind == "tokenizer" else "vqgen.load_prior"
    data = ModelCardData(
        library_name="vqgen",
        tags=["vqgen", "image-tokenizer" if kind == "tokenizer" else "autoregressive-prior"],
    )
    return ModelCard(
        f"---\n{data.to_yaml()}\n---\n\n# {kind} of {repo_id}\n\nThe {what} of the vqgen pipeline "
        f"`{repo_id}`: `config.json` + `model.safetensors`. See the repository's [README](../README.md); load it "
        f'with `{loader}("{repo_id}")`.\n' + provenance_note(config.get("provenance"))
    )


def provenance_note(provenance: dict | None) -> str:
    """For a model made by `vqgen import`: where it came from (local paths reduced to their last part) and the
    licence of the original weights, whose terms apply to the copy."""
    if not isinstance(provenance, dict) or not provenance.get("format"):
        return ""
    p = redact_paths(provenance)
    file = f", file `{p['file']}` (sha256 `{p['sha256']}`)" if p.get("file") and p.get("sha256") else ""
    licence = p.get("licence") or "not stated by the source; check it before use"
    return (
        f"\nImported with `vqgen import {p['format']}` from `{p.get('source')}`{file}. Licence of the original "
        f"weights: {licence}.\n"
    )


def kept_weights(metrics: dict) -> str:
    """A sentence on which weights of a prior's run were saved (metrics.json's `prior`); empty for older runs."""
    if "kept" not in metrics:
        return ""
    if metrics["kept"] == "best":
        stop = ", stopped early (--patience)" if metrics.get("stopped_early") else ""
        return (
            f"The prior's weights are those of step {metrics['kept_step']:,} of {metrics['steps']:,}{stop}: the "
            f"lowest held-out NLL ({metrics['val_bits_per_token']:.4g} bits/token) among the scorings during training."
        )
    return f"The prior's weights are those of its last step ({metrics['kept_step']:,}, `--keep-last`)."


def note_kept_weights(readme: Path, metrics: dict) -> None:
    """Add `kept_weights` to a saved prior's own README.md (the card save_pretrained wrote)."""
    sentence = kept_weights(metrics)
    if sentence and readme.is_file():
        card = ModelCard.load(readme)
        card.text = card.text.rstrip("\n") + f"\n\n## Training\n\n{sentence}\n"
        write_text(str(card), readme)  # renamed into place: never half-written


def check_card(card: ModelCard, expected: list[EvalResult] | None) -> None:
    """Local checks that the card's YAML parses back into the same metadata (the Hub's own validation needs the
    network: `ModelCard.validate()`, called before an upload). Raises ValueError."""
    parsed = ModelCard(str(card))  # parses the YAML block; raises on invalid metadata or model-index
    data = parsed.data.to_dict()
    if data.get("library_name") != "vqgen":
        raise ValueError("library_name did not survive the YAML round trip")
    got = model_index_to_eval_results(data["model-index"])[1] if "model-index" in data else []
    want = [(r.metric_type, r.metric_value) for r in expected or []]
    if [(r.metric_type, r.metric_value) for r in got] != want:
        raise ValueError(f"model-index round trip changed the results: {got} != {expected}")
