"""Stage-two priors over tokenizer codes, one file per model, found through a registry.

Third-party packages add priors through the entry-point group `vqgen.priors`:

    [project.entry-points."vqgen.priors"]
    my_prior = "my_package.my_prior:MyPrior"
"""

from pathlib import Path

from priors.base import Prior, PriorConfig, PriorOutput
from stages.errors import UserError
from stages.registry import Registry

PRIORS: Registry[Prior] = Registry(
    kind="prior",
    group="vqgen.priors",
    base=Prior,
    builtins={
        "gru": "priors.gru:GRUPrior",
        "pixelcnn": "priors.pixelcnn:PixelCNNPrior",
        "transformer": "priors.transformer:TransformerPrior",
    },
)
register_prior = PRIORS.register


def get_prior_class(name: str) -> type[Prior]:
    return PRIORS.get(name)


def load_prior(path: str | Path, revision: str | None = None) -> Prior:
    """Load any prior from a folder holding config.json + model.safetensors, a published vqgen folder (its
    `prior/`), or a Hub id at `revision`; dispatches on prior_type through the registry."""
    from stages.hub import load_model, model_folder, read_config

    folder = model_folder(path, "prior", revision)
    config = read_config(folder)
    prior_type = config.get("prior_type")
    if not isinstance(prior_type, str) or not prior_type:
        raise UserError(f"{path}: config.json has no 'prior_type'; is this a vqgen prior folder?")
    cls = get_prior_class(prior_type)
    return load_model(cls, folder, "prior", config)  # config.json checked field by field; safetensors only


__all__ = ["PRIORS", "Prior", "PriorConfig", "PriorOutput", "get_prior_class", "load_prior", "register_prior"]
