"""Named extraction recipes from the papers: a selection plus settings, each with its source.

A preset fixes *what* to extract; the backbone it was published with is recorded as
``backbone`` (a default — any backbone with the same module names can use the recipe).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dfbench.registry import PRESETS
from dfbench.settings import ExtractSettings


@dataclass(frozen=True)
class Preset:
    """A published activation selection and the settings it was used with."""

    name: str
    selection: tuple[str, ...]
    settings: dict[str, Any] = field(default_factory=dict)
    backbone: str | None = None
    source: str = ""
    description: str = ""
    #: options for the backbone's factory (a fusion's per-source input sizes, weights, PCA; see
    #: :mod:`dfbench.backbones.fusion`); the run's ``backbone_options`` override them key by key
    backbone_options: dict[str, Any] = field(default_factory=dict)

    def extract_settings(self, **overrides: Any) -> ExtractSettings:
        """The preset's settings with ``overrides`` applied on top."""
        return ExtractSettings.from_dict({**self.settings, **overrides})


def _register(preset: Preset) -> None:
    PRESETS.register(preset.name, preset, override=True)


# DIFT: SDFeaturizer4Eval prompts f"a photo of a {cat}" (src/models/dift_sd.py:253); eval_spair.py settings.
DIFT_SETTINGS = {"resolution": 768, "resize_mode": "squash", "timestep": 261, "ensemble_size": 8,
                 "prompt": "a photo of a {category}", "latent_mode": "sample"}
_register(Preset(
    "dift", ("up_blocks.1",), DIFT_SETTINGS, "sd21",
    "Tang et al., NeurIPS 2023 (DIFT), SPair-71k: SD2.1, img_size 768, t=261, up_ft_index=1, ensemble 8",
    "DIFT's SPair recipe: up_blocks.1 of SD2.1 at 768 px, t=261, 8 noise draws averaged",
))
_register(Preset(
    "cleandift-dift", ("up_blocks.1",),
    {**DIFT_SETTINGS, "ensemble_size": 1, "add_noise": False, "latent_mode": "mode",
     "prompt": "A photo of a {category}"}, "cleandift-sd21",
    "Stracke et al., CVPR 2025 (CleanDIFT): their SPair eval (branch geoaware-sc-eval, "
    "model_utils/extractor_sd.py:235) prompts 'A photo of a {category}' and passes t=261 on the clean latent",
    "DIFT's recipe on CleanDIFT SD2.1: one clean (noise-free) pass, t=261, prompt 'A photo of a {category}'",
))

# GDF encodes this one prompt for every correspondence image
# (correspondence/correspondence/aggregation_network.py, line 28).
GDF_PROMPT = ("a highly realistic photo that may contain an aeroplane, a bicycle, a bird, a boat, a bottle, a bus, "
              "a car, a cat, a chair, a cow, a dog, a horse, a motorbike, a person, a plant within a pot, a sheep, "
              "a train, or a tv monitor.")
# GDF configs ask for t=50 (correspondence/correspondence/config_sd15.json); feature/diffusion_feature.py
# lines 290-295 turn it into scheduler.set_timesteps(1000) + img2img get_timesteps(1000, 50/1000) and run
# the UNet at timesteps[0]: SD1.5's PNDMScheduler (steps_offset=1, skip_prk_steps) lists 1000, 999, 999,
# 998, …, so index 950 is t=51; SDXL's EulerDiscreteScheduler ("leading", steps_offset=1) gives t=50. GDF loads
# SD2.1-base with an EulerDiscreteScheduler built from its PNDM config (feature/components/models.py 30-42), which has
# no timestep_spacing, so Euler's default "linspace" lists 999, 998, …, 0 and index 950 is t=49; Euler's add_noise
# x₀ + σ·ε followed by scale_model_input's 1/√(σ² + 1) is DDPM's √ᾱ·x₀ + √(1 − ᾱ)·ε at that t.
GDF_TIMESTEPS = {"sd15": 51, "sdxl": 50, "sd21-base": 49}
def gdf_source(prompt_file: str) -> str:
    """Where a GDF preset's values come from (``prompt_file``: the file and line of its prompt)."""
    return ("Meng et al., NeurIPS 2024 (Darkbblue/generic-diffusion-feature): prompt from " + prompt_file
            + "; posterior sample from the img2img pipeline's prepare_latents (feature/diffusion_feature.py:373, "
            "sample_mode='sample'); t from the configs' t=50 through set_timesteps(1000) + get_timesteps "
            "(feature/diffusion_feature.py:290-295): SD1.5 PNDM → 51, SDXL Euler → 50, SD2.1-base Euler → 49; GDF "
            "runs float16 "
            "(use --dtype float16 on a GPU to match)")


