"""Stage-two priors over tokenizer codes: the contract (`base.py`) and one file per model.

This package knows no host: it imports torch and its own contract only. The host (`vqgen.stages`) finds priors
by name in `BUILTIN_PRIORS` and in the entry-point group `vqgen.priors`, through which third-party packages add
their own:

    [project.entry-points."vqgen.priors"]
    my_prior = "my_package.my_prior:MyPrior"
"""

from vqgen.priors.base import Prior, PriorConfig, PriorOutput, SamplingOptions

# name -> "module:Class", imported on first use; the name is also each config's `prior_type`.
BUILTIN_PRIORS = {
    "gru": "vqgen.priors.gru:GRUPrior",
    "llamagen": "vqgen.priors.llamagen:LlamaGenPrior",
    "pixelcnn": "vqgen.priors.pixelcnn:PixelCNNPrior",
    "transformer": "vqgen.priors.transformer:TransformerPrior",
}

__all__ = ["BUILTIN_PRIORS", "Prior", "PriorConfig", "PriorOutput", "SamplingOptions"]
