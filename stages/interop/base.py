"""The import-format contract and its registry: how `vqgen import FORMAT SOURCE --run RUN` turns a model released
by another project into an ordinary vqgen folder (config.json + model.safetensors + README.md).

A format is a class registered under its name (`IMPORT_FORMATS`, extended by third-party packages through the
entry-point group `vqgen.import_formats`):

    class MyFormat(ImportFormat):
        options = {"model"}                      # the `vqgen import` options it takes (see ImportRequest.options)

        def folder(self, request) -> str:        # where in RUN it writes ("tokenizer", "prior-NAME"), decided
            return "tokenizer"                   # before anything is read, so an existing folder is refused first

        def convert(self, request) -> Imported:  # read SOURCE (sources.py: checkpoints, Hub files) and build
            ...                                  # the vqgen model with the weights in it

The host (vqgen.stages.commands.interop) checks the options and the target folder, calls `convert`, and writes the
model with its provenance into RUN/<folder> in one step. `convert` raises UserError (one line) for a source that is
not what the format expects: an unknown preset, a tensor whose shape does not fit (naming the key and the shapes),
a pickle that needs code to load, an architecture vqgen cannot express.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch.nn as nn
from vqgen.stages.core.registry import Registry

# name -> "module:Class", imported on first use.
BUILTIN_IMPORT_FORMATS = {
    "llamagen-vq": "vqgen.stages.interop.llamagen_vq:LlamaGenVQ",
    "llamagen-gpt": "vqgen.stages.interop.llamagen_gpt:LlamaGenGPT",
    "taming": "vqgen.stages.interop.taming:TamingVQGAN",
    "diffusers": "vqgen.stages.interop.diffusers_vq:DiffusersVQ",
}


@dataclass
class ImportRequest:
    fmt: str  # the format's name
    source: str  # a local file or folder, or a Hub id (user/name)
    run: Path  # the run folder to write into
    device: str = "cpu"  # where to run the imported model's check (the weights are written from the CPU)
    # the format-specific options given on the command line (only those not None): model, codebook_size,
    # codebook_embed_dim, image_size, model_config, subfolder, filename, revision, and any a plugin format adds
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Imported:
    model: nn.Module  # a vqgen tokenizer or prior, weights loaded, in eval mode, on the CPU
    provenance: dict  # format, source, file, sha256, licence (None when unknown), notes
    summary: str = ""  # one line for the user: what was imported


class ImportFormat:
    """Base class of every import format; see the module docstring for the contract."""

    options: ClassVar[set[str]] = set()  # the request options this format reads
    licence: ClassVar[str | None] = None  # the licence of the released weights, when the project states one

    def folder(self, request: ImportRequest) -> str:
        raise NotImplementedError

    def convert(self, request: ImportRequest) -> Imported:
        raise NotImplementedError


class ExportFormat:
    """Base class of every export format: `export(model, out)` writes a vqgen model into the folder `out` (created,
    empty) in another project's layout and returns the file names; what that layout cannot express is a UserError
    naming the option."""

    def export(self, model: nn.Module, out: Path) -> list[str]:
        raise NotImplementedError


BUILTIN_EXPORT_FORMATS = {"diffusers": "vqgen.stages.interop.diffusers_vq:DiffusersExport"}

IMPORT_FORMATS: Registry = Registry(
    kind="import format", group="vqgen.import_formats", base=ImportFormat, builtins=BUILTIN_IMPORT_FORMATS
)
register_import_format = IMPORT_FORMATS.register  # `@register_import_format("mine")` in-process
EXPORT_FORMATS: Registry = Registry(
    kind="export format", group="vqgen.export_formats", base=ExportFormat, builtins=BUILTIN_EXPORT_FORMATS
)
