"""diffusers' `VQModel` (github.com/huggingface/diffusers, models/autoencoders/vq_model.py) and vqgen's `vqgan`, both
ways: `vqgen import diffusers SOURCE [--subfolder vqvae]` and `vqgen export RUN/tokenizer --format diffusers`.

A VQModel is the taming VQGAN under other names (vqgan_layout.DIFFUSERS) with its options in config.json:
`block_out_channels` (vqgen: base_channels x ch_mult), `layers_per_block` (num_res_blocks; the decoder has one
more), `AttnDownEncoderBlock2D` / `AttnUpDecoderBlock2D` at the lowest resolutions (attn_levels),
`mid_block_add_attention` (mid_attention), `latent_channels`, `vq_embed_dim` (code_dim, with quant_conv /
post_quant_conv at any width: quantizer.project), `num_vq_embeddings`, `norm_num_groups`. Import loads it with
diffusers' own `VQModel.from_pretrained` (safetensors, or .bin through torch.load(weights_only=True)); export
writes config.json + diffusion_pytorch_model.safetensors itself (diffusers is not needed to export). What a
VQModel cannot hold (l2-normalised codes, fsq/lfq quantizers, another decoder depth) is refused, naming the option.
Released VQModels on the Hub include amused/amused-256 and amused/amused-512 (--subfolder vqvae) and
CompVis/ldm-celebahq-256 (--subfolder vqvae): expected to import (their options are all expressible), not
tried against the released files here.
"""

from pathlib import Path

import torch
from vqgen.stages.core.errors import UserError, one_line
from vqgen.stages.core.files import atomic_write, write_json
from vqgen.stages.interop.base import ExportFormat, Imported, ImportFormat, ImportRequest
from vqgen.stages.interop.vqgan_layout import DIFFUSERS, from_vqgen, load_into, to_vqgen
from vqgen.stages.tokenizer.base import QuantizerConfig
from vqgen.stages.tokenizer.vqgan import VQGAN, VQGANConfig

DOWN, ATTN_DOWN = "DownEncoderBlock2D", "AttnDownEncoderBlock2D"
UP, ATTN_UP = "UpDecoderBlock2D", "AttnUpDecoderBlock2D"
WEIGHTS = "diffusion_pytorch_model.safetensors"
DIFFUSERS_VERSION = "0.27.0"  # the oldest diffusers whose VQModel has every option written here


def _attn_levels(down: list[str], up: list[str]) -> int:
    """vqgen's attn_levels: attention blocks must be the last k down blocks and the first k up blocks."""
    n, k = len(down), sum(t == ATTN_DOWN for t in down)
    known = {DOWN, ATTN_DOWN, UP, ATTN_UP}
    odd = [t for t in down + up if t not in known]
    if odd:
        raise UserError(
            f"diffusers block type {odd[0]} is not supported by vqgen's vqgan (known: {sorted(known)})"
        )
    if down != [DOWN] * (n - k) + [ATTN_DOWN] * k or up != [ATTN_UP] * k + [UP] * (n - k):
        raise UserError(
            f"diffusers down_block_types {down} / up_block_types {up}: vqgen's vqgan has attention in the same "
            "lowest-resolution levels of encoder and decoder only (attn_levels)"
        )
    return k


