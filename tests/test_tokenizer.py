"""The VQ-VAE tokenizer model: shapes for several downsampling factors, Hub-layout round trip, fingerprint,
configuration errors, metrics."""

import numpy as np
import pytest
import torch
from vqgen.stages.core.files import image_grid
from vqgen.stages.evaluation import metrics as M
from vqgen.stages.tokenizer.base import QuantizerConfig
from vqgen.stages.tokenizer.vqvae import VQVAE, VQVAEConfig


def tiny(**kw) -> VQVAE:
    torch.manual_seed(0)
    q = QuantizerConfig(codebook_size=16, code_dim=4, init="sample")
    return VQVAE(VQVAEConfig(base_channels=8, num_res_blocks=1, latent_channels=8, quantizer=q, **kw))


@pytest.mark.parametrize("size,factor,channels", [(28, 4, 1), (32, 8, 3), (16, 2, 1)])
def test_shapes(size, factor, channels):
    model = tiny(image_size=size, downsample=factor, channels=channels)
    x = torch.rand(3, channels, size, size) * 2 - 1
    out = model(x)
    g = size // factor
    assert out.recon.shape == x.shape and out.codes.shape == (3, g, g)
    assert model.encode(x).shape == (3, g, g) and model.decode(out.codes).shape == x.shape
    assert torch.isfinite(out.recon_loss) and torch.isfinite(out.vq_loss)


def test_gradients_reach_the_encoder():
    model = tiny()
    out = model(torch.rand(2, 1, 28, 28) * 2 - 1)
    (out.recon_loss + out.vq_loss).backward()
    first = model.encoder.net[0].weight
    assert first.grad is not None and first.grad.abs().sum() > 0


def test_save_load_round_trip_is_exact(tmp_path):
    model = tiny().train()
    model(torch.rand(8, 1, 28, 28) * 2 - 1)  # initialise the codebook from data, move EMA buffers
    model.eval()
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    loaded = VQVAE.from_pretrained(tmp_path).eval()
    assert isinstance(loaded.config.quantizer, QuantizerConfig)
    assert loaded.config == model.config
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    assert torch.equal(model.encode(x), loaded.encode(x))
    assert torch.equal(model.decode(model.encode(x)), loaded.decode(loaded.encode(x)))
    assert model.fingerprint() == loaded.fingerprint()


def test_fingerprint_changes_with_weights():
    model = tiny()
    before = model.fingerprint()
    with torch.no_grad():
        model.decoder.conv_out.bias.add_(1e-3)
    assert model.fingerprint() != before


@pytest.mark.parametrize(
    "kw,message",
    [
        ({"image_size": 30, "downsample": 4}, "not divisible"),
        ({"downsample": 3}, "power of two"),
        ({"channels": 2}, "channels"),
    ],
)
def test_bad_configs_are_rejected(kw, message):
    with pytest.raises(ValueError, match=message):
        VQVAEConfig(**kw).validate()


def test_psnr_and_ssim_against_hand_computed_values():
    x = torch.zeros(1, 1, 16, 16) - 1  # black image
    y = x.clone()
    y[..., 0, 0] = 1.0  # one white pixel: MSE = 1/256 on [0, 1]
    assert float(M.psnr_per_image(x, y)) == pytest.approx(10 * np.log10(256), rel=1e-5)
    assert float(M.ssim_per_image(x, x)) == pytest.approx(1.0, abs=1e-6)
    noisy = (x + 0.5 * torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    assert float(M.ssim_per_image(x, noisy)) < 0.5


def test_sharpness_is_lower_for_a_blurred_image():
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(2, 1, 28, 28, generator=g) > 0.5).float() * 2 - 1
    blurred = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1)
    assert float(M.gradient_magnitude(blurred).mean()) < float(M.gradient_magnitude(x).mean())


def test_edge_sharpness_ignores_flat_noise_and_sees_blur():
    torch.manual_seed(0)
    x = -torch.ones(4, 1, 16, 16)
    x[:, :, 4:12, 6:10] = 1.0  # a bright bar with sharp edges
    assert torch.allclose(M.edge_gradient_sums(x, x).diff().abs(), torch.zeros(1))  # ratio 1 against itself
    blurred = torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
    sums = M.edge_gradient_sums(blurred, x)
    assert sums[0] / sums[1] < 0.8
    noisy = x + 0.05 * torch.randn_like(x) * (x < 0)  # faint noise in the flat background only
    assert M.gradient_magnitude(noisy).mean() > 1.1 * M.gradient_magnitude(x).mean()  # the plain mean rises
    sums = M.edge_gradient_sums(noisy, x)
    assert abs(float(sums[0] / sums[1]) - 1.0) < 0.05  # the edge measure barely moves


def test_image_grid_layout():
    grid = image_grid(torch.zeros(5, 1, 4, 4), nrow=3, pad=1)
    assert grid.size == (3 * 5 + 1, 2 * 5 + 1) and grid.mode == "L"
