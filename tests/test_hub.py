"""Hub-native artifacts: the published layout (exact file set, bit-identical round trip for the tokenizer and every
registered prior), the model card, `cli.py push` end to end against a local stand-in for the Hub endpoint
(tests/hub_server.py, set through HF_ENDPOINT), `generate --from` a Hub id, a published folder and the Hub cache
with the network off, and the refusals (no network and no cache, pickled weights)."""

import filecmp
import json
import socket
import time
from pathlib import Path
from typing import get_type_hints

import numpy as np
import pytest
import torch
from conftest import assert_user_error, run_cli
from hub_server import StandInHub
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results
from PIL import Image
from vqgen.stages.artifacts.models import load_prior, load_tokenizer
from vqgen.stages.commands.push import PushConfig, run_push
from vqgen.stages.core.errors import UserError
from vqgen.stages.core.registry import PRIORS
from vqgen.stages.pipeline import Pipeline
from vqgen.stages.training import checkpoint as ckpt

FAKE_TOKEN = "hf_vqgenStandInToken7c1e9a0b5d3f"  # recognisable, so that a leak anywhere is found
PUBLISHED = {  # the documented layout of a published folder (stages/push.py, README "Hugging Face Hub")
    "README.md", "vqgen.json", "samples.png",
    "tokenizer/README.md", "tokenizer/config.json", "tokenizer/model.safetensors",
    "prior/README.md", "prior/config.json", "prior/model.safetensors",
}  # fmt: skip
TINY_PRIORS = {  # architecture fields of the built-ins; a third-party prior is tried with its defaults
    "gru": dict(embed_dim=16, hidden_size=16, num_layers=1, dropout=0.0),
    "pixelcnn": dict(channels=8, num_layers=2, head_channels=16),
    "transformer": dict(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32),
    "llamagen": dict(hidden_size=16, num_layers=1, num_heads=2, multiple_of=16),
}


@pytest.fixture(scope="module")
def run(tmp_path_factory, image_folder) -> Path:
    """A tiny trained run, in-process: tokenizer (3 steps) + gru prior (3 steps), checkpoints at steps 2 and 3."""
    from vqgen.stages.commands.tokenize import TokenizeConfig, run_tokenize
    from vqgen.stages.commands.train_prior import PriorTrainConfig, run_train_prior
    from vqgen.stages.data.images import DataConfig
    from vqgen.stages.tokenizer.base import QuantizerConfig
    from vqgen.stages.tokenizer.vqvae import VQVAEConfig
    from vqgen.stages.training.trainer import TrainConfig

    root = tmp_path_factory.mktemp("hub") / "run"
    train = dict(steps=3, batch_size=8, sample_every=0, checkpoint_every=2)
    model = VQVAEConfig(
        base_channels=8, num_res_blocks=1, quantizer=QuantizerConfig(codebook_size=16, code_dim=4)
    )
    run_tokenize(
        TokenizeConfig(
            run_dir=str(root), data=DataConfig(str(image_folder)), model=model, train=TrainConfig(**train)
        )
    )
    options = {k: str(v) for k, v in TINY_PRIORS["gru"].items()}
    run_train_prior(
        PriorTrainConfig(
            codes=str(root / "codes"), prior="gru", prior_options=options, train=TrainConfig(**train)
        )
    )
    return root