def config_from_diffusers(c: dict, image_size: int | None) -> VQGANConfig:
    """vqgen's config of a VQModel config.json; an option vqgen cannot express is refused, naming it."""
    widths = [int(w) for w in c.get("block_out_channels", [64])]
    obstacles = {
        f"act_fn={c.get('act_fn')}": c.get("act_fn", "silu") != "silu",
        f"norm_type={c.get('norm_type')} (MoVQ's spatial norm)": c.get("norm_type", "group") != "group",
        "in_channels != out_channels": c.get("in_channels", 3) != c.get("out_channels", 3),
        f"block_out_channels={widths} (not multiples of the first)": any(w % widths[0] for w in widths),
    }
    for name, bad in obstacles.items():
        if bad:
            raise UserError(f"diffusers VQModel option {name} is not supported by vqgen's vqgan")
    latent = int(c.get("latent_channels", 3))
    quantizer = QuantizerConfig(
        codebook_size=int(c.get("num_vq_embeddings", 256)),
        code_dim=int(c.get("vq_embed_dim") or latent),
        cosine=False,
        update="grad",
        restart_every=0,
        project=True,
    )
    size = c.get("sample_size", 32)
    config = VQGANConfig(
        image_size=int(image_size or (size[0] if isinstance(size, list) else size)),
        channels=int(c.get("in_channels", 3)),
        base_channels=widths[0],
        ch_mult=[w // widths[0] for w in widths],
        num_res_blocks=int(c.get("layers_per_block", 1)),
        decoder_extra_blocks=1,
        attn_levels=_attn_levels(
            list(c.get("down_block_types", [DOWN])), list(c.get("up_block_types", [UP]))
        ),
        latent_channels=latent,
        norm_groups=int(c.get("norm_num_groups", 32)),
        quantizer=quantizer,
        mid_attention=bool(c.get("mid_block_add_attention", True)),
    )
    try:
        config.validate()
    except ValueError as exc:
        raise UserError(f"diffusers VQModel: {exc}") from None
    return config


def _vqmodel():
    try:
        from diffusers import VQModel
    except ImportError:
        raise UserError("import diffusers needs the diffusers package: pip install diffusers") from None
    return VQModel


class DiffusersVQ(ImportFormat):
    options = {"subfolder", "image_size", "revision"}
    licence = None  # each Hub repo states its own (read from its model card when there is one)

    def folder(self, request: ImportRequest) -> str:
        return "tokenizer"

    def convert(self, request: ImportRequest) -> Imported:
        o = request.options
        local = Path(request.source).expanduser()
        kwargs = {k: o[k] for k in ("subfolder", "revision") if o.get(k)}
        try:
            VQModel = _vqmodel()  # noqa: N806 (the class)
            original = VQModel.from_pretrained(str(local) if local.exists() else request.source, **kwargs)
        except UserError:
            raise
        except Exception as exc:  # not a VQModel folder, unknown repo, offline without a cache
            raise UserError(
                f"{request.source}: diffusers could not load a VQModel ({one_line(exc, 200)})"
            ) from None
        config = config_from_diffusers(dict(original.config), o.get("image_size"))
        model = VQGAN(config)
        load_into(model, to_vqgen(model, original.state_dict(), DIFFUSERS, request.source))
        provenance = {
            "format": "diffusers",
            "source": request.source,
            "subfolder": o.get("subfolder"),
            "revision": o.get("revision"),
            "licence": self.licence,
            "diffusers_class": type(original).__name__,
            "scaling_factor": original.config.get("scaling_factor"),
        }
        k, g = config.quantizer.codebook_size, config.grid_size
        summary = f"diffusers VQModel f{config.downsample}: {k} codes, {g}x{g} grid at {config.image_size} px"
        return Imported(model, provenance, summary)


def diffusers_config(cfg: VQGANConfig) -> dict:
    """A VQModel config.json for a vqgen `vqgan` config; what a VQModel cannot hold is refused, naming the option."""
    q, n = cfg.quantizer, len(cfg.ch_mult)
    widths = [cfg.base_channels * m for m in cfg.ch_mult]
    obstacles = [
        (q.kind != "vq", f"quantizer.kind={q.kind} (a VQModel has a vector quantizer)"),
        (
            q.cosine,
            "quantizer.cosine=true (l2-normalised codes; diffusers' VectorQuantizer uses plain distance)",
        ),
        (
            cfg.decoder_extra_blocks != 1,
            f"decoder_extra_blocks={cfg.decoder_extra_blocks} (a VQModel's is 1)",
        ),
        (cfg.num_res_blocks < 1, "num_res_blocks=0"),
        (
            any(w % cfg.norm_groups for w in widths),
            f"norm_groups={cfg.norm_groups} (must divide every width {widths})",
        ),
    ]
    for bad, name in obstacles:
        if bad:
            raise UserError(f"cannot export to diffusers: {name}")
    k = min(cfg.attn_levels, n)
    return {
        "_class_name": "VQModel", "_diffusers_version": DIFFUSERS_VERSION, "act_fn": "silu",
        "block_out_channels": widths, "down_block_types": [DOWN] * (n - k) + [ATTN_DOWN] * k,
        "up_block_types": [ATTN_UP] * k + [UP] * (n - k), "in_channels": cfg.channels,
        "out_channels": cfg.channels, "latent_channels": cfg.latent_channels, "layers_per_block": cfg.num_res_blocks,
        "norm_num_groups": cfg.norm_groups, "num_vq_embeddings": q.codebook_size, "vq_embed_dim": q.code_dim,
        "sample_size": cfg.image_size, "mid_block_add_attention": cfg.mid_attention, "norm_type": "group",
        "lookup_from_codebook": False, "force_upcast": False, "scaling_factor": 0.18215,
    }  # fmt: skip


def diffusers_state(model: VQGAN) -> dict[str, torch.Tensor]:
    """The VQModel state dict; where vqgen has no projection (code_dim = latent width), identity 1x1 convolutions,
    which compute exactly what no projection computes."""
    state = from_vqgen(model, DIFFUSERS)
    if "quant_conv.weight" not in state:
        d = model.config.quantizer.code_dim
        eye = torch.eye(d).reshape(d, d, 1, 1)
        for name in ("quant_conv", "post_quant_conv"):
            state[f"{name}.weight"], state[f"{name}.bias"] = eye.clone(), torch.zeros(d)
    return state


class DiffusersExport(ExportFormat):
    def export(self, model, out: Path) -> list[str]:
        import safetensors.torch

        if not isinstance(model, VQGAN):
            raise UserError(
                f"cannot export to diffusers: a {model.config.model_type} tokenizer; a VQModel holds a vqgan only"
            )
        config = diffusers_config(model.config)
        state = diffusers_state(model)
        atomic_write(out / WEIGHTS, lambda f: f.write(safetensors.torch.save(state)))
        write_json(config, out / "config.json")
        return ["config.json", WEIGHTS]
