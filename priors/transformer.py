"""A decoder-only transformer prior built from the `transformers` library (a small Llama).

The sequence is one prefix token followed by the codes in raster order: the prefix is the start token of an
unconditional prior, or the token of the class (or of the null class, for classifier-free guidance) of a
conditional one. The vocabulary is the V codebook codes followed by these special tokens; the logits a prior
returns are restricted to the V code entries.

Sampling keeps a key/value cache. At this size `transformers`' own decoding step (a model call with a
`DynamicCache`, as `generate` makes) spends more time in Python than in arithmetic, so `next_logits` runs the
same Llama modules and weights through a lean step of its own: keys and values in one preallocated buffer,
the query/key/value and gate/up projections fused into one matrix each, rotary angles computed once by the
model's own rotary module. It returns the teacher-forced logits (tested to 1e-9 in float64). Under autocast
(`torch.autocast(..., dtype=torch.bfloat16)`) these decoding weights are cast once when sampling begins, not
at every token as autocast would: a decoding step reads little but the weights, so half the bytes read is
most of the step's time (benchmarks/prior_scale.py).
`sample_hf_generate` samples with `transformers`' `generate`, for comparison.

Llama: Touvron et al. 2023, arXiv:2302.13971. Class tokens as the prefix of a code sequence, as in LlamaGen:
Sun et al. 2024, arXiv:2406.06525.
"""

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM
from vqgen.priors.base import Prior, PriorConfig, PriorOutput, SamplingOptions
from vqgen.priors.sizes import SIZES, swiglu_hidden

POS_2D_FROM = 256  # grid positions from which the transformer's 2-D positions are on by default


@dataclass
class TransformerPriorConfig(PriorConfig):
    prior_type: str = "transformer"
    hidden_size: int = 128
    num_layers: int = 3
    num_heads: int = 4
    intermediate_size: int = 256  # width of the SwiGLU MLP
    attention_dropout: float = 0.1  # training only, as the two below
    # on the input embeddings (LlamaGen's token_dropout; 0.2 and resid_dropout 0.2 lowered the held-out NLL on
    # 1,615 RGB emoji by 5.5%, with their mirror images and without: docs, your own small dataset)
    token_dropout: float = 0.2
    # on each attention and MLP output before its residual add (LlamaGen's resid/ffn)
    resid_dropout: float = 0.2
    attn_implementation: str = "sdpa"  # "sdpa" or "eager"; any `transformers` attention backend
    # 2-D positions: learned row and column embeddings of the position being predicted, added to every input
    # embedding (on top of Llama's 1-D rotary positions), so the model knows where in the grid it is. None: on for
    # grids of 256 positions and more (16x16 up), where it lowered the held-out NLL (README: Long grids), off below
    pos_2d: bool | None = None
    # sampling defaults chosen on the digits and RGB emoji by benchmarks/prior_sweep.py (docs: own small dataset)
    sample_temperature: float = 0.9
    sample_cfg_scale: float = 3.0

    @classmethod
    def sizes(cls) -> dict[str, dict]:
        """LlamaGen's widths, depths, heads and SwiGLU widths (priors/sizes.py); parameter counts agree with
        LlamaGen's within 1% at equal vocabulary and grid (the class tokens share the output layer here), and
        LlamaGen's training dropout (token and residual 0.1; the small default's 0.2 is for small datasets)."""
        return {
            name: dict(
                hidden_size=p.hidden_size,
                num_layers=p.num_layers,
                num_heads=p.num_heads,
                intermediate_size=swiglu_hidden(p.hidden_size, p.multiple_of),
                token_dropout=0.1,
                resid_dropout=0.1,
            )
            for name, p in SIZES.items()
        }

    def __post_init__(self) -> None:
        if self.pos_2d is None:  # resolved once, so config.json records what the model was built with
            self.pos_2d = self.grid_height * self.grid_width >= POS_2D_FROM


