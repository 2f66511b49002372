"""CleanDIFT's published checkpoints: the full checkpoint's learned timestep (and UNet), and the published NYUv2
depth probe scored without training.

References (CompVis/cleandift @b070976): src/sd_feature_extraction.py 230-326 (StableFeatureAligner: ``self.timestep``
an ``nn.Parameter`` from ``t_init`` 261, learned with ``learn_timestep``), 465-485 (``get_features`` on the clean
latent: the UNet told ``self.timestep``), configs/sd21_feature_extractor.yaml 23 (``learn_timestep: True``),
train.py 95 (``torch.save(model.state_dict())``), notebooks/depth.ipynb cells 1-3 (the full checkpoint loaded into
``model.feature_extractor``, the probe into ``model.conv_depth``, ``model.bfloat16()``, the depth resized to the
image bilinearly), src/depth.py 128-150 (``depth_pred``: 1×1 conv, bins ``linspace(min, max, n, dtype=feat.dtype)``,
ReLU + 0.1, normalised, summed against the bins).
"""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from references import hub_cache_entry
from safetensors.torch import save_file

from dfbench import ExtractSettings, create_backbone
from dfbench.backbones.cleandift import timestep_in_dtype
from dfbench.cli import main
from dfbench.errors import DfbenchInputError
from dfbench.images import load_image
from dfbench.registry import weightless_backbone
from dfbench.tasks.nyuv2.dataset import ground_truth, load_samples
from dfbench.tasks.nyuv2.metrics import depth_metrics
from dfbench.tasks.nyuv2.mini import mini_nyuv2_root


