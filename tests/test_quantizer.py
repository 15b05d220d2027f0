"""The vector quantizer: straight-through gradients, commitment placement, EMA, init from data, dead-code restart,
usage metrics."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from vqgen.stages.evaluation.metrics import codebook_stats
from vqgen.stages.tokenizer.base import QuantizerConfig
from vqgen.stages.tokenizer.quantizer import VectorQuantizer, kmeans


def make(in_ch=4, **kw) -> VectorQuantizer:
    torch.manual_seed(0)
    kw.setdefault("code_dim", in_ch)
    return VectorQuantizer(in_ch, QuantizerConfig(**kw))


def test_straight_through_gradient_is_identity():
    vq = make(codebook_size=8, init="random")
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = vq(z)
    weights = torch.randn_like(out.z_q)
    (out.z_q * weights).sum().backward()
    torch.testing.assert_close(z.grad, weights)  # d z_q / d z = identity


def test_commitment_loss_is_beta_times_encoder_term_only_for_ema():
    vq = make(codebook_size=8, init="random", beta=0.7, update="ema")
    vq.eval()
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = vq(z)
    expected = 0.7 * torch.mean((z - vq.codebook[out.codes].permute(0, 3, 1, 2)) ** 2)
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    assert z.grad.abs().sum() > 0


def test_grad_mode_updates_codebook_by_gradient():
    vq = make(codebook_size=8, init="random", update="grad")
    out = vq(torch.randn(2, 4, 3, 3))
    out.loss.backward()
    assert vq.codebook.grad is not None and vq.codebook.grad.abs().sum() > 0


def test_ema_moves_codes_towards_assigned_vectors():
    vq = make(codebook_size=2, init="random", ema_decay=0.5, restart_every=0)
    vq.train()
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[1.0, 0, 0, 0], [-1.0, 0, 0, 0]]))
        vq.ema_sum.copy_(vq.codebook)
    z = torch.zeros(1, 4, 1, 2)
    z[0, :, 0, 0] = torch.tensor([3.0, 0, 0, 0])  # goes to code 0
    z[0, :, 0, 1] = torch.tensor([-3.0, 0, 0, 0])  # goes to code 1
    before = vq.codebook.clone()
    vq(z)
    assert vq.codebook[0, 0] > before[0, 0] and vq.codebook[1, 0] < before[1, 0]


def test_codebook_initialised_from_data_by_kmeans():
    vq = make(codebook_size=4, init="kmeans", restart_every=0)
    centres = torch.tensor([[5.0, 5, 5, 5], [-5.0, -5, -5, -5], [5.0, -5, 5, -5], [-5.0, 5, -5, 5]])
    data = centres.repeat_interleave(16, 0) + 0.01 * torch.randn(64, 4)
    z = data.view(1, 8, 8, 4).permute(0, 3, 1, 2)
    vq.train()
    vq(z)
    nearest = torch.cdist(centres, vq.codebook).min(1).values
    assert bool(vq.initialised) and nearest.max() < 0.5


def test_dead_code_restart_revives_codes():
    vq = make(codebook_size=16, init="random", restart_every=1, restart_threshold=0.5, ema_decay=0.5)
    with torch.no_grad():
        vq.codebook.mul_(0).add_(100.0)  # every code far away from the data ...
        vq.codebook[0] = 0.0  # ... but one, which takes all assignments
        vq.ema_sum.copy_(vq.codebook)
    vq.train()
    z = torch.randn(4, 4, 4, 4)
    assert vq(z).codes.unique().numel() == 1
    for _ in range(5):
        vq(z)
    vq.eval()
    assert vq(z).codes.unique().numel() > 8  # restarted codes now sit on encoder outputs and are used


def test_cosine_codes_are_unit_vectors():
    vq = make(codebook_size=8, init="random", cosine=True)
    vq.eval()
    z = torch.randn(2, 4, 3, 3)
    codes = vq(z).codes
    looked_up = torch.nn.functional.normalize(vq.codebook, dim=-1)[codes]
    torch.testing.assert_close(looked_up.norm(dim=-1), torch.ones(codes.shape))


def test_low_dimensional_projection_shapes():
    vq = make(in_ch=32, code_dim=4, codebook_size=8, init="random").eval()
    out = vq(torch.randn(2, 32, 5, 5))
    assert out.z_q.shape == (2, 32, 5, 5) and out.codes.shape == (2, 5, 5) and vq.codebook.shape == (8, 4)
    torch.testing.assert_close(vq.lookup(out.codes), out.z_q.detach(), atol=1e-5, rtol=1e-5)


def test_codebook_stats_on_a_known_histogram():
    stats = codebook_stats(torch.tensor([2, 2, 0, 0]))
    assert stats["codebook_usage"] == 0.5 and stats["dead_codes"] == 2
    assert stats["perplexity"] == pytest.approx(2.0)


def test_codebook_smaller_than_two_is_rejected():
    with pytest.raises(ValueError, match="at least 2"):
        make(codebook_size=1)


@settings(max_examples=25, deadline=None)
@given(
    k=st.integers(2, 32),
    d=st.integers(1, 8),
    b=st.integers(1, 3),
    h=st.integers(1, 5),
    cosine=st.booleans(),
    update=st.sampled_from(["ema", "grad"]),
)
def test_quantizer_properties(k, d, b, h, cosine, update):
    """For any shape: codes in range, z_q equals the looked-up codes, loss finite and non-negative."""
    vq = VectorQuantizer(
        d, QuantizerConfig(codebook_size=k, code_dim=d, cosine=cosine, update=update, init="sample")
    )
    vq.train()
    z = torch.randn(b, d, h, h)
    out = vq(z)
    assert out.codes.shape == (b, h, h) and int(out.codes.min()) >= 0 and int(out.codes.max()) < k
    assert torch.isfinite(out.loss) and float(out.loss.detach()) >= 0
    assert 1.0 - 1e-4 <= float(out.perplexity) <= k + 1e-3
    vq.eval()
    out = vq(z)
    torch.testing.assert_close(vq.lookup(out.codes), out.z_q.detach(), atol=1e-5, rtol=1e-5)


def test_kmeans_recovers_separated_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 10.0], [-10.0, 10.0]])
    x = centres.repeat(30, 1) + 0.1 * torch.randn(90, 2, generator=g)
    found = kmeans(x, 3, 20, torch.Generator().manual_seed(1))
    assert torch.cdist(centres, found).min(1).values.max() < 1.0
