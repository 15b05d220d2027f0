"""`vqgen import taming last.ckpt --model-config model.yaml`: taming-transformers' VQGAN (Esser et al. 2021,
arXiv:2012.09841; github.com/CompVis/taming-transformers, taming/models/vqgan.py `VQModel`) as a vqgen `vqgan`.

The yaml is the model's own config (`model.target: taming.models.vqgan.VQModel`, `params.ddconfig`, `n_embed`,
`embed_dim`); it is read with yaml.safe_load, never instantiated. The Lightning checkpoint's `state_dict` holds the
encoder, decoder, quantizer and the two 1x1 convolutions around it (kept even at equal width: vqgen's quantizer
`project` option), and the loss' discriminator and LPIPS weights, which are not part of the tokenizer and are left
out. Released: the ImageNet f16-1024 and f16-16384 models (heibox links in taming-transformers' README; also
mirrored on the Hub, e.g. dalle-mini/vqgan_imagenet_f16_16384 as flax weights, which this format does not read).
"""

from pathlib import Path

from vqgen.stages.core.errors import UserError, one_line
from vqgen.stages.core.files import file_sha256
from vqgen.stages.interop.base import Imported, ImportFormat, ImportRequest
from vqgen.stages.interop.sources import read_checkpoint, source_file, state_dict_in
from vqgen.stages.interop.vqgan_layout import TAMING, load_into, to_vqgen
from vqgen.stages.tokenizer.base import QuantizerConfig
from vqgen.stages.tokenizer.vqgan import VQGAN, VQGANConfig

TARGET = "taming.models.vqgan.VQModel"


def read_yaml(path: str) -> dict:
    """model.params of a taming yaml config, checked to describe a plain VQModel."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).expanduser().read_text())
        model = data["model"]
        target, params = model["target"], model["params"]
        params["ddconfig"]  # noqa: B018 (present)
    except FileNotFoundError:
        raise UserError(f"--model-config {path}: no such file") from None
    except Exception as exc:  # not yaml, or not a taming model config
        raise UserError(
            f"--model-config {path}: not a taming-transformers model config (model.target, model.params.ddconfig): "
            f"{one_line(exc, 160)}"
        ) from None
    if target != TARGET:
        raise UserError(
            f"--model-config {path}: model.target is {target}; only {TARGET} is supported "
            "(GumbelVQ, EMAVQ and the transformers have other quantizers or are not tokenizers)"
        )
    return params


def attn_levels(dd: dict) -> int:
    """vqgen's attn_levels for taming's attn_resolutions: attention must sit in the lowest-resolution levels."""
    n, res = len(dd["ch_mult"]), int(dd["resolution"])
    with_attn = [i for i in range(n) if res // 2**i in set(dd.get("attn_resolutions") or [])]
    k = len(with_attn)
    if with_attn != list(range(n - k, n)):
        raise UserError(
            f"taming attn_resolutions {dd.get('attn_resolutions')} at resolution {res} puts attention in levels "
            f"{with_attn} of {n}; vqgen's vqgan has it in the lowest-resolution levels only (attn_levels)"
        )
    return k


def taming_config(params: dict, image_size: int | None) -> VQGANConfig:
    """vqgen's config of a taming VQModel; an option vqgen cannot express is refused in one line naming it."""
    dd = params["ddconfig"]
    obstacles = {
        "ddconfig.double_z": dd.get("double_z", True) is not False,
        "ddconfig.resamp_with_conv": dd.get("resamp_with_conv", True) is not True,
        "ddconfig.in_channels != out_ch": dd.get("in_channels") != dd.get("out_ch"),
        "remap": params.get("remap") is not None,
    }
    for name, bad in obstacles.items():
        if bad:
            raise UserError(
                f"taming config: {name} is not supported by vqgen's vqgan (it has no such option)"
            )
    quantizer = QuantizerConfig(
        codebook_size=int(params["n_embed"]),
        code_dim=int(params["embed_dim"]),
        cosine=False,
        update="grad",
        restart_every=0,
        project=True,
    )
    config = VQGANConfig(
        image_size=int(image_size or dd["resolution"]),
        channels=int(dd["in_channels"]),
        base_channels=int(dd["ch"]),
        ch_mult=[int(m) for m in dd["ch_mult"]],
        num_res_blocks=int(dd["num_res_blocks"]),
        decoder_extra_blocks=1,
        attn_levels=attn_levels(dd),
        latent_channels=int(dd["z_channels"]),
        norm_groups=32,
        quantizer=quantizer,
    )
    try:
        config.validate()
    except ValueError as exc:
        raise UserError(f"taming config: {exc}") from None
    return config


class TamingVQGAN(ImportFormat):
    options = {"model_config", "image_size", "filename", "revision"}
    licence = "mit"

    def folder(self, request: ImportRequest) -> str:
        return "tokenizer"

    def convert(self, request: ImportRequest) -> Imported:
        o = request.options
        if not o.get("model_config"):
            raise UserError("import taming needs --model-config, the model's yaml (configs/*-project.yaml)")
        config = taming_config(read_yaml(o["model_config"]), o.get("image_size"))
        path = source_file(request.source, o.get("filename"), o.get("revision"), "checkpoint (last.ckpt)")
        tensors = state_dict_in(read_checkpoint(path), path, ("state_dict",))
        model = VQGAN(config)
        load_into(model, to_vqgen(model, tensors, TAMING, str(path)))
        provenance = {
            "format": "taming",
            "source": request.source,
            "file": path.name,
            "sha256": file_sha256(path),
            "config": Path(o["model_config"]).name,
            "licence": self.licence,
            "upstream": "https://github.com/CompVis/taming-transformers (taming/models/vqgan.py VQModel)",
        }
        k, g = config.quantizer.codebook_size, config.grid_size
        return Imported(
            model,
            provenance,
            f"taming VQGAN f{config.downsample}: {k} codes, {g}x{g} grid at {config.image_size} px",
        )