@pytest.fixture(autouse=True)
def home(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DFBENCH_HOME", str(tmp_path_factory.getbasetemp() / "dfbench_home"))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """tiny-sd21 saved as the base model; a CleanDIFT UNet file (seed 1); a full checkpoint in CleanDIFT's key
    names whose fine-tuned UNet is another one (seed 2), learned timestep 259.73, and the other keys it holds
    (the base UNet, an adapter) that dfbench must leave alone."""
    root = tmp_path_factory.mktemp("cleandift")
    create_backbone("tiny-sd21").save_pretrained(root / "base")
    save_file(create_backbone("tiny-sd21", seed=1).unet.state_dict(), str(root / "unet.safetensors"))
    tuned = create_backbone("tiny-sd21", seed=2).unet.state_dict()
    full = {"timestep": torch.tensor(259.73),
            **{f"unet_feature_extractor_cleandift.{key}": value for key, value in tuned.items()},
            **{f"unet_feature_extractor_base.{key}": torch.zeros_like(value) for key, value in tuned.items()},
            "adapters.us6.layers.0.up_proj.weight": torch.ones(4, 4), "time_in_proj.weight": torch.ones(4, 4)}
    save_file(full, str(root / "full.safetensors"))
    save_file({"timestep": torch.tensor(261.0)}, str(root / "timestep-only.safetensors"))
    return root, tuned


def cleandift(root, dtype="float32", **options):
    return create_backbone("cleandift-sd21", weights=str(root / "base"), unet_weights=str(root / "unet.safetensors"),
                           torch_dtype=dtype, options=options or None)


def test_bfloat16_rounds_the_timestep_to_even_steps_above_256():
    """bfloat16 keeps 8 significant bits: in [256, 512) the step is 2. 261 lies halfway between 260 and 262 and
    rounds to the even significand (260 = 256·(1 + 2/128)); 263 likewise to 264 (significand 4, not 3); 259.73 to
    260. float32 keeps them."""
    assert timestep_in_dtype(261, torch.bfloat16) == 260.0
    assert timestep_in_dtype(263, torch.bfloat16) == 264.0
    assert timestep_in_dtype(259.73, torch.bfloat16) == 260.0
    assert timestep_in_dtype(261, torch.float32) == 261.0


def test_full_checkpoint_sets_the_unet_and_the_learned_timestep(checkpoints, photos):
    root, tuned = checkpoints
    clean = cleandift(root, "bfloat16", full=str(root / "full.safetensors"))
    state = clean.unet.state_dict()
    assert all(torch.equal(state[key], value.to(torch.bfloat16)) for key, value in tuned.items())
    assert clean.learned_timestep == pytest.approx(259.73) and clean.told_timestep == 260.0
    assert "told 260 in bfloat16" in clean.describe()
    # a second path to the same features: the same UNet told the integer t = 260 by the plain backbone
    settings = ExtractSettings.from_dict({**clean.default_settings, "resolution": 64, "dtype": "bfloat16"})
    learned = clean.extract(photos[:1], ["up_blocks.1"], settings)["up_blocks.1"]
    plain = cleandift(root, "bfloat16")
    plain.unet.load_state_dict(tuned)
    at_260 = plain.extract(photos[:1], ["up_blocks.1"], ExtractSettings.from_dict(
        {**settings.value_dict(), "timestep": 260}))["up_blocks.1"]
    at_261 = plain.extract(photos[:1], ["up_blocks.1"], settings)["up_blocks.1"]
    assert torch.equal(learned, at_260) and not torch.equal(learned, at_261)
    # the told timestep changes the cache key; a full checkpoint without a UNet keeps the UNet file's weights
    assert clean.weight_fingerprint() != plain.weight_fingerprint()
    only = cleandift(root, full=str(root / "timestep-only.safetensors"))
    assert only.told_timestep == 261.0
    unet_file = create_backbone("tiny-sd21", seed=1).unet.state_dict()
    assert all(torch.equal(only.unet.state_dict()[key], value) for key, value in unet_file.items())


def test_full_checkpoint_identity_without_loading_and_errors(checkpoints, tmp_path):
    root, _ = checkpoints
    full = str(root / "full.safetensors")
    loaded = cleandift(root, full=full)
    meta = weightless_backbone("cleandift-sd21", weights=str(root / "base"),
                               unet_weights=str(root / "unet.safetensors"), options={"full": full})
    assert meta.source == loaded.source and meta.options == loaded.options == {"full": full}
    assert cleandift(root).options == {}                       # a plain CleanDIFT run has no options in its identity
    save_file({"unet_feature_extractor_cleandift.conv_in.weight": torch.ones(1)}, str(tmp_path / "no-t.safetensors"))
    with pytest.raises(DfbenchInputError, match="no 'timestep' tensor"):
        cleandift(root, full=str(tmp_path / "no-t.safetensors"))
    with pytest.raises(DfbenchInputError, match="option full=.*missing.safetensors: no such file"):
        cleandift(root, full=str(tmp_path / "missing.safetensors"))
    with pytest.raises(DfbenchInputError, match="full checkpoint for SD2.1 only"):
        create_backbone("cleandift-sd15", init="random", options={"full": "hub"})


# ------------------------------------------------------------------------------------------ the published probe
def cleandift_depth_pred(features, weight, bias, dtype, min_depth=0.1, max_depth=10.0):
    """CleanDIFT's ``DepthPred.depth_pred`` (src/depth.py 128-150) written out in ``dtype``: a 1×1 convolution,
    ReLU + 0.1, normalised over the bins, summed against ``linspace(min, max, n)`` in the features' dtype."""
    features, weight, bias = features.to(dtype), weight.to(dtype), bias.to(dtype)
    logit = torch.einsum("bchw,kc->bkhw", features, weight[:, :, 0, 0]) + bias[None, :, None, None]
    logit = torch.relu(logit) + 0.1
    logit = logit / logit.sum(dim=1, keepdim=True)
    bins = torch.linspace(min_depth, max_depth, weight.shape[0], dtype=dtype)
    return torch.einsum("ikmn,k->imn", logit, bins).unsqueeze(1)


def depth_run(tmp_path, *options, backbone="tiny-sd21", extra=()):
    results = tmp_path / "results"
    code = main(["run", "--backbone", backbone, "--task", "nyuv2", "--preset", "cleandift-depth", "--resolution", "64",
                 "--data-root", "mini", "--results", str(results), "--no-progress", "--save-predictions",
                 *[part for option in options for part in ("--option", option)], *extra])
    records = sorted((results / "runs").glob("*/record.json"))
    return code, (json.loads(records[-1].read_text()), records[-1].parent) if records else (None, None)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_published_probe_in_cleandift_key_names_scores_untrained(tmp_path, dtype):
    """A probe file keyed as CleanDIFT's (``weight``, ``bias``: loaded with ``model.conv_depth.load_state_dict``)
    is scored as it is: every saved prediction equals CleanDIFT's depth_pred on the features in ``dtype``, resized
    in that dtype; the metrics are those predictions' against the raw ground truth."""
    generator = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(256, 64, 1, 1, generator=generator) * 0.1, torch.randn(256, generator=generator)
    probe_file = tmp_path / "probe.safetensors"
    save_file({"weight": weight, "bias": bias}, str(probe_file))
    code, (record, folder) = depth_run(tmp_path, f"probe={probe_file}", f"probe_dtype={dtype}")
    assert code == 0
    details = record["details"]
    assert details["train_images"] == 0 and details["probe"] == str(probe_file) and details["probe_dtype"] == dtype
    changed = {"probe": str(probe_file), **({"probe_dtype": dtype} if dtype != "bfloat16" else {})}
    assert details["options_changed"] == changed          # bfloat16, CleanDIFT's, is the default
    backbone = create_backbone("tiny-sd21")
    settings = ExtractSettings.from_dict({"resolution": 64, "resize_mode": "squash", "prompt": "A photo of a room",
                                          "latent_mode": "sample", "timestep": 261, "add_noise": False})
    samples = load_samples(mini_nyuv2_root(), "test")
    predictions, truths = [], []
    for sample in samples:
        features = backbone.extract([load_image(sample.image)], ["up_blocks.1"], settings)["up_blocks.1"]
        depth = cleandift_depth_pred(features, weight, bias, getattr(torch, dtype))
        truth = ground_truth(sample)
        expected = F.interpolate(depth, size=truth.shape, mode="bilinear", align_corners=False)[0, 0].float().numpy()
        saved = np.load(folder / "predictions" / f"{sample.stem}.npy")
        np.testing.assert_allclose(saved, expected, rtol=1e-5 if dtype == "float32" else 1e-2, atol=1e-5)
        predictions.append(saved)
        truths.append(truth)
    assert record["metrics"]["rmse"] == pytest.approx(depth_metrics(predictions, truths)["rmse"])


def test_published_probe_from_the_hub_cache_offline(tmp_path):
    """``probe=hub`` reads CompVis/cleandift's file from the Hugging Face cache (offline: a subprocess, as the
    hub library reads its environment once); a whole ``DepthPred`` head's keys (``conv_depth.*``) load too."""
    hub = tmp_path / "hub"
    snapshot = hub_cache_entry(hub, "CompVis/cleandift")
    generator = torch.Generator().manual_seed(1)
    save_file({"conv_depth.weight": torch.randn(256, 64, 1, 1, generator=generator),
               "conv_depth.bias": torch.zeros(256)}, str(snapshot / "cleandift_sd21_depth_probe.safetensors"))
    results = tmp_path / "results"
    env = {**os.environ, "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "dfbench", "run", "--backbone", "tiny-sd21", "--task", "nyuv2",
                           "--preset", "cleandift-depth", "--resolution", "64", "--data-root", "mini", "--results",
                           str(results), "--no-progress", "--option", "probe=hub"], capture_output=True, text=True,
                          env=env)
    assert done.returncode == 0, done.stderr
    (record,) = [json.loads(path.read_text()) for path in (results / "runs").glob("*/record.json")]
    assert record["details"]["probe"] == "CompVis/cleandift/cleandift_sd21_depth_probe.safetensors"
    digest = hashlib.sha256((snapshot / "cleandift_sd21_depth_probe.safetensors").read_bytes()).hexdigest()
    assert record["details"]["probe_sha256"] == digest


def test_published_probe_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    save_file({"conv.weight": torch.ones(256, 64, 1, 1)}, str(bad))
    assert depth_run(tmp_path / "bad", f"probe={bad}")[0] == 2
    assert "do not match CleanDIFT's conv_depth" in capsys.readouterr().err
    wide = tmp_path / "wide.safetensors"
    save_file({"weight": torch.ones(256, 1280, 1, 1), "bias": torch.ones(256)}, str(wide))
    assert depth_run(tmp_path / "wide", f"probe={wide}")[0] == 2
    assert "it takes 1280 channels, the selected features have 64" in capsys.readouterr().err
    assert depth_run(tmp_path / "none", "probe=nothing.safetensors")[0] == 2
    assert "option probe=nothing.safetensors: no such file" in capsys.readouterr().err
