"""`vqgen import`: each format against the original project's own outputs (fixtures made with its code by
tests/fixtures/make_reference_fixtures.py), the files it writes, and its refusals."""

import json
from pathlib import Path

import pytest
import torch
from conftest import assert_user_error, run_cli
from fixtures.reference import seeded_images, seeded_weights, unpack

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def check_against_reference(folder: Path, ref: dict) -> None:
    """The imported tokenizer gives the original's codes exactly and its reconstructions within 1e-4."""
    from vqgen.stages.artifacts.models import load_tokenizer

    model = load_tokenizer(folder)
    x = seeded_images(ref["n"], 3, ref["image_size"], ref["image_seed"])
    with torch.no_grad():
        codes = model.encode(x)
        recon = model.decoder(model.quantizer.lookup(codes))
    assert torch.equal(codes, unpack(ref["codes"]).long())
    assert (recon - unpack(ref["recon"])).abs().max().item() < 1e-4


@pytest.fixture
def llamagen_tiny(monkeypatch):
    """LlamaGen's VQ at the fixture's small size, registered as a preset of the llamagen-vq format."""
    from vqgen.stages.interop import llamagen_vq

    ref = fixture("llamagen_vq_tiny")
    monkeypatch.setitem(llamagen_vq.PRESETS, "VQ-tiny", ref["arch"])
    return ref


def test_llamagen_vq_import_matches_llamagen(tmp_path, llamagen_tiny):
    from vqgen.stages.commands.interop import ImportConfig, run_import

    ref = llamagen_tiny
    ckpt = tmp_path / "vq_tiny.pt"
    torch.save({"model": seeded_weights(ref["shapes"], ref["seed"]), "steps": 10}, ckpt)
    options = dict(
        model="VQ-tiny",
        codebook_size=ref["codebook_size"],
        codebook_embed_dim=ref["codebook_embed_dim"],
        image_size=ref["image_size"],
    )
    run_import(ImportConfig("llamagen-vq", str(ckpt), str(tmp_path / "run"), options=options))
    folder = tmp_path / "run" / "tokenizer"
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["provenance"]["format"] == "llamagen-vq"
    assert config["provenance"]["licence"] == "mit"
    assert len(config["provenance"]["sha256"]) == 64
    assert "llamagen-vq" in (folder / "README.md").read_text()
    check_against_reference(folder, ref)
    # the same weights converted to safetensors (flat names, no "model" key) import the same
    from safetensors.torch import save_file

    save_file(seeded_weights(ref["shapes"], ref["seed"]), tmp_path / "vq_tiny.safetensors")
    run_import(
        ImportConfig(
            "llamagen-vq", str(tmp_path / "vq_tiny.safetensors"), str(tmp_path / "st"), options=options
        )
    )
    check_against_reference(tmp_path / "st" / "tokenizer", ref)


class Payload:
    """An object that only a full unpickler can rebuild."""


def test_import_refusals_are_one_line_and_write_nothing(tmp_path, llamagen_tiny):
    from vqgen.stages.commands.interop import ImportConfig, run_import
    from vqgen.stages.core.errors import UserError

    ref = llamagen_tiny
    good = seeded_weights(ref["shapes"], ref["seed"])
    run = tmp_path / "run"
    tiny = dict(model="VQ-tiny", codebook_size=ref["codebook_size"], image_size=16)

    def refused(path, *fragments, fmt="llamagen-vq", **options):
        with pytest.raises(UserError) as err:
            run_import(ImportConfig(fmt, str(path), str(run), options={**tiny, **options}))
        message = str(err.value)
        assert "\n" not in message and all(f in message for f in fragments), message
        assert not run.exists() or [p.name for p in run.iterdir()] in ([], ["tokenizer"])
        assert not (run / "tokenizer").exists() or not any((run / "tokenizer").iterdir())

    torch.save({"model": good}, tmp_path / "ok.pt")
    refused(
        tmp_path / "ok.pt",
        "unknown import format 'llamagen'",
        "llamagen-vq",
        "taming",
        "diffusers",
        fmt="llamagen",
    )
    refused(tmp_path / "ok.pt", "unknown LlamaGen tokenizer --model 'VQ-32'", model="VQ-32")
    refused(tmp_path / "ok.pt", "--model-config does not apply", model_config="x.yaml")
    # the default codebook_embed_dim (8) does not fit a checkpoint made with 4: the key and both shapes named
    refused(tmp_path / "ok.pt", "quant_conv.weight", "[4, 32, 1, 1]", "[8, 32, 1, 1]")
    torch.save({"model": good, "args": Payload()}, tmp_path / "pickled.pt")
    refused(tmp_path / "pickled.pt", "refused", "Payload", "weights_only=True", codebook_embed_dim=4)
    refused(tmp_path / "missing.pt", "no such file", codebook_embed_dim=4)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    refused(tmp_path / "junk.pt", "not a readable PyTorch checkpoint", codebook_embed_dim=4)
    # an existing tokenizer is kept unless --overwrite
    (run / "tokenizer").mkdir(parents=True)
    refused(tmp_path / "ok.pt", "already exists", codebook_embed_dim=4)