def files_of(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def tiny_tokenizer():
    """A tiny tokenizer (16 codes, 7x7 grid) whose codebook and EMA buffers have moved from their initial values."""
    from vqgen.stages.tokenizer.base import QuantizerConfig
    from vqgen.stages.tokenizer.vqvae import VQVAE, VQVAEConfig

    torch.manual_seed(0)
    q = QuantizerConfig(codebook_size=16, code_dim=4, init="sample")
    model = VQVAE(VQVAEConfig(base_channels=8, num_res_blocks=1, latent_channels=8, quantizer=q)).train()
    model(torch.rand(8, 1, 28, 28) * 2 - 1)
    return model.eval()


def random_prior(name: str, fingerprint: str):
    """A prior of kind `name` over the tiny tokenizer's codes, with noise on every weight."""
    cls = PRIORS.get(name)
    common = dict(
        vocab_size=16, grid_height=7, grid_width=7, num_classes=3, tokenizer_fingerprint=fingerprint
    )
    torch.manual_seed(1)
    model = cls(get_type_hints(cls.__init__)["config"](**common, **TINY_PRIORS.get(name, {}))).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("name", PRIORS.names())
def test_round_trip_is_bit_identical(tmp_path, name):
    """Models in memory -> run folder -> published folder (dry run) -> Pipeline: the exact documented file set,
    weights copied byte for byte, and the same logits, codes, reconstructions and samples as the saved models."""
    tokenizer = tiny_tokenizer()
    prior = random_prior(name, tokenizer.fingerprint())
    tokenizer.save_pretrained(tmp_path / "run" / "tokenizer")
    prior.save_pretrained(tmp_path / "run" / f"prior-{name}")
    out = tmp_path / "published"
    run_push(PushConfig(run=str(tmp_path / "run"), repo_id="alice/round-trip", dry_run=str(out)))
    assert files_of(out) == PUBLISHED
    for sub, src in (("tokenizer", "tokenizer"), ("prior", f"prior-{name}")):
        assert filecmp.cmp(
            tmp_path / "run" / src / "model.safetensors", out / sub / "model.safetensors", shallow=False
        )

    pipe = Pipeline.from_pretrained(out)
    assert type(pipe.prior) is type(prior) and pipe.prior.config == prior.config
    assert (
        pipe.tokenizer.config == tokenizer.config and pipe.tokenizer.fingerprint() == tokenizer.fingerprint()
    )
    codes = torch.randint(0, 16, (3, 7, 7), generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2])
    with torch.no_grad():
        assert torch.equal(pipe.prior(codes, labels).logits, prior(codes, labels).logits)
    images = tokenizer.decode(codes)
    assert torch.equal(pipe.decode(codes), images)
    assert torch.equal(pipe.tokenizer.encode(images), tokenizer.encode(images))
    sampled = pipe.sample_codes(4, [0, 1, 2, 0], seed=3)[0]
    assert torch.equal(sampled, Pipeline(tokenizer, prior).sample_codes(4, [0, 1, 2, 0], seed=3)[0])


