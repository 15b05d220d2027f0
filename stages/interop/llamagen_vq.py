"""`vqgen import llamagen-vq`: LlamaGen's image tokenizers (Sun et al. 2024, arXiv:2406.06525;
github.com/FoundationVision/LlamaGen, tokenizer/tokenizer_image/vq_model.py) as a vqgen `vqgan` tokenizer.

Their VQModel is taming's VQGAN at width 128 with 2 residual blocks per level, attention in the lowest level,
z_channels 256, and a 16,384-code codebook of 8 dimensions looked up by cosine distance (both the encoder output
and the codes l2-normalised). VQ-16 has ch_mult (1, 1, 2, 2, 4), VQ-8 (1, 2, 2, 4). Checkpoints hold no config,
so `--model` names the preset; `--codebook-size` and `--codebook-embed-dim` cover non-default codebooks. Released:
huggingface.co/FoundationVision/LlamaGen, files vq_ds16_c2i.pt and vq_ds8_c2i.pt (MIT licence).
"""

from vqgen.stages.core.errors import UserError
from vqgen.stages.core.files import file_sha256
from vqgen.stages.interop.base import Imported, ImportFormat, ImportRequest
from vqgen.stages.interop.sources import read_checkpoint, source_file, state_dict_in
from vqgen.stages.interop.vqgan_layout import LLAMAGEN, load_into, to_vqgen
from vqgen.stages.tokenizer.base import QuantizerConfig
from vqgen.stages.tokenizer.vqgan import VQGAN, VQGANConfig

# ModelArgs' encoder_ch_mult (= decoder_ch_mult) per preset; Encoder/Decoder's defaults ch=128, num_res_blocks=2
PRESETS = {
    "VQ-16": dict(ch_mult=[1, 1, 2, 2, 4], ch=128, num_res_blocks=2, z_channels=256),
    "VQ-8": dict(ch_mult=[1, 2, 2, 4], ch=128, num_res_blocks=2, z_channels=256),
}


def llamagen_config(model: str, codebook_size: int, embed_dim: int, image_size: int) -> VQGANConfig:
    """vqgen's config of LlamaGen's VQ model `model` (ModelArgs defaults: ch 128, z_channels 256, l2-normalised
    codes, GroupNorm(32, eps 1e-6))."""
    if model not in PRESETS:
        raise UserError(f"unknown LlamaGen tokenizer --model {model!r}; available: {', '.join(PRESETS)}")
    arch = PRESETS[model]
    quantizer = QuantizerConfig(
        codebook_size=codebook_size, code_dim=embed_dim, cosine=True, update="grad", restart_every=0
    )
    return VQGANConfig(
        image_size=image_size,
        channels=3,
        base_channels=arch["ch"],
        ch_mult=list(arch["ch_mult"]),
        num_res_blocks=arch["num_res_blocks"],
        decoder_extra_blocks=1,
        attn_levels=1,
        latent_channels=arch["z_channels"],
        norm_groups=32,
        quantizer=quantizer,
        mid_attention=True,
    )


class LlamaGenVQ(ImportFormat):
    options = {"model", "codebook_size", "codebook_embed_dim", "image_size", "filename", "revision"}
    licence = "mit"

    def folder(self, request: ImportRequest) -> str:
        return "tokenizer"

    def convert(self, request: ImportRequest) -> Imported:
        o = request.options
        name = o.get("model", "VQ-16")
        config = llamagen_config(
            name, o.get("codebook_size", 16384), o.get("codebook_embed_dim", 8), o.get("image_size", 256)
        )
        try:
            config.validate()
        except ValueError as exc:
            raise UserError(str(exc)) from None
        path = source_file(request.source, o.get("filename"), o.get("revision"), "checkpoint (.pt)")
        tensors = state_dict_in(read_checkpoint(path), path, ("model", "ema", "state_dict", "module"))
        model = VQGAN(config)
        load_into(model, to_vqgen(model, tensors, LLAMAGEN, str(path)))
        provenance = {
            "format": "llamagen-vq",
            "source": request.source,
            "file": path.name,
            "sha256": file_sha256(path),
            "licence": self.licence,
            "preset": name,
            "upstream": "https://github.com/FoundationVision/LlamaGen (tokenizer/tokenizer_image/vq_model.py)",
        }
        k, g = config.quantizer.codebook_size, config.grid_size
        return Imported(
            model, provenance, f"LlamaGen {name}: {k} codes, {g}x{g} grid at {config.image_size} px"
        )