GDF_PRESETS = {
    "gdf-ours-sd15": ("sd15", 512, (
        "up-level1-repeat1-vit-block0-cross-q", "up-level1-repeat2-res-out",
        "up-level2-repeat1-vit-block0-cross-q", "up-level3-repeat0-vit-block0-self-k")),
    "gdf-legacy-sd15": ("sd15", 512, (
        "up-level0-upsampler-out", "up-level1-upsampler-out", "up-level2-upsampler-out",
        "up-level3-repeat2-vit-out")),
    "gdf-ours-sdxl": ("sdxl", 1024, (
        "up-level0-repeat0-vit-block7-out", "up-level0-repeat0-vit-block5-out",
        "up-level1-repeat0-vit-block0-cross-q", "up-level1-repeat0-vit-block0-out")),
    "gdf-legacy-sdxl": ("sdxl", 1024, (
        "up-level0-upsampler-out", "up-level1-upsampler-out", "up-level2-repeat2-res-out")),
}
# SD2.1-base (GDF's version '2-1') has SD1.5's UNet layout; GDF publishes no selection of its own for it, so its
# presets take SD1.5's Ours and Legacy selections, at GDF's timestep for its scheduler
GDF_PRESETS["gdf-ours-sd21"] = ("sd21-base", 512, GDF_PRESETS["gdf-ours-sd15"][2])
GDF_PRESETS["gdf-legacy-sd21"] = ("sd21-base", 512, GDF_PRESETS["gdf-legacy-sd15"][2])
for _name, (_backbone, _resolution, _selection) in GDF_PRESETS.items():
    _kind = "selected activations (Ours)" if "ours" in _name else "legacy block-output selection"
    _timestep = GDF_TIMESTEPS[_backbone]
    _register(Preset(
        _name, _selection,
        {"resolution": _resolution, "timestep": _timestep, "prompt": GDF_PROMPT, "latent_mode": "sample"},
        _backbone, gdf_source("correspondence/correspondence/aggregation_network.py:28"),
        f"Meng et al. {_kind} on {_backbone}, {_resolution} px, t={_timestep} (GDF's t=50 through its scheduler), "
        "GDF's fixed 18-class prompt, one posterior sample + one noise",
    ))

# GDF's segmentation configs use the same four selections per model (segmentation/configs/{ade,city}_
# {sd15,sdxl,legacy_sd15,legacy_sdxl}.py, `layer=`, lines 50-51) with one prompt per dataset.
GDF_SEGMENTATION_PROMPTS = {
    # segmentation/configs/ade_sd15.py line 65
    "ade20k": "a highly realistic photo of the real world. It can be an indoor scene, or an outdoor scene, or a "
              "photo of nature. high quality.",
    # segmentation/configs/city_sd15.py line 64
    "cityscapes": "An urban street scene with multiple lanes, various buildings, traffic lights, cars in the lanes, "
                  "and pedestrians, highly realistic.",
}
GDF_SEGMENTATION_PROMPT_FILES = {"ade20k": "segmentation/configs/ade_sd15.py:65",
                                 "cityscapes": "segmentation/configs/city_sd15.py:64"}
for _name, (_backbone, _resolution, _selection) in GDF_PRESETS.items():
    for _dataset, _prompt in GDF_SEGMENTATION_PROMPTS.items():
        _timestep = GDF_TIMESTEPS[_backbone]
        _register(Preset(
            f"{_name}-{_dataset}", _selection,
            {"resolution": _resolution, "timestep": _timestep, "prompt": _prompt, "latent_mode": "sample"},
            _backbone, gdf_source(GDF_SEGMENTATION_PROMPT_FILES[_dataset]),
            f"{_name} for {_dataset}: GDF's {_dataset} prompt, {_resolution} px crops, t={_timestep}",
        ))

