"""Stage one's models: the tokenizer contract (`base.py`), one file per architecture (`vqvae.py`: VQ-VAE,
`vqgan.py`: VQGAN) and one per quantizer (`quantizer.py`: vq, `fsq.py`, `lfq.py`).

This room knows no host: it imports torch and itself only, and raises plain ValueError. The host
(vqgen.stages.core.registry) finds architectures by name in `BUILTIN_TOKENIZERS` and in the entry-point group
`vqgen.tokenizers`, quantizers in `BUILTIN_QUANTIZERS` and the group `vqgen.quantizers`:

    [project.entry-points."vqgen.tokenizers"]
    my_tokenizer = "my_package.my_tokenizer:MyTokenizer"
"""

from vqgen.stages.tokenizer.base import (
    BUILTIN_QUANTIZERS,
    Quantizer,
    Tokenizer,
    TokenizerOutput,
    use_quantizer_lookup,
)

# name -> "module:Class", imported on first use; the name is also each config's `model_type`.
BUILTIN_TOKENIZERS = {
    "vqvae": "vqgen.stages.tokenizer.vqvae:VQVAE",
    "vqgan": "vqgen.stages.tokenizer.vqgan:VQGAN",
}

__all__ = [
    "BUILTIN_QUANTIZERS",
    "BUILTIN_TOKENIZERS",
    "Quantizer",
    "Tokenizer",
    "TokenizerOutput",
    "use_quantizer_lookup",
]
