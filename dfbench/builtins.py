"""The built-in registry entries. Adding a backbone or a task is one new file plus one line here.

Entries are lazy ``"module:attribute"`` strings: nothing is imported until a name is first used.
"""

from dfbench.registry import BACKBONES, TASKS

BACKBONES.register("sd15", "dfbench.backbones.stable_diffusion:sd15")
BACKBONES.register("sd21", "dfbench.backbones.stable_diffusion:sd21")
BACKBONES.register("sd21-base", "dfbench.backbones.stable_diffusion:sd21_base")
BACKBONES.register("sdxl", "dfbench.backbones.sdxl:sdxl")
BACKBONES.register("pgv2", "dfbench.backbones.sdxl:pgv2")
BACKBONES.register("cleandift-sd15", "dfbench.backbones.cleandift:cleandift_sd15")
BACKBONES.register("cleandift-sd21", "dfbench.backbones.cleandift:cleandift_sd21")
BACKBONES.register("tiny-sd15", "dfbench.backbones.tiny:tiny_sd15")
BACKBONES.register("tiny-sd21", "dfbench.backbones.tiny:tiny_sd21")
BACKBONES.register("tiny-sdxl", "dfbench.backbones.tiny:tiny_sdxl")
BACKBONES.register("pixart-alpha", "dfbench.backbones.pixart:pixart_alpha")
BACKBONES.register("pixart-sigma", "dfbench.backbones.pixart:pixart_sigma")
BACKBONES.register("pixart-sigma-512", "dfbench.backbones.pixart:pixart_sigma_512")
BACKBONES.register("tiny-pixart", "dfbench.backbones.tiny:tiny_pixart")
BACKBONES.register("sd3-medium", "dfbench.backbones.sd3:sd3_medium")
BACKBONES.register("sd35-medium", "dfbench.backbones.sd3:sd35_medium")
BACKBONES.register("sd35-large", "dfbench.backbones.sd3:sd35_large")
BACKBONES.register("tiny-sd3", "dfbench.backbones.tiny:tiny_sd3")
BACKBONES.register("flux-dev", "dfbench.backbones.flux:flux_dev")
BACKBONES.register("flux-schnell", "dfbench.backbones.flux:flux_schnell")
BACKBONES.register("tiny-flux", "dfbench.backbones.tiny:tiny_flux")
TASKS.register("spair", "dfbench.tasks.spair.task:SpairTask")
TASKS.register("ade20k", "dfbench.tasks.segmentation.task:Ade20kTask")
TASKS.register("cityscapes", "dfbench.tasks.segmentation.task:CityscapesTask")
TASKS.register("horse21", "dfbench.tasks.horse21.task:Horse21Task")
TASKS.register("nyuv2", "dfbench.tasks.nyuv2.task:NyuV2Task")
BACKBONES.register("dinov2-small", "dfbench.backbones.dinov2:dinov2_small")
BACKBONES.register("dinov2-base", "dfbench.backbones.dinov2:dinov2_base")
BACKBONES.register("dinov2-large", "dfbench.backbones.dinov2:dinov2_large")
BACKBONES.register("dinov2-giant", "dfbench.backbones.dinov2:dinov2_giant")
BACKBONES.register("dinov2-reg-small", "dfbench.backbones.dinov2:dinov2_reg_small")
BACKBONES.register("dinov2-reg-base", "dfbench.backbones.dinov2:dinov2_reg_base")
BACKBONES.register("dinov2-reg-large", "dfbench.backbones.dinov2:dinov2_reg_large")
BACKBONES.register("dinov2-reg-giant", "dfbench.backbones.dinov2:dinov2_reg_giant")
BACKBONES.register("tiny-dinov2", "dfbench.backbones.dinov2:tiny_dinov2")
# a fusion of registered backbones, named by its sources: sd15+dinov2-base, cleandift-sd15+dinov2-base, …
BACKBONES.register_pattern("*+*", "dfbench.backbones.fusion:fusion_factory")
