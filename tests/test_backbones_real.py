"""Real backbones: published architecture sizes, the hub loading path offline, CleanDIFT weights."""

import os
import subprocess
import sys

import pytest
import torch
from references import hub_cache_entry, per_image_generator
from safetensors.torch import save_file

from dfbench import ExtractSettings, create_backbone, get_preset
from dfbench.backbones.cleandift import load_unet_weights
from dfbench.errors import DfbenchInputError


def _count(module):
    return sum(parameter.numel() for parameter in module.parameters())


@pytest.mark.parametrize("name,unet,text", [
    ("sd15", 860e6, [123e6]),            # SD1.5 UNet 860 M; CLIP ViT-L/14 text tower 123 M
    ("sd21", 866e6, [340e6]),            # SD2.x UNet 865 M; OpenCLIP ViT-H/14 text tower (23 layers) 340 M
    ("sdxl", 2.567e9, [123e6, 695e6]),   # SDXL UNet 2.6 B; + OpenCLIP ViT-bigG/14 text tower 695 M
])
def test_real_configs_have_published_sizes(name, unet, text):
    backbone = create_backbone(name, init="meta")  # the real architecture, no weights
    assert _count(backbone.unet) == pytest.approx(unet, rel=0.005)
    assert _count(backbone.vae) == pytest.approx(83.65e6, rel=0.005)  # the SD VAE: 83.7 M
    assert [_count(encoder) for encoder in backbone.text_encoders] == pytest.approx(text, rel=0.005)
    assert backbone.unet.device.type == "meta"


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory, tiny_sd15):
    """tiny-sd15 stored under SD1.5's real hub id, and a CleanDIFT UNet file under CompVis/cleandift."""
    root = tmp_path_factory.mktemp("hf_cache")
    tiny_sd15.save_pretrained(hub_cache_entry(root, "stable-diffusion-v1-5/stable-diffusion-v1-5"))
    other = create_backbone("tiny-sd15", seed=1)
    cleandift = hub_cache_entry(root, "CompVis/cleandift")
    save_file(other.unet.state_dict(), str(cleandift / "cleandift_sd15_unet.safetensors"))
    return root, other


@pytest.mark.slow
def test_production_ids_load_offline_from_the_cache(hub_cache, tmp_path, photos):
    """`dfbench extract sd15` / `cleandift-sd15` resolve their real hub ids in an offline cache."""
    root, _ = hub_cache
    image = tmp_path / "cat.png"
    photos[0].save(image)
    env = {**os.environ, "HF_HUB_CACHE": str(root), "HF_HUB_OFFLINE": "1"}
    for backbone in ("sd15", "cleandift-sd15"):
        out = tmp_path / f"{backbone}.safetensors"
        done = subprocess.run(
            [sys.executable, "-m", "dfbench", "extract", backbone, "--images", str(image), "--select", "us6",
             "--resolution", "64", "--out", str(out), "--no-progress"],
            capture_output=True, text=True, env=env,
        )
        assert done.returncode == 0, done.stderr
        assert out.is_file()
    from safetensors import safe_open

    with safe_open(str(tmp_path / "cleandift-sd15.safetensors"), "pt") as handle:
        meta = handle.metadata()
    assert "cleandift_sd15_unet.safetensors" in meta["weights"]
    assert '"add_noise": false' in meta["settings"] and '"timestep": 261' in meta["settings"]


def test_cleandift_loads_unet_strictly_and_extracts_clean(tmp_path, hub_cache, tiny_sd15, photos):
    _, other = hub_cache
    weights_dir = tmp_path / "base"
    tiny_sd15.save_pretrained(weights_dir)
    unet_file = tmp_path / "unet.safetensors"
    save_file(other.unet.state_dict(), str(unet_file))
    clean = create_backbone("cleandift-sd15", weights=str(weights_dir), unet_weights=str(unet_file))
    state = clean.unet.state_dict()
    assert all(torch.equal(state[key], value) for key, value in other.unet.state_dict().items())
    assert clean.name == "cleandift-sd15" and clean.default_settings == {"timestep": 261, "add_noise": False}
    assert clean.default_resolution == 512  # sd15's, whatever the weights
    settings = ExtractSettings.from_dict({**clean.default_settings, "resolution": 64})
    assert settings.add_noise is False
    features = clean.extract(photos[:1], ["up_blocks.1"], settings)["up_blocks.1"]
    with torch.no_grad():
        latents = clean.vae.encode(clean_input(photos[:1])).latent_dist.mean * clean.vae.config.scaling_factor
        captured = []
        hook = clean.unet.up_blocks[1].register_forward_hook(lambda m, a, out: captured.append(out))
        clean.unet(latents, 261, clean.prompt_embedding("").hidden_states)
        hook.remove()
    torch.testing.assert_close(features, captured[0], rtol=1e-5, atol=1e-6)


def clean_input(images):
    from dfbench.images import to_model_input

    return to_model_input(images, 64, "squash")


def test_cleandift_weight_errors(tmp_path, tiny_sd15):
    unet = create_backbone("tiny-sd15").unet
    state = dict(tiny_sd15.unet.state_dict())
    cases = {}
    partial = dict(state)
    partial.pop("conv_out.bias")
    cases["missing"] = (partial, r"1 missing \(e\.g\. conv_out\.bias\)")
    extra = {**state, "adapter.weight": torch.zeros(2)}
    cases["extra"] = (extra, r"1 unexpected \(e\.g\. adapter\.weight\)")
    wrong = {**state, "conv_out.bias": torch.zeros(5)}
    cases["shape"] = (wrong, r"wrong shape \(e\.g\. conv_out\.bias: \(5,\) vs \(4,\)\)")
    for label, (tensors, pattern) in cases.items():
        path = tmp_path / f"{label}.safetensors"
        save_file({key: value.contiguous() for key, value in tensors.items()}, str(path))
        with pytest.raises(DfbenchInputError, match=pattern):
            load_unet_weights(unet, path)
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(DfbenchInputError, match="not a readable safetensors file"):
        load_unet_weights(unet, tmp_path / "junk.safetensors")
    with pytest.raises(DfbenchInputError, match="no such file"):
        load_unet_weights(unet, tmp_path / "absent.safetensors")


