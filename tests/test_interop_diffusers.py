"""diffusers' VQModel and vqgen's vqgan, both ways, compared directly with diffusers: `vqgen import diffusers`
gives diffusers' codes and reconstructions, `vqgen export --format diffusers` writes a folder that
diffusers.VQModel.from_pretrained loads and that reconstructs as vqgen does, and the round trip keeps every weight."""

import json
from pathlib import Path

import pytest
import torch
from conftest import assert_user_error, run_cli
from diffusers import VQModel
from fixtures.reference import seeded_images, seeded_weights

TINY = dict(
    in_channels=3,
    out_channels=3,
    block_out_channels=(32, 64),
    down_block_types=("DownEncoderBlock2D", "AttnDownEncoderBlock2D"),
    up_block_types=("AttnUpDecoderBlock2D", "UpDecoderBlock2D"),
    layers_per_block=1,
    latent_channels=8,
    vq_embed_dim=4,
    num_vq_embeddings=64,
    norm_num_groups=32,
    sample_size=16,
)


def diffusers_model(**changes) -> VQModel:
    model = VQModel(**{**TINY, **changes}).eval()
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    model.load_state_dict(seeded_weights(shapes, 7))
    return model


@torch.no_grad()
def diffusers_outputs(model: VQModel, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    h = model.encode(x).latents
    codes = model.quantize(h)[2][2].view(x.shape[0], h.shape[2], h.shape[3])
    return codes, model.decode(h).sample


@torch.no_grad()
def vqgen_outputs(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    codes = model.encode(x)
    return codes, model.decoder(model.quantizer.lookup(codes))


def import_diffusers(folder: Path, run: Path):
    from vqgen.stages.artifacts.models import load_tokenizer
    from vqgen.stages.commands.interop import ImportConfig, run_import

    run_import(ImportConfig("diffusers", str(folder), str(run)))
    return load_tokenizer(run / "tokenizer")


@pytest.mark.parametrize("changes", [{}, {"mid_block_add_attention": False, "vq_embed_dim": 8}])
def test_diffusers_import_matches_diffusers(tmp_path, changes):
    original = diffusers_model(**changes)
    original.save_pretrained(tmp_path / "vq")
    model = import_diffusers(tmp_path / "vq", tmp_path / "run")
    x = seeded_images(2, 3, 16, 5)
    want_codes, want_recon = diffusers_outputs(original, x)
    codes, recon = vqgen_outputs(model, x)
    assert want_codes.unique().numel() > 4  # the comparison is not between two constant grids
    assert torch.equal(codes, want_codes)
    assert (recon - want_recon).abs().max().item() < 1e-4
    provenance = json.loads((tmp_path / "run" / "tokenizer" / "config.json").read_text())["provenance"]
    assert provenance["format"] == "diffusers" and provenance["diffusers_class"] == "VQModel"


def test_diffusers_round_trip_keeps_every_weight(tmp_path):
    original = diffusers_model()
    original.save_pretrained(tmp_path / "vq")
    import_diffusers(tmp_path / "vq", tmp_path / "run")
    result = run_cli(
        "export", str(tmp_path / "run" / "tokenizer"), "--format", "diffusers", "--out", str(tmp_path / "out")
    )
    assert result.returncode == 0, result.stderr
    back = VQModel.from_pretrained(tmp_path / "out").eval()
    want, got = original.state_dict(), back.state_dict()
    assert sorted(want) == sorted(got)
    assert all(torch.equal(want[k], got[k]) for k in want)
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in original.config.items()}
    exported = json.loads((tmp_path / "out" / "config.json").read_text())
    assert {k: v for k, v in exported.items() if not k.startswith("_")} == {
        k: config[k] for k in exported if not k.startswith("_")
    }


def test_a_vqgen_vqgan_opens_in_diffusers_and_reconstructs_the_same(tmp_path):
    from vqgen.stages.artifacts.models import save_model
    from vqgen.stages.commands.interop import ExportConfig, run_export
    from vqgen.stages.tokenizer.base import QuantizerConfig
    from vqgen.stages.tokenizer.vqgan import VQGAN, VQGANConfig

    torch.manual_seed(0)
    config = VQGANConfig(
        image_size=16,
        channels=3,
        base_channels=32,
        ch_mult=[1, 2],
        latent_channels=8,
        quantizer=QuantizerConfig(codebook_size=64, code_dim=4),
    )
    model = VQGAN(config).eval()
    save_model(model, tmp_path / "tokenizer")
    run_export(ExportConfig(str(tmp_path / "tokenizer"), "diffusers", str(tmp_path / "out")))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
    ]
    exported = VQModel.from_pretrained(tmp_path / "out").eval()
    x = seeded_images(2, 3, 16, 5)
    want_codes, want_recon = vqgen_outputs(model, x)
    codes, recon = diffusers_outputs(exported, x)
    assert want_codes.unique().numel() > 4
    assert torch.equal(codes, want_codes)
    assert (recon - want_recon).abs().max().item() < 1e-4


def test_export_refuses_what_a_vqmodel_cannot_hold(tmp_path):
    from vqgen.stages.artifacts.models import save_model
    from vqgen.stages.commands.interop import ExportConfig, run_export
    from vqgen.stages.core.errors import UserError
    from vqgen.stages.tokenizer.base import QuantizerConfig
    from vqgen.stages.tokenizer.vqgan import VQGAN, VQGANConfig
    from vqgen.stages.tokenizer.vqvae import VQVAE, VQVAEConfig

    cosine = VQGANConfig(
        image_size=16,
        channels=3,
        base_channels=32,
        ch_mult=[1, 2],
        latent_channels=8,
        quantizer=QuantizerConfig(codebook_size=64, code_dim=4, cosine=True),
    )
    save_model(VQGAN(cosine), tmp_path / "cosine")
    result = run_cli(
        "export", str(tmp_path / "cosine"), "--format", "diffusers", "--out", str(tmp_path / "out")
    )
    assert_user_error(result, "cannot export to diffusers", "quantizer.cosine")
    save_model(VQGAN(VQGAN.PRESETS["vqgan-tiny"]), tmp_path / "tiny")  # widths 8 and 16 under 32 groups
    save_model(VQVAE(VQVAEConfig()), tmp_path / "vqvae")
    cases = [("tiny", "onnx", "unknown export format 'onnx'"), ("tiny", "diffusers", "norm_groups=32"),
             ("vqvae", "diffusers", "a vqvae tokenizer")]  # fmt: skip
    for folder, fmt, fragment in cases:
        with pytest.raises(UserError, match=fragment):
            run_export(ExportConfig(str(tmp_path / folder), fmt, str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()