def test_cli_import_of_a_checkpoint_that_does_not_fit_the_preset(tmp_path, llamagen_tiny):
    torch.save({"model": seeded_weights(llamagen_tiny["shapes"], 0)}, tmp_path / "vq.pt")
    result = run_cli("import", "llamagen-vq", str(tmp_path / "vq.pt"), "--run", str(tmp_path / "run"))
    assert_user_error(result, "encoder.conv_in.weight", "[32, 3, 3, 3]", "[128, 3, 3, 3]")
    assert not (tmp_path / "run").exists()


def taming_checkpoint(tmp_path: Path, ref: dict) -> tuple[Path, Path]:
    """A Lightning-style last.ckpt (state_dict with the loss' weights too) and its yaml, as taming writes them."""
    state = seeded_weights(ref["shapes"], ref["seed"])
    state.update(
        {k: torch.ones(2, 2) for k in ref["loss_keys"]}
    )  # discriminator / LPIPS: not the tokenizer's
    ckpt, yaml = tmp_path / "last.ckpt", tmp_path / "model.yaml"
    torch.save({"state_dict": state, "global_step": 1000, "epoch": 3, "optimizer_states": []}, ckpt)
    yaml.write_text(ref["yaml"])
    return ckpt, yaml


def test_taming_import_matches_taming(tmp_path):
    from vqgen.stages.commands.interop import ImportConfig, run_import

    ref = fixture("taming_vq_tiny")
    ckpt, yaml = taming_checkpoint(tmp_path, ref)
    cfg = ImportConfig("taming", str(ckpt), str(tmp_path / "run"), options={"model_config": str(yaml)})
    run_import(cfg)
    folder = tmp_path / "run" / "tokenizer"
    config = json.loads((folder / "config.json").read_text())
    assert config["quantizer"]["project"] is True and config["attn_levels"] == 1
    assert config["provenance"]["format"] == "taming" and config["provenance"]["config"] == "model.yaml"
    check_against_reference(folder, ref)