# GDF's label-scarce runs (scarce_segmentation/README.md): prompt "a photo of a horse", SD1.5 at 512 and
# SDXL at 1024 (--img_size), t=50 through the same scheduler rule, the same four selections.
GDF_HORSE_PROMPT = "a photo of a horse"
for _name, (_backbone, _resolution, _selection) in GDF_PRESETS.items():
    _timestep = GDF_TIMESTEPS[_backbone]
    _register(Preset(
        f"{_name}-horse21", _selection,
        {"resolution": _resolution, "timestep": _timestep, "prompt": GDF_HORSE_PROMPT, "latent_mode": "sample"},
        _backbone, gdf_source("scarce_segmentation/README.md (\"The prompt used is `a photo of a horse`\")"),
        f"{_name} for horse21: prompt 'a photo of a horse', {_resolution} px, t={_timestep}",
    ))

# Meng et al.'s best rows, "Ours-XL-t": three models amalgamated (GDF's multi-config AggregationNetwork for SPair,
# correspondence/correspondence/aggregation_network.py; one extract_feature.py run per model for Horse-21): SDXL with
# feature/configs/config_xl_practical.json (3,840 channels) at 1024 px, SD1.5 with config_15_amalgamation.json
# (2,880 channels) plus the up_cross attention aggregate (154) at 512 px, and Playground v2 with
# config_pg_amalgamation.json (1,280) at 1024 px: 8,154 channels. Each model runs GDF's t=50 through its own
# scheduler: SDXL 50, SD1.5 51, Playground v2 50 (its EulerAncestralDiscreteScheduler, "leading", steps_offset 1:
# index 950 of set_timesteps(1000) is 50).
GDF_TIMESTEPS["pgv2"] = 50
XL_T_BACKBONE = "sdxl+sd15+pgv2"
XL_T_SELECTION = (
    *(f"1:{name}" for name in GDF_PRESETS["gdf-ours-sdxl"][2]),
    "2:up-level1-repeat1-vit-block0-cross-q", "2:up-level2-repeat1-vit-block0-cross-q", "2:up-level2-upsampler-out",
    "2:up-level3-repeat0-vit-block0-self-k", "2:up_cross",
    "3:up-level0-repeat0-vit-block3-out",
)
XL_T_OPTIONS = {"resolution.1": 1024, "resolution.2": 512, "resolution.3": 1024, "timestep.2": GDF_TIMESTEPS["sd15"]}
XL_T_SOURCE = ("Meng et al., NeurIPS 2024 (Darkbblue/generic-diffusion-feature): "
               "feature/configs/config_xl_practical.json, "
               "config_15_amalgamation.json + --attention up_cross, config_pg_amalgamation.json; ")
for _name, _prompt, _prompt_file in (
        ("gdf-ours-xl-t", GDF_PROMPT, "correspondence/correspondence/aggregation_network.py:28"),
        ("gdf-ours-xl-t-horse21", GDF_HORSE_PROMPT, "scarce_segmentation/README.md")):
    _register(Preset(
        _name, XL_T_SELECTION,
        {"timestep": GDF_TIMESTEPS["sdxl"], "prompt": _prompt, "latent_mode": "sample"},
        XL_T_BACKBONE, XL_T_SOURCE + gdf_source(_prompt_file),
        "Meng et al.'s Ours-XL-t: SDXL (1024 px, t=50) + SD1.5 with up_cross (512 px, t=51) + Playground v2 "
        "(1024 px, t=50), 8,154 channels",
        backbone_options=dict(XL_T_OPTIONS),
    ))

