"""Training plugins: the contract (`base.py`) and the built-in plugins.

This package knows no host: it imports torch and its own contract only, raises plain ValueError/OSError, and gets
host services through the `PluginContext` it is handed. The host (`vqgen.stages`) finds plugins by name in
`BUILTIN_PLUGINS` and in the entry-point group `vqgen.plugins`, through which third-party packages add their own:

    [project.entry-points."vqgen.plugins"]
    my_plugin = "my_package.my_plugin:MyPlugin"
"""

from vqgen.plugins.base import PluginContext, PluginLoss, TrainingPlugin

# name -> "module:Class", imported on first use.
BUILTIN_PLUGINS = {
    "gan": "vqgen.plugins.gan:GANPlugin",
    "perceptual": "vqgen.plugins.perceptual:PerceptualPlugin",
}

__all__ = ["BUILTIN_PLUGINS", "PluginContext", "PluginLoss", "TrainingPlugin"]
