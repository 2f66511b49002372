"""dfbench: a benchmark and evaluation harness for diffusion features.

The public API::

    from dfbench import ExtractSettings, create_backbone
    backbone = create_backbone("tiny-sd15")
    features = backbone.extract(images, ["up_blocks.1"], ExtractSettings(timestep=261))
"""

from dfbench.errors import DfbenchInputError, UnknownNameError
from dfbench.registry import BACKBONES, PRESETS, TASKS, Registry, create_backbone, get_preset
from dfbench.settings import ExtractSettings

__version__ = "0.1.0"

__all__ = [
    "BACKBONES", "PRESETS", "TASKS", "DfbenchInputError", "ExtractSettings", "Registry",
    "UnknownNameError", "__version__", "create_backbone", "get_preset",
]