# Its segmentation rows amalgamate SDXL and Playground v2 (segmentation/configs/ade_full.py and city_full.py, lines
# 51-82: both at 1024 px and t=50, GDF's multi-model segmentor): levels of 3,840, 1,920 and 1,280 channels.
XL_T_SEGMENTATION = (
    *(f"1:{name}" for name in (*GDF_PRESETS["gdf-ours-sdxl"][2], "up-level1-upsampler-out")),
    "2:up-level0-repeat0-vit-block5-out", "2:up-level1-repeat0-vit-block0-cross-q", "2:up-level1-upsampler-out",
)
for _dataset, _prompt in GDF_SEGMENTATION_PROMPTS.items():
    _config = "ade_full.py" if _dataset == "ade20k" else "city_full.py"
    _register(Preset(
        f"gdf-ours-xl-t-{_dataset}", XL_T_SEGMENTATION,
        {"timestep": GDF_TIMESTEPS["sdxl"], "prompt": _prompt, "latent_mode": "sample"},
        "sdxl+pgv2", f"Meng et al., NeurIPS 2024: segmentation/configs/{_config} (diffusion_feature, feature_layers); "
        + gdf_source(GDF_SEGMENTATION_PROMPT_FILES[_dataset]),
        f"Meng et al.'s Ours-XL-t for {_dataset}: SDXL + Playground v2 at 1024 px, t=50, GDF's multi-model adapter",
        backbone_options={"resolution.1": 1024, "resolution.2": 1024},
    ))

# CleanDIFT's SPair evaluation (branch geoaware-sc-eval, model_utils/extractor_sd.py, line 235) prompts
# "A photo of a {category}" (capital A) and passes t=261 with the clean latent.
CLEANDIFT_PROMPT = "A photo of a {category}"
CLEANDIFT_FEATURES = ("mid", *(f"us{index}" for index in range(1, 11)))
for _feature in CLEANDIFT_FEATURES:
    _register(Preset(
        f"cleandift-{_feature}", (_feature,), {"timestep": 261, "add_noise": False, "prompt": CLEANDIFT_PROMPT},
        "cleandift-sd21",
        "CleanDIFT min_sd15.py / min_sd21.py feature names; prompt from geoaware-sc-eval "
        "model_utils/extractor_sd.py:235",
        f"CleanDIFT feature {_feature!r}: one clean pass at t=261, prompt 'A photo of a {{category}}'",
    ))

# CleanDIFT's depth probe (configs/sd21_depth_prober.yaml, src/depth.py: DepthPred.predict): SD2.1 at 768² (a
# bilinear squash), extraction_layer "us6" (= up_blocks.1), prompt "A photo of a room", the latent a posterior
# sample (src/ae.py:20, .sample()). The CleanDIFT model: one clean pass at its timestep (t_init 261,
# src/sd_feature_extraction.py:324); the base-model row: base_model_timestep 199 with noise (get_features,
# use_base_model=True: scheduler.add_noise(x_0, eps, t)).
CLEANDIFT_DEPTH_SOURCE = ("Stracke et al., CVPR 2025 (CleanDIFT), NYUv2 depth probe: configs/sd21_depth_prober.yaml, "
                          "src/depth.py (prompt 'A photo of a room', line 187), src/sd_feature_extraction.py:442-485")
CLEANDIFT_DEPTH_SETTINGS = {"resolution": 768, "resize_mode": "squash", "prompt": "A photo of a room",
                            "latent_mode": "sample"}
_register(Preset(
    "cleandift-depth", ("up_blocks.1",), {**CLEANDIFT_DEPTH_SETTINGS, "timestep": 261, "add_noise": False},
    "cleandift-sd21", CLEANDIFT_DEPTH_SOURCE,
    "CleanDIFT's depth features: up_blocks.1 (us6) of CleanDIFT SD2.1 at 768 px, one clean pass, 'A photo of a room'",
))
_register(Preset(
    "cleandift-depth-sd21", ("up_blocks.1",), {**CLEANDIFT_DEPTH_SETTINGS, "timestep": 199, "add_noise": True},
    "sd21", CLEANDIFT_DEPTH_SOURCE,
    "CleanDIFT's base-model depth row: up_blocks.1 of SD2.1 at 768 px, noised to t=199, 'A photo of a room'",
))
# probe3d's DIFT backbone (configs/backbone/dift.yaml: SD2.1, time_step 1; train_depth.py with
# +backbone.return_multilayer=True: up_ft_index [0, 1, 2, 3]); evals/models/dift_sd.py: posterior mode,
# one noise, empty prompt; 480² centre crops go in at their own size.
_register(Preset(
    "probe3d-dift", ("up_blocks.0", "up_blocks.1", "up_blocks.2", "up_blocks.3"),
    {"resolution": 480, "resize_mode": "squash", "timestep": 1, "add_noise": True, "latent_mode": "mode",
     "prompt": ""},
    "sd21", "El Banani et al., CVPR 2024 (probe3d): configs/backbone/dift.yaml, evals/models/stablediffusion.py, "
    "evals/models/dift_sd.py:186-215, README ('+backbone.return_multilayer=True')",
    "probe3d's DIFT features for its DPT depth probe: the four up_blocks of SD2.1, t=1, 480 px crops, no prompt",
))

