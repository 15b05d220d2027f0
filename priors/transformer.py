"""A decoder-only transformer prior built from the `transformers` library (a small Llama).

The sequence is one prefix token followed by the codes in raster order: the prefix is the start token of an
unconditional prior, or the token of the class (or of the null class, for classifier-free guidance) of a
conditional one. The vocabulary is the V codebook codes followed by these special tokens; the logits a prior
returns are restricted to the V code entries. Sampling uses the model's key/value cache (`DynamicCache`);
`sample_hf_generate` samples with `transformers`' own `generate` for comparison.

Llama: Touvron et al. 2023, arXiv:2302.13971. Class tokens as the prefix of a code sequence, as in LlamaGen:
Sun et al. 2024, arXiv:2406.06525.
"""

import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DynamicCache, GenerationConfig, LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaModel

from priors import register_prior
from priors.base import Prior, PriorConfig, PriorOutput

# transformers 5 renamed the `past_key_values` argument to `cache`
CACHE_ARG = "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"


@dataclass
class TransformerPriorConfig(PriorConfig):
    prior_type: str = "transformer"
    hidden_size: int = 128
    num_layers: int = 3
    num_heads: int = 4
    intermediate_size: int = 256  # width of the SwiGLU MLP
    attention_dropout: float = 0.1  # training only
    attn_implementation: str = "sdpa"  # "sdpa" or "eager"; any `transformers` attention backend


@dataclass
class TransformerSamplingState:
    cache: DynamicCache  # keys and values of every position fed so far
    prefix: torch.Tensor  # (B, 1) the start or class token, fed at the first call


@register_prior("transformer")
class TransformerPrior(Prior):
    def __init__(self, config: TransformerPriorConfig):
        super().__init__(config)
        c = config
        self.start_token = c.vocab_size  # then one token per class, then the null-class token
        llama = LlamaConfig(
            vocab_size=c.vocab_size + c.num_classes + 2,
            hidden_size=c.hidden_size,
            intermediate_size=c.intermediate_size,
            num_hidden_layers=c.num_layers,
            num_attention_heads=c.num_heads,
            num_key_value_heads=c.num_heads,
            max_position_embeddings=c.seq_len,
            attention_dropout=c.attention_dropout,
            tie_word_embeddings=False,
            bos_token_id=None,  # the defaults (1, 2) are code tokens here
            eos_token_id=None,
            pad_token_id=None,
            attn_implementation=c.attn_implementation,
        )
        self.model = LlamaForCausalLM(llama)

    def _prefix(self, labels: torch.Tensor | None, batch_size: int) -> torch.Tensor:
        """(B, 1) first token: start for an unconditional prior, else the class token (null if no labels)."""
        c = self.config
        if c.num_classes == 0:
            return torch.full((batch_size, 1), self.start_token, dtype=torch.long, device=self.device)
        if labels is None:
            labels = torch.full((batch_size,), c.num_classes, dtype=torch.long, device=self.device)
        return (self.start_token + 1 + labels.to(self.device, torch.long)).view(batch_size, 1)

    def _code_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., d) hidden states -> (..., V) logits over the codebook codes only."""
        return F.linear(hidden, self.model.lm_head.weight[: self.config.vocab_size])

    def forward(self, codes: torch.Tensor, labels: torch.Tensor | None = None) -> PriorOutput:
        b, h, w = codes.shape
        prefix = self._prefix(self.training_labels(labels), b)
        ids = torch.cat([prefix, codes.reshape(b, h * w)[:, :-1]], dim=1)  # (B, T): code t - 1 at t
        hidden = self.model.model(input_ids=ids, use_cache=False).last_hidden_state  # (B, T, d)
        logits = self._code_logits(hidden).view(b, h, w, -1)  # (B, H, W, V)
        return PriorOutput(logits=logits, loss=self.nll(logits, codes))

    def begin_sampling(self, labels: torch.Tensor | None, batch_size: int) -> TransformerSamplingState:
        return TransformerSamplingState(cache=DynamicCache(), prefix=self._prefix(labels, batch_size))

    def next_logits(
        self, state: TransformerSamplingState, prev: torch.Tensor | None
    ) -> tuple[torch.Tensor, TransformerSamplingState]:
        ids = state.prefix if prev is None else prev.view(-1, 1)  # (B, 1)
        out = self.model.model(input_ids=ids, use_cache=True, **{CACHE_ARG: state.cache})
        return self._code_logits(out.last_hidden_state[:, -1]), state  # (B, V)

    @torch.no_grad()
    def sample_hf_generate(
        self,
        n: int,
        labels: torch.Tensor | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample n grids (n, H, W) with `transformers`' `generate`, special tokens suppressed, for comparison
        with `sample`. No guidance. `generate` draws from the global RNG: a `generator` seeds it for the call."""
        c = self.config
        was_training = self.training
        self.eval()
        cond, _ = self._sampling_labels(n, labels, cfg_scale=1.0)
        prefix = self._prefix(cond, n)
        gen_config = GenerationConfig(
            do_sample=True,
            max_new_tokens=c.seq_len,
            min_new_tokens=c.seq_len,
            temperature=temperature,
            top_k=top_k or 0,  # generate's own default would be 50
            top_p=top_p if top_p is not None else 1.0,
            suppress_tokens=list(range(c.vocab_size, self.model.config.vocab_size)),  # codes only
            pad_token_id=self.start_token,
            use_cache=True,
        )
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            if generator is not None:
                torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
            out = self.model.generate(
                prefix, attention_mask=torch.ones_like(prefix), generation_config=gen_config
            )
        self.train(was_training)
        return out[:, 1:].reshape(n, c.grid_height, c.grid_width)