def test_dry_run_folder_card_and_training_state(run, tmp_path):
    out = tmp_path / "dry"
    result = run_push(
        PushConfig(
            run=str(run),
            repo_id="alice/tiny-vqgen",
            dry_run=str(out),
            with_training_state=True,
            license="mit",
        )
    )
    assert result["uploaded"] is False
    newest = {
        kind: ckpt.list_checkpoints(d)[-1] for kind, d in (("tokenizer", run), ("prior", run / "prior-gru"))
    }
    state = {
        f"training_state/{kind}/{name}"
        for kind, path in newest.items()
        for name in ("run_config.json", f"{path.name}/state.json", f"{path.name}/state.safetensors")
    }
    assert files_of(out) == PUBLISHED | state == set(result["files"])
    for kind, path in newest.items():
        assert filecmp.cmp(
            path / "state.safetensors",
            out / f"training_state/{kind}/{path.name}/state.safetensors",
            shallow=False,
        )

    index = json.loads((out / "vqgen.json").read_text())
    assert index["tokenizer"] == "tokenizer" and index["prior"] == "prior" and index["prior_type"] == "gru"
    assert index["class_names"] == [str(d) for d in range(10)] and index["vqgen_version"]
    assert index["training_state"] == {k: f"training_state/{k}/{p.name}" for k, p in newest.items()}
    assert Image.open(out / "samples.png").size == (8 * 30 + 2, 10 * 30 + 2)  # 8 per row, a row per class

    # the card: metadata as the Hub reads it, metrics from the run in model-index form, YAML that round-trips
    card = ModelCard.load(out / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "vqgen" and data["license"] == "mit" and "gru-prior" in data["tags"]
    assert data["pipeline_tag"] == "unconditional-image-generation"
    name, results = model_index_to_eval_results(data["model-index"])
    measured = {r.metric_type: r.metric_value for r in results}
    tok = json.loads((run / "metrics.json").read_text())["tokenizer"]
    pri = json.loads((run / "prior-gru" / "metrics.json").read_text())["prior"]
    assert name == "tiny-vqgen"
    assert measured["psnr"] == round(tok["psnr"], 4) and measured["nll_bits_per_token"] == round(
        pri["val_bits_per_token"], 4
    )
    assert ModelCard(str(card)).data.to_dict() == data
    for text in (
        "![samples](samples.png)",
        'Pipeline.from_pretrained("alice/tiny-vqgen")',
        '"steps": 3',
        "training_state/",
    ):
        assert text in card.text
    assert str(run.parent) not in (out / "README.md").read_text()  # local paths are reduced to their names

    # each model loads on its own from the published folder; it, the run and the prior folder give one pipeline
    assert load_tokenizer(out).fingerprint() == index["tokenizer_fingerprint"]
    assert load_prior(out).config.prior_type == "gru"
    images = Pipeline.from_pretrained(out).generate(n=3, labels=[1, 2, 3], seed=5)
    for source in (run, run / "prior-gru"):
        again = Pipeline.from_pretrained(source).generate(n=3, labels=[1, 2, 3], seed=5)
        assert [im.tobytes() for im in again] == [im.tobytes() for im in images]
    assert images[0].size == (28, 28)

    before = files_of(out)
    with pytest.raises(UserError, match="already exists"):
        run_push(PushConfig(run=str(run), repo_id="alice/tiny-vqgen", dry_run=str(out)))
    assert files_of(out) == before


def test_refusals(run, tmp_path):
    """Pickled weights, a run with several priors, a bad repo id: one clear UserError each."""
    for name in ("pytorch_model.bin", "model.pt", "model.ckpt"):
        folder = tmp_path / name / "prior"
        folder.mkdir(parents=True)
        (folder / "config.json").write_text((run / "prior-gru" / "config.json").read_text())
        (folder / name).write_bytes(b"\x80\x04pickle")
        with pytest.raises(UserError, match="pickled weights are never loaded"):
            load_prior(folder)
        (folder.parent / "tokenizer").symlink_to(run / "tokenizer")
        (folder.parent / "vqgen.json").write_text(
            json.dumps({"format": 1, "tokenizer": "tokenizer", "prior": "prior"})
        )
        with pytest.raises(UserError, match="pickled weights are never loaded"):
            Pipeline.from_pretrained(folder.parent)
    two = tmp_path / "two"
    two.mkdir()
    for sub in ("tokenizer", "prior-gru", "codes"):
        (two / sub).symlink_to(run / sub)
    (two / "prior-copy").symlink_to(run / "prior-gru")
    with pytest.raises(UserError, match="several priors"):
        Pipeline.from_pretrained(two)
    assert Pipeline.from_pretrained(two, prior="gru").prior.config.prior_type == "gru"
    bare = (
        tmp_path / "bare"
    )  # no checkpoints: --with-training-state fails, and the dry run leaves nothing behind
    (bare / "prior-gru").mkdir(parents=True)
    (bare / "tokenizer").symlink_to(run / "tokenizer")
    for name in ("config.json", "model.safetensors"):
        (bare / "prior-gru" / name).write_bytes((run / "prior-gru" / name).read_bytes())
    with pytest.raises(UserError, match="no intact checkpoint"):
        run_push(
            PushConfig(
                run=str(bare), repo_id="alice/x", dry_run=str(tmp_path / "out"), with_training_state=True
            )
        )
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))
    with pytest.raises(UserError, match="USER/NAME"):
        run_push(PushConfig(run=str(run), repo_id="no-namespace", dry_run=str(tmp_path / "x")))
    with pytest.raises(UserError, match="no such folder"):
        Pipeline.from_pretrained(tmp_path / "missing")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_push_end_to_end_against_a_stand_in_hub(run, tmp_path, monkeypatch):
    """`cli.py push` to a local stand-in for the Hub: the repo is created private, the branch made, the card
    validated, and the files that arrive are exactly the dry-run folder; the token is sent only in the
    Authorization header, never in any output (debug logging on) or file. Then `generate --from` downloads the
    pipeline at that revision, and loads it again from the Hub cache once the endpoint is gone."""
    hf_home = tmp_path / "hf-home"
    env = {
        "HF_TOKEN": FAKE_TOKEN,
        "HF_HOME": str(hf_home),
        "HF_HUB_VERBOSITY": "debug",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    with StandInHub(FAKE_TOKEN) as hub:
        env["HF_ENDPOINT"] = hub.url
        push = ["push", str(run), "--repo-id", "alice/tiny-vqgen", "--private", "--revision", "dev"]
        pushed = run_cli(*push, "--with-training-state", env=env)
        assert pushed.returncode == 0, pushed.stderr[-3000:]
        from_hub = run_cli(
            "generate",
            "--from",
            "alice/tiny-vqgen",
            "--revision",
            "dev",
            "--label",
            "3",
            "--n",
            "4",
            "--out",
            str(tmp_path / "hub.png"),
            env=env,
        )
        assert from_hub.returncode == 0, from_hub.stderr[-3000:]
        first = dict(hub.files("alice/tiny-vqgen", "dev"))
        # pushing again (in-process, to the same stand-in) replaces the contents: no stale training state
        with monkeypatch.context() as m:
            m.setattr("huggingface_hub.constants.ENDPOINT", hub.url)
            m.setenv("HF_ENDPOINT", hub.url)
            m.setenv("HF_TOKEN", FAKE_TOKEN)
            again = run_push(PushConfig(run=str(run), repo_id="alice/tiny-vqgen", revision="dev"))
        assert again["uploaded"] and set(hub.files("alice/tiny-vqgen", "dev")) == PUBLISHED | {
            ".gitattributes"
        }
    dry = tmp_path / "dry"
    run_push(PushConfig(run=str(run), repo_id="alice/tiny-vqgen", dry_run=str(dry), with_training_state=True))

    assert "pushed 15 files" in pushed.stdout
    routes = {(r.method, r.path) for r in hub.requests}
    repo_api = "/api/models/alice/tiny-vqgen"
    for route in (
        "/api/repos/create",
        "/api/validate-yaml",
        f"{repo_api}/branch/dev",
        f"{repo_api}/commit/dev",
    ):
        assert ("POST", route) in routes, route
    create = next(r for r in hub.requests if r.path == "/api/repos/create")
    assert json.loads(create.body)["name"] == "tiny-vqgen" and hub.repos["alice/tiny-vqgen"].private
    uploaded = first
    assert set(uploaded) == files_of(dry) | {".gitattributes"}
    assert all(uploaded[f] == (dry / f).read_bytes() for f in files_of(dry))
    assert set(hub.files("alice/tiny-vqgen", "main")) == {".gitattributes"}  # --revision dev left main alone

    secret = FAKE_TOKEN.encode()
    assert any(r.headers.get("authorization") == f"Bearer {FAKE_TOKEN}" for r in hub.requests)  # it was used
    assert not any(secret in r.body for r in hub.requests) and not any(secret in c for c in uploaded.values())
    for out in (pushed, from_hub):
        assert (
            FAKE_TOKEN not in out.stdout + out.stderr and "Request" in out.stderr
        )  # debug lines were printed

    # the same images from the Hub download, from the published folder, and from the cache with the Hub gone
    local = run_cli(
        "generate", "--from", str(dry), "--label", "3", "--n", "4", "--out", str(tmp_path / "local.png")
    )
    assert local.returncode == 0, local.stderr[-3000:]
    env["HF_ENDPOINT"] = f"http://127.0.0.1:{closed_port()}"
    cached = run_cli(
        "generate",
        "--from",
        "alice/tiny-vqgen",
        "--revision",
        "dev",
        "--label",
        "3",
        "--n",
        "4",
        "--out",
        str(tmp_path / "cached.png"),
        env=env,
    )
    assert cached.returncode == 0, cached.stderr[-3000:]
    for name in ("hub.png", "cached.png"):
        assert (tmp_path / name).read_bytes() == (tmp_path / "local.png").read_bytes()
    assert not any(
        p.name.endswith(".bin") or "training_state" in str(p) for p in hf_home.rglob("*")
    )  # safe files only


def test_hub_id_with_the_network_off_is_one_line(tmp_path, monkeypatch):
    """No network and nothing cached: one line and exit code 2 from the CLI, and no retries (timed in-process,
    where no start-up cost hides them; the endpoint is a closed local port, the cache an empty folder)."""
    endpoint = f"http://127.0.0.1:{closed_port()}"
    env = {"HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path / "hf-home"), "HF_TOKEN": FAKE_TOKEN}
    result = run_cli("generate", "--from", "alice/not-cached", "--out", str(tmp_path / "x.png"), env=env)
    assert_user_error(result, "alice/not-cached", "cannot reach the Hugging Face Hub")
    assert not (tmp_path / "x.png").exists() and FAKE_TOKEN not in result.stdout + result.stderr

    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    started = time.perf_counter()
    with pytest.raises(UserError, match="cannot reach the Hugging Face Hub"):
        Pipeline.from_pretrained("alice/not-cached", revision="v1")
    assert time.perf_counter() - started < 5


def test_push_without_a_token_or_network_is_one_line(run, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    with pytest.raises(UserError, match="cannot reach the Hugging Face Hub") as err:
        run_push(PushConfig(run=str(run), repo_id="alice/tiny-vqgen"))
    assert FAKE_TOKEN not in str(err.value)
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "no-login"))
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    with pytest.raises(UserError, match="no Hugging Face token"):
        run_push(PushConfig(run=str(run), repo_id="alice/tiny-vqgen"))


def test_pipeline_generate_gives_the_images_generate_writes(run, tmp_path):
    """Same seed, same chunks: `Pipeline.generate` returns the very images `cli.py generate` writes to disk."""
    from vqgen.stages.commands.generate import GenerateConfig, run_generate

    out = tmp_path / "gen" / "grid.png"
    run_generate(
        GenerateConfig(prior=str(run / "prior-gru"), labels=[1], n=7, seed=5, batch_size=3, out=str(out))
    )
    written = sorted(p for p in out.parent.rglob("*.png") if p != out)
    assert len(written) == 7
    images = Pipeline.from_pretrained(run).generate(n=7, labels=1, seed=5, batch_size=3)
    for image, path in zip(images, written, strict=True):
        assert np.array_equal(np.asarray(image), np.asarray(Image.open(path))), path.name
    other = Pipeline.from_pretrained(run).generate(n=7, labels=1, seed=6, batch_size=3)
    assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(images, other, strict=True))


def test_dry_run_stages_inside_its_folder_and_cleans_up(run, tmp_path, monkeypatch):
    """A killed dry run leaves its staging inside OUT only (never full weights beside it), a rerun clears it, and a
    failed dry run removes the OUT it created."""
    from vqgen.stages.commands import push as P

    out = tmp_path / "dry"
    (out / ".staging-killed" / "upload" / "prior").mkdir(parents=True)  # what a SIGKILLed dry run leaves
    (out / ".staging-killed" / "upload" / "prior" / "model.safetensors").write_bytes(b"partial")
    run_push(PushConfig(run=str(run), repo_id="alice/tiny-vqgen", dry_run=str(out)))
    assert not [p for p in out.iterdir() if p.name.startswith(".staging-")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dry"]  # nothing beside OUT

    def broken(cfg, folder):
        folder.mkdir(parents=True)
        (folder / "README.md").write_text("half")
        raise RuntimeError("killed")

    monkeypatch.setattr(P, "build_upload_folder", broken)
    with pytest.raises(RuntimeError, match="killed"):
        run_push(PushConfig(run=str(run), repo_id="alice/tiny-vqgen", dry_run=str(tmp_path / "failed")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dry"]