# Fusions of Stable Diffusion and DINOv2 (dfbench.backbones.fusion). Activations and options name sources by
# position (1: the diffusion model, 2: DINOv2), so a recipe serves any fusion of that shape (sd21+dinov2-base,
# tiny models …).
# Tale of Two Features (Junyi42/sd-dino, pck_spair_pascal.py defaults: --TIMESTEP 100, --SIZE 960, --PCA_DIMS
# 256 256 256, --WEIGHT 1 1 1 1 1, no --TEXT_INPUT; DINOv2-base 'token' facet of layer 11 at 840 px; images
# letterboxed on black with LANCZOS, utils/utils_correspondence.py:13): the three SD layers s5, s4, s3 of ODISE's
# extractor, each reduced by a PCA fitted on the pair (co_pca, line 358), s5 brought to s4's grid and both to
# s3's (lines 419-436), [s3, s4, s5]; SD and DINO L2-normalised apart and concatenated (DIST l2 over unit parts:
# the nearest neighbour of the cosine). SD runs through ODISE's sliding window: 512-px squares of the 960 input
# (third_party/ODISE/odise/modeling/backbone/feature_extractor.py 189-259, slide_training), settings tile 512.
TALE_SELECTION = ("up_blocks.2.attentions.1", "up_blocks.1.attentions.1", "up_blocks.0.resnets.1")
LETTERBOX = {"resize_mode": "pad", "pad_color": "black", "resample": "lanczos"}
_register(Preset(
    "tale-of-two", (*(f"1:{name}" for name in TALE_SELECTION), "2:blocks.11"),
    {**LETTERBOX, "timestep": 100, "add_noise": True, "latent_mode": "mode", "prompt": "", "tile": 512},
    "sd15+dinov2-base",
    "Zhang et al., NeurIPS 2023 (A Tale of Two Features), Junyi42/sd-dino pck_spair_pascal.py: SD1.5 at 960 px, "
    "t=100, ODISE's 512-px sliding window, s5/s4/s3 with a pair-fitted PCA to 256 each (utils/utils_correspondence.py"
    ":358 co_pca), DINOv2-base layer-11 tokens at 840 px, each L2-normalised, weights 1:1; Tale's matching is "
    "spair/patch-nn. Deviations: no ODISE implicit captioner (empty prompt), per-image seeded noise, an exact PCA "
    "(Tale: torch.pca_lowrank); under spair/dift-nn also the PCA on the content's tokens only and bilinear matching",
    "Tale of Two Features: SD1.5 s3/s4/s5 (pair PCA 256 each) ⊕ DINOv2-base blocks.11, each L2-normalised",
    backbone_options={"resolution.1": 960, "resolution.2": 840, "pca.1": 256, "weight.1": 1.0, "weight.2": 1.0,
                      "upsample": "progressive"},
))
# CleanDIFT in the fusion (CompVis/cleandift branch geoaware-sc-eval): preprocess_map.py extracts s3, s4, s5 at
# 960 px (clean features) and DINOv2-base tokens at 840; pck_train.py:45-52 concatenates [s3, up(s4), up(s5)] at
# 60x60 with DINO, and normalize_feats (lines 25-37, DUMMY_NET) L2-normalises SD and DINO apart, then the whole.
_register(Preset(
    "cleandift-fusion", (*(f"1:{name}" for name in TALE_SELECTION), "2:blocks.11"),
    {**LETTERBOX, "timestep": 261, "add_noise": False, "latent_mode": "mode", "prompt": CLEANDIFT_PROMPT,
     "tile": 512},
    "cleandift-sd15+dinov2-base",
    "Stracke et al., CVPR 2025 (CleanDIFT), branch geoaware-sc-eval: preprocess_map.py (960 / 840 px), "
    "pck_train.py:25-52 (normalize_feats, [s3, up(s4), up(s5)] + DINO), model_utils/extractor_sd.py:235 (prompt), "
    "ODISE's 512-px sliding window. Telling Left from Right's adaptive flip and soft-argmax are spair/geoaware's",
    "CleanDIFT SD1.5 s3/s4/s5 ⊕ DINOv2-base blocks.11, one clean pass at t=261, each L2-normalised, renormalised",
    backbone_options={"resolution.1": 960, "resolution.2": 840, "renormalize": True},
))
# GeoAware-SC's own features for its zero-shot rows (branch geoaware-sc-eval, preprocess_map.py:66: the base SD1.5
# at num_timesteps=50 with the caption "A photo of a {category}", 960 / 840 px, ODISE's sliding window), the same
# DUMMY_NET normalisation as cleandift-fusion; matched by spair/geoaware.
_register(Preset(
    "geoaware-fusion", (*(f"1:{name}" for name in TALE_SELECTION), "2:blocks.11"),
    {**LETTERBOX, "timestep": 50, "add_noise": True, "latent_mode": "mode", "prompt": CLEANDIFT_PROMPT, "tile": 512},
    "sd15+dinov2-base",
    "Zhang et al., CVPR 2024 (Telling Left from Right, GeoAware-SC) as CleanDIFT's branch geoaware-sc-eval runs it: "
    "preprocess_map.py:56-84 (960 / 840 px, t=50, flipped images too), model_utils/extractor_sd.py:235 (prompt), "
    "pck_train.py:25-52 (normalize_feats). Deviations: per-image seeded noise",
    "GeoAware-SC zero-shot: SD1.5 s3/s4/s5 at t=50 ⊕ DINOv2-base blocks.11, each L2-normalised, renormalised",
    backbone_options={"resolution.1": 960, "resolution.2": 840, "renormalize": True},
))

