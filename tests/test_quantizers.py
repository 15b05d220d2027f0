"""The quantizer contract (stages/tokenizer/base.py), checked for every registered quantizer: shapes, codes in
[0, K), straight-through gradients reaching the encoder, codes -> vectors -> nearest round trip, statistics in
range; plus what is particular to FSQ and LFQ."""

import pytest
import torch
from vqgen.stages.core.registry import QUANTIZERS
from vqgen.stages.tokenizer.base import QuantizerConfig
from vqgen.stages.tokenizer.fsq import FSQ
from vqgen.stages.tokenizer.lfq import LFQ

# A tiny config per quantizer: K = 16 for each.
TINY = {
    "vq": QuantizerConfig(kind="vq", codebook_size=16, code_dim=4, init="sample"),
    "fsq": QuantizerConfig(kind="fsq", codebook_size=16, levels=[4, 4]),
    "lfq": QuantizerConfig(kind="lfq", codebook_size=16, code_dim=4),
}


def make(kind: str, in_channels: int = 8):
    torch.manual_seed(0)
    return QUANTIZERS.get(kind)(in_channels, TINY[kind])


def test_every_registered_quantizer_has_a_tiny_config():
    assert set(QUANTIZERS.names()) <= set(TINY)


@pytest.mark.parametrize("kind", sorted(TINY))
def test_quantizer_contract(kind):
    q = make(kind).train()
    encoder = torch.nn.Conv2d(3, 8, 1)  # stands for the encoder: its weight must receive gradients
    z = encoder(torch.randn(4, 3, 5, 5))
    out = q(z)
    k = q.codebook_size
    assert k == 16 and QUANTIZERS.get(kind).size_of(TINY[kind]) == 16
    assert out.z_q.shape == z.shape and out.codes.shape == (4, 5, 5)
    assert out.codes.dtype == torch.long and int(out.codes.min()) >= 0 and int(out.codes.max()) < k
    assert torch.isfinite(out.loss) and out.loss.dim() == 0
    assert 1.0 - 1e-4 <= float(out.perplexity) <= k + 1e-3
    dead = int(out.dead_codes)  # an int, or a 0-d tensor (no device read in the forward)
    assert 0 <= dead <= k

    (out.z_q.square().sum() + out.loss).backward()  # straight-through: gradients pass the rounding
    assert encoder.weight.grad is not None and encoder.weight.grad.abs().sum() > 0

    q.eval()
    every = torch.arange(k)
    assert torch.equal(q.nearest(q.code_vectors(every)), every)  # codes -> vectors -> nearest: the same codes
    with torch.no_grad():
        codes = q(z).codes
        assert q.lookup(codes).shape == z.shape
        torch.testing.assert_close(
            q.lookup(codes), q(z).z_q, atol=1e-5, rtol=1e-5
        )  # z_q is the looked-up code


def test_fsq_codes_are_mixed_radix_digits_and_all_reachable():
    q = FSQ(2, QuantizerConfig(kind="fsq", codebook_size=15, levels=[5, 3])).eval()
    vectors = q.code_vectors(torch.arange(15))  # (15, 2) on the normalised grid
    assert vectors.unique(dim=0).shape[0] == 15 and vectors.abs().max() <= 1
    torch.testing.assert_close(q.code_vectors(torch.tensor(13)), torch.tensor([0.5, 1.0]))  # 13 = 3 + 5*2


@pytest.mark.parametrize("levels", [[1, 8], [], [256, 256, 2]])
def test_fsq_levels_that_make_no_sane_codebook_are_refused(levels):
    with pytest.raises(ValueError, match="fsq levels"):
        FSQ.size_of(QuantizerConfig(kind="fsq", levels=levels))


def test_lfq_codes_are_the_bits_of_the_signs():
    q = LFQ(3, QuantizerConfig(kind="lfq", codebook_size=8, code_dim=3))
    flat = torch.tensor([[1.0, -2.0, 0.5], [-1.0, -1.0, -1.0]])
    assert q.nearest(flat).tolist() == [1 + 4, 0]
    with pytest.raises(ValueError, match="bits"):
        LFQ.size_of(QuantizerConfig(kind="lfq", code_dim=17))


@pytest.mark.parametrize("code_dim", [4, 12])  # the exact codebook entropy, and the per-bit bound above 2**10
def test_lfq_entropy_penalty_favours_decisive_spread_codes(code_dim):
    q = LFQ(code_dim, QuantizerConfig(kind="lfq", codebook_size=2**code_dim, code_dim=code_dim))
    g = torch.Generator().manual_seed(0)
    spread = torch.randn(256, code_dim, generator=g) * 3  # decisive bits, every code in use
    collapsed = torch.full((256, code_dim), 3.0)  # decisive but always the same code
    undecided = torch.zeros(256, code_dim)  # every bit a coin toss
    assert q.entropy_loss(spread) < q.entropy_loss(collapsed)
    assert q.entropy_loss(spread) < q.entropy_loss(undecided)


def test_dead_codes_are_judged_against_an_even_share_in_large_codebooks():
    """A fixed threshold of one vector a step would call most of 4,096 codes dead at 3,136 vectors a step."""
    from vqgen.stages.tokenizer.base import dead_code_mask

    small = torch.full((512,), 3136 / 512)
    small[:7] = 0.9  # below one vector a step: dead
    assert dead_code_mask(small, 1.0, 0.2).sum() == 7
    large = torch.full((4096,), 3136 / 4096)  # an even split: 0.77 a step each, all alive
    large[:30] = 0.1  # below a fifth of the even split: dead
    assert dead_code_mask(large, 1.0, 0.2).sum() == 30