@pytest.mark.slow
def test_an_unreachable_hub_costs_one_line_not_thirty_seconds_of_retries(hub_cache, tmp_path, photos):
    """Without HF_HUB_OFFLINE and with the hub unreachable (HF_ENDPOINT on a closed local port: refused at
    once, on any machine): ids in the cache load from it, an id that is not there and a local path that does
    not exist are one line each, and nothing is retried (diffusers alone retries for about 30 s)."""
    root, _ = hub_cache
    image = tmp_path / "cat.png"
    photos[0].save(image)
    env = {key: value for key, value in os.environ.items() if key != "HF_HUB_OFFLINE"}
    env.update({"HF_HUB_CACHE": str(root), "HF_ENDPOINT": "http://127.0.0.1:9"})

    def extract(backbone, *extra):
        return subprocess.run([sys.executable, "-m", "dfbench", "extract", backbone, "--images", str(image),
                               "--select", "us6", "--resolution", "64", "--out", str(tmp_path / "f.safetensors"),
                               "--no-progress", *extra], capture_output=True, text=True, env=env)

    for backbone in ("sd15", "cleandift-sd15"):         # in the cache: loaded from it
        done = extract(backbone)
        assert done.returncode == 0 and "Retry" not in done.stderr, done.stderr
    done = extract("sdxl", "--resolution", "64")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert ("cannot load backbone sdxl: stabilityai/stable-diffusion-xl-base-1.0 is not in the Hugging Face cache "
            "and the hub cannot be reached (127.0.0.1:9: Connection refused); get it with `hf download "
            "stabilityai/stable-diffusion-xl-base-1.0`") in done.stderr
    done = extract("sd15", "--weights", "/a/local/path")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "--weights /a/local/path: no such file or folder (backbone sd15)" in done.stderr
    assert "hf download" not in done.stderr


def test_a_loading_script_dataset_is_one_line_naming_a_source_that_works(tmp_path, capsys, monkeypatch):
    """datasets ≥ 4 refuses loading scripts with a RuntimeError (scene_parse_150 is one); it used to escape."""
    from dfbench.cli import main

    script = tmp_path / "scene_parse_150"
    script.mkdir()
    (script / "scene_parse_150.py").write_text("import datasets\n")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("DFBENCH_HOME", str(tmp_path / "home"))
    code = main(["run", "--backbone", "tiny-sd15", "--task", "ade20k", "--select", "us6", "--data-root",
                 f"hf:{script}", "--results", str(tmp_path / "results"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"--data-root hf:{script}: that hub dataset is a loading script, which datasets" in err
    assert "ADEChallengeData2016.zip" in err and "save_to_disk" in err


def test_cleandift_missing_offline_is_one_clear_error(tmp_path, monkeypatch, tiny_sd15):
    weights_dir = tmp_path / "base"
    tiny_sd15.save_pretrained(weights_dir)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DfbenchInputError, match=r"cannot get CompVis/cleandift/cleandift_sd15_unet\.safetensors"):
        create_backbone("cleandift-sd15", weights=str(weights_dir), local_files_only=True)


def test_backbone_rejects_options_it_does_not_take():
    with pytest.raises(DfbenchInputError, match="backbone tiny-sd15 does not take unet_weights"):
        create_backbone("tiny-sd15", unet_weights="x.safetensors")


def test_dift_preset_equals_straightforward_dift(tiny_sd21, photos):
    """The `dift` preset (with latent mode `mode`) against DIFT's algorithm written out by hand:
    repeat the image N times, VAE-encode, add N seeded noises at t, run the UNet, take up_blocks.1, mean."""
    settings = get_preset("dift").extract_settings(resolution=64, latent_mode="mode", seed=5, batch_size=8)
    members = settings.ensemble_size
    assert (members, settings.timestep, settings.prompt) == (8, 261, "a photo of a {category}")
    features = tiny_sd21.extract(photos[:2], ["up_blocks.1"], settings, categories=["cat", "person"])
    expected = []
    captured = []
    hook = tiny_sd21.unet.up_blocks[1].register_forward_hook(lambda m, a, out: captured.append(out))
    try:
        with torch.no_grad():
            for image, category in zip(clean_input(photos[:2]), ["cat", "person"], strict=True):
                # DIFT draws fresh noise per image (src/models/dift_sd.py:180, torch.randn_like)
                noise = torch.randn(members, 4, 8, 8, generator=per_image_generator(5, image))
                ids = tiny_sd21.tokenizers[0]([f"a photo of a {category}"], padding="max_length", max_length=77,
                                              truncation=True, return_tensors="pt").input_ids
                text = tiny_sd21.text_encoders[0](ids)[0].repeat(members, 1, 1)
                latents = tiny_sd21.vae.encode(image[None].repeat(members, 1, 1, 1)).latent_dist.mode()
                latents = latents * tiny_sd21.vae.config.scaling_factor
                t = torch.full((members,), 261, dtype=torch.long)
                captured.clear()
                tiny_sd21.unet(tiny_sd21.scheduler.add_noise(latents, noise, t), t, text)
                expected.append(captured[0].mean(0))
    finally:
        hook.remove()
    torch.testing.assert_close(features["up_blocks.1"], torch.stack(expected), rtol=1e-4, atol=1e-5)