# DiTF (Gan et al., NeurIPS 2025; ganchaofan0000/DiTF): eval_spair.sh runs --img_size 640 640 --t 260 --k 28
# --ensemble_size 8 --cd. Its k=28 counts the 19 double blocks first, and src/flux/modules/layers.py:291-312
# (SingleStreamBlock.forward_feat) returns the block's *input* (x_feat = x.clone(), line 294) with the block's own
# modulation: the map is single block 9's input = single_transformer_blocks.8's output, the AdaLN is block 9's.
# src/flux/feat_flux.py:113-171: t/1000 unshifted as σ, a posterior sample (the flux AE's encode), guidance 3.5,
# bfloat16, modulation and features averaged over the ensemble; eval_spair.py:113-160 builds the descriptor.
DITF_SETTINGS = {"resolution": 640, "timestep": 260, "ensemble_size": 8, "latent_mode": "sample",
                 "prompt": "a photo of a {category}", "dtype": "bfloat16"}
_register(Preset(
    "ditf-flux",
    ("single_transformer_blocks.8", "single_transformer_blocks.9.mod.shift", "single_transformer_blocks.9.mod.scale"),
    DITF_SETTINGS, "flux-dev",
    "Gan et al., NeurIPS 2025 (DiTF), ganchaofan0000/DiTF eval_spair.sh (t=260, k=28, ensemble 8, --cd) and "
    "eval_spair.py:113-160 (channels 154 and 1446 zeroed, LayerNorm without affine, (1+scale)·x+shift with the "
    "block's AdaLN). Deviations: a square 640² input (DiTF keeps the aspect, each side rounded to 16 px), the "
    "prompt 'a photo of a {category}' (DiTF: per-image MLLM captions, about +0.3 points), per-image seeded noise",
    "DiTF on FLUX.1-dev: single block 9's input, massive-activation channels discarded, LayerNorm, its AdaLN",
    backbone_options={"sigma": "linear", "guidance": 3.5, "descriptor": "ditf", "discard": "154,1446",
                      "norm": True, "modulate": True},
))