def test_taming_refuses_what_vqgan_cannot_express(tmp_path):
    from vqgen.stages.commands.interop import ImportConfig, run_import
    from vqgen.stages.core.errors import UserError

    ref = fixture("taming_vq_tiny")
    ckpt, yaml = taming_checkpoint(tmp_path, ref)
    cases = [
        (("attn_resolutions: [8]", "attn_resolutions: [16]"), "attention in levels [0] of 2"),
        (("taming.models.vqgan.VQModel", "taming.models.vqgan.GumbelVQ"), "only taming.models.vqgan.VQModel"),
        (("double_z: False", "double_z: True"), "ddconfig.double_z"),
        (("n_embed: 64", "n_embed: 128"), "quantize.embedding.weight"),
    ]
    for (old, new), fragment in cases:
        yaml.write_text(ref["yaml"].replace(old, new))
        with pytest.raises(UserError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
            run_import(
                ImportConfig("taming", str(ckpt), str(tmp_path / "run"), options={"model_config": str(yaml)})
            )
    assert not (tmp_path / "run").exists()


def test_lightning_metadata_classes_load_as_inert_placeholders_and_code_is_refused(tmp_path, monkeypatch):
    """Old Lightning checkpoints (taming's) key their callbacks' state by the callback class: read without
    pytorch_lightning and without running it. A class from anywhere else stays refused."""
    import sys
    import types

    from vqgen.stages.core.errors import UserError
    from vqgen.stages.interop.sources import read_checkpoint

    module = types.ModuleType("pytorch_lightning.callbacks.model_checkpoint")

    class ModelCheckpoint:
        def __init__(self):
            raise AssertionError("Lightning code ran")

    ModelCheckpoint.__module__ = module.__name__
    ModelCheckpoint.__qualname__ = "ModelCheckpoint"
    module.ModelCheckpoint = ModelCheckpoint
    for parent in ("pytorch_lightning", "pytorch_lightning.callbacks"):
        monkeypatch.setitem(sys.modules, parent, types.ModuleType(parent))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    weights = {"encoder.conv_in.weight": torch.ones(2, 3, 3, 3)}
    torch.save(
        {"state_dict": weights, "callbacks": {ModelCheckpoint: {"best_model_score": 1.0}}},
        tmp_path / "a.ckpt",
    )
    for name in ("pytorch_lightning", "pytorch_lightning.callbacks", module.__name__):
        monkeypatch.delitem(sys.modules, name)  # as on a machine without pytorch_lightning
    data = read_checkpoint(tmp_path / "a.ckpt")
    assert torch.equal(data["state_dict"]["encoder.conv_in.weight"], weights["encoder.conv_in.weight"])
    torch.save({"state_dict": weights, "hook": Payload}, tmp_path / "b.ckpt")
    with pytest.raises(UserError, match="it needs test_interop.Payload to load"):
        read_checkpoint(tmp_path / "b.ckpt")


def test_provenance_is_not_part_of_the_fingerprint(tmp_path, llamagen_tiny):
    """The same weights imported from two places are one tokenizer: priors trained on either's codes fit both."""
    import shutil

    from vqgen.stages.artifacts.models import load_tokenizer
    from vqgen.stages.commands.interop import ImportConfig, run_import

    ref = llamagen_tiny
    torch.save({"model": seeded_weights(ref["shapes"], ref["seed"])}, tmp_path / "a.pt")
    shutil.copy(tmp_path / "a.pt", tmp_path / "b.pt")
    options = dict(model="VQ-tiny", codebook_size=64, codebook_embed_dim=4, image_size=16)
    prints = []
    for name in ("a", "b"):
        run_import(
            ImportConfig("llamagen-vq", str(tmp_path / f"{name}.pt"), str(tmp_path / name), options=options)
        )
        model = load_tokenizer(tmp_path / name / "tokenizer")
        assert model.config.provenance["file"] == f"{name}.pt"
        prints.append(model.fingerprint())
    assert prints[0] == prints[1]


def test_a_published_imported_tokenizer_says_where_it_came_from():
    from vqgen.stages.artifacts.card import component_card

    provenance = {"format": "llamagen-vq", "source": "/home/me/ckpts/vq_ds16_c2i.pt", "file": "vq_ds16_c2i.pt",
                  "sha256": "ab" * 32, "licence": "mit"}  # fmt: skip
    card = str(component_card("tokenizer", "me/lg", {"model_type": "vqgan", "provenance": provenance}))
    assert "Imported with `vqgen import llamagen-vq` from `vq_ds16_c2i.pt`" in card and "ab" * 32 in card
    assert "Licence of the original weights: mit" in card and "/home/me" not in card
    assert "Imported" not in str(component_card("tokenizer", "me/x", {"model_type": "vqgan"}))


def test_formats_are_listed_with_their_source():
    from vqgen.command_line.app import format_listing

    lines = format_listing().splitlines()
    for verb, name in (
        ("import", "llamagen-vq"),
        ("import", "taming"),
        ("import", "diffusers"),
        ("export", "diffusers"),
    ):
        assert any(line.split()[:3] == [verb, name, "built-in"] for line in lines), lines


def test_import_from_a_hub_id_downloads_once_then_works_offline(tmp_path, llamagen_tiny, monkeypatch):
    """SOURCE as a Hub id with --filename: fetched through huggingface_hub (a local stand-in Hub here) into the
    Hub cache, so the same import works again offline."""
    import io

    from hub_server import Repo, StandInHub
    from vqgen.stages.commands.interop import ImportConfig, run_import

    ref = llamagen_tiny
    buffer = io.BytesIO()
    torch.save({"model": seeded_weights(ref["shapes"], ref["seed"])}, buffer)
    options = dict(
        model="VQ-tiny", codebook_size=64, codebook_embed_dim=4, image_size=16, filename="vq_tiny.pt"
    )
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "cache"))
    with StandInHub("hf_unused0000000000") as hub:
        repo = Repo(private=False)
        repo.branches["main"] = repo.commit(None, {"vq_tiny.pt": buffer.getvalue()})
        hub.repos["FoundationVision/LlamaGen"] = repo
        monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", hub.url)
        monkeypatch.setattr(
            "huggingface_hub.constants.HUGGINGFACE_CO_URL_TEMPLATE",
            hub.url + "/{repo_id}/resolve/{revision}/{filename}",
        )
        run_import(
            ImportConfig("llamagen-vq", "FoundationVision/LlamaGen", str(tmp_path / "a"), options=options)
        )
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    run_import(ImportConfig("llamagen-vq", "FoundationVision/LlamaGen", str(tmp_path / "b"), options=options))
    check_against_reference(tmp_path / "b" / "tokenizer", ref)
    provenance = json.loads((tmp_path / "b" / "tokenizer" / "config.json").read_text())["provenance"]
    assert provenance["source"] == "FoundationVision/LlamaGen" and provenance["file"] == "vq_tiny.pt"