def rms_norm(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """What `LlamaRMSNorm` computes (in float32, then back to x's dtype), in one fused kernel where torch has it:
    the module's own five elementwise steps cost more than the rest of a small decoding step's arithmetic."""
    if not hasattr(F, "rms_norm"):  # torch < 2.4
        return norm(x)
    return norm.weight * F.rms_norm(x.float(), x.shape[-1:], eps=norm.variance_epsilon).to(x.dtype)


@dataclass
class DecoderWeights:
    """One Llama decoder layer's weights, fused for single-token decoding."""

    input_norm: nn.Module
    qkv_weight: torch.Tensor  # (3 nh hd, d): q_proj, k_proj, v_proj stacked
    qkv_bias: torch.Tensor | None
    o_weight: torch.Tensor  # (d, nh hd)
    o_bias: torch.Tensor | None
    post_norm: nn.Module
    gate_up_weight: torch.Tensor  # (2 I, d): gate_proj, up_proj stacked
    act: nn.Module
    down_weight: torch.Tensor  # (d, I)


@dataclass
class TransformerSamplingState:
    layers: list[DecoderWeights]
    head_weight: torch.Tensor  # (V, d) the output layer's code rows
    kv: torch.Tensor  # (L, 2, B, nh, T + 1, hd) keys and values, filled up to `position`
    cos: torch.Tensor  # (T + 1, hd) rotary cosines of every position
    sin: torch.Tensor  # (T + 1, hd) rotary sines, with the sign of rotate_half folded in
    prefix: torch.Tensor  # (B,) the start or class token, fed at the first call
    position: int  # sequence position of the token the next call feeds


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
        # Llama has no residual dropout: on the two projections that feed the residuals
        if c.resid_dropout > 0:
            for layer in self.model.model.layers:
                for branch in (layer.self_attn.o_proj, layer.mlp.down_proj):
                    branch.register_forward_hook(self._drop_residual)
        if c.pos_2d:
            self.row_embed = nn.Embedding(c.grid_height, c.hidden_size)
            self.col_embed = nn.Embedding(c.grid_width, c.hidden_size)
            for table in (self.row_embed, self.col_embed):
                nn.init.normal_(table.weight, std=llama.initializer_range)

    def _drop_residual(self, module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
        return F.dropout(output, self.config.resid_dropout, self.training)

    def _position(self, t: torch.Tensor | int) -> torch.Tensor | int:
        """The 2-D embedding of raster position(s) t (the code being predicted), or 0 without pos_2d."""
        if not self.config.pos_2d:
            return 0
        t = torch.as_tensor(t, device=self.row_embed.weight.device)
        return self.row_embed(t // self.config.grid_width) + self.col_embed(t % self.config.grid_width)

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
        embeds = self.model.model.embed_tokens(ids) + self._position(torch.arange(h * w))  # (B, T, d)
        embeds = F.dropout(embeds, self.config.token_dropout, self.training)
        hidden = self.model.model(inputs_embeds=embeds, use_cache=False).last_hidden_state  # (B, T, d)
        logits = self._code_logits(hidden).view(b, h, w, -1)  # (B, H, W, V)
        return PriorOutput(logits=logits, loss=self.nll(logits, codes))

    def begin_sampling(self, labels: torch.Tensor | None, batch_size: int) -> TransformerSamplingState:
        llama = self.model.model
        attn = llama.layers[0].self_attn
        heads, head_dim = self.model.config.num_attention_heads, attn.head_dim
        if self.model.config.num_key_value_heads != heads:
            raise ValueError("the lean decoding step assumes as many key/value heads as query heads")
        weight = llama.embed_tokens.weight
        device = weight.device.type
        # the matrices' dtype: autocast's, cast here once, else the model's
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
        positions = torch.arange(self.config.seq_len + 1, device=weight.device)[None]  # (1, T + 1)
        cos, sin = llama.rotary_emb(weight[:1], positions)  # (1, T + 1, hd) each, in the model's dtype
        half = head_dim // 2
        sin = torch.cat([-sin[0, :, :half], sin[0, :, half:]], dim=-1)  # rotate_half's sign, folded in

        def matrix(*parts: torch.Tensor | None) -> torch.Tensor | None:
            """The parts stacked, in `dtype`; one part already in `dtype` is itself (no copy)."""
            if parts[0] is None:
                return None
            return (parts[0] if len(parts) == 1 else torch.cat(parts)).to(dtype)

        layers = []
        for layer in llama.layers:
            a, m = layer.self_attn, layer.mlp
            layers.append(
                DecoderWeights(
                    input_norm=layer.input_layernorm,
                    qkv_weight=matrix(a.q_proj.weight, a.k_proj.weight, a.v_proj.weight),
                    qkv_bias=matrix(a.q_proj.bias, a.k_proj.bias, a.v_proj.bias),
                    o_weight=matrix(a.o_proj.weight),
                    o_bias=matrix(a.o_proj.bias),
                    post_norm=layer.post_attention_layernorm,
                    gate_up_weight=matrix(m.gate_proj.weight, m.up_proj.weight),
                    act=m.act_fn,
                    down_weight=matrix(m.down_proj.weight),
                )
            )
        head = matrix(self.model.lm_head.weight[: self.config.vocab_size])
        kv = weight.new_zeros(
            len(layers), 2, batch_size, heads, self.config.seq_len + 1, head_dim, dtype=dtype
        )
        prefix = self._prefix(labels, batch_size).view(batch_size)
        return TransformerSamplingState(layers, head, kv, cos[0].to(dtype), sin.to(dtype), prefix, position=0)

    def next_logits(
        self, state: TransformerSamplingState, prev: torch.Tensor | None
    ) -> tuple[torch.Tensor, TransformerSamplingState]:
        llama, t = self.model.model, state.position
        x = llama.embed_tokens(state.prefix if prev is None else prev)  # (B, d)
        if self.config.pos_2d:
            x = x + self._position(t)
        b, heads, head_dim, dtype = x.shape[0], state.kv.shape[3], state.kv.shape[5], state.kv.dtype
        cos, sin = state.cos[t], state.sin[t]  # (hd,) each
        for n, w in enumerate(state.layers):
            qkv = F.linear(rms_norm(x, w.input_norm).to(dtype), w.qkv_weight, w.qkv_bias)
            qkv = qkv.view(b, 3, heads, head_dim)
            qk = qkv[:, :2]
            qk = qk * cos + qk.roll(head_dim // 2, -1) * sin  # rotary on q and k: (B, 2, nh, hd)
            state.kv[n, 0, :, :, t] = qk[:, 1]
            state.kv[n, 1, :, :, t] = qkv[:, 2]
            keys, values = state.kv[n, :, :, :, : t + 1]  # (B, nh, t + 1, hd) each
            attn = F.scaled_dot_product_attention(qk[:, 0, :, None], keys, values)  # (B, nh, 1, hd)
            x = x + F.linear(attn.view(b, heads * head_dim), w.o_weight, w.o_bias)
            h = rms_norm(x, w.post_norm).to(dtype)
            gate, up = F.linear(h, w.gate_up_weight).chunk(2, -1)  # (B, I) each
            x = x + F.linear(w.act(gate) * up, w.down_weight)
        state.position += 1
        # (B, V), in the decoding dtype: Prior.sample draws from them in float32
        return F.linear(rms_norm(x, llama.norm).to(dtype), state.head_weight), state

    @torch.no_grad()
    def sample_hf_generate(
        self,
        n: int,
        labels: torch.Tensor | None = None,
        options: SamplingOptions | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample n grids (n, H, W) with `transformers`' `generate`, special tokens suppressed, for comparison
        with `sample`: the options' temperature, top-k and top-p, no guidance. `generate` draws from the global
        RNG: a `generator` seeds it for the call."""
        c, options = self.config, options or SamplingOptions()
        if c.pos_2d:
            raise ValueError("sample_hf_generate knows no 2-D positions; use sample() with pos_2d")
        was_training = self.training
        self.eval()
        cond, _ = self._sampling_labels(n, labels, cfg_scale=1.0)
        prefix = self._prefix(cond, n)
        gen_config = GenerationConfig(
            do_sample=True,
            max_new_tokens=c.seq_len,
            min_new_tokens=c.seq_len,
            temperature=options.temperature,
            top_k=options.top_k or 0,  # generate's own default would be 50
            top_p=options.top_p if options.top_p is not None else 1.0,
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
