"""vqgen: a two-stage generative image pipeline.

Stage one (`vqgen.stages.tokenizer`) turns images into grids of discrete codes; stage two trains a swappable
autoregressive prior (`vqgen.priors`) on those codes; training plugins (`vqgen.plugins`) add losses such as a GAN
discriminator. The commands (`python -m vqgen`, `vqgen`) and the Python API (`vqgen.Pipeline`) sit on top:

    from vqgen import Pipeline
    images = Pipeline.from_pretrained("you/mnist-vqgen").generate(n=8, labels=7, seed=0)
"""

__version__ = "0.2.0"

_API = {  # the Python API, imported on first use so that `import vqgen` stays light (no torch)
    "Pipeline": "vqgen.stages.pipeline",
    "load_tokenizer": "vqgen.stages.artifacts.models",
    "load_prior": "vqgen.stages.artifacts.models",
}
__all__ = [*_API, "__version__"]


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'vqgen' has no attribute {name!r}")
