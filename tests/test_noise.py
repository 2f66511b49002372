"""Noise is drawn per image: independent across images, and an image's draws do not depend
on its batch, the cache or the rank that extracted it.

DIFT draws a fresh posterior sample and fresh noise for every image and member
(Tsingularity/dift ``src/models/dift_sd.py:178`` ``latent_dist.sample()``, ``:180`` ``torch.randn_like``).
The noise is read back from what the UNet actually received: x_t = √ᾱ·z + √(1−ᾱ)·ε, so
ε = (x_t − √ᾱ·z) / √(1−ᾱ) with z the posterior mean, encoded here independently.
"""

import numpy as np
import pytest
import torch
from PIL import Image
from references import per_image_generator

from dfbench import ExtractSettings
from dfbench.cache import CacheItem, FeatureCache, cached_extract, image_key
from dfbench.images import to_model_input

RESOLUTION = 256
SETTINGS = ExtractSettings(resolution=RESOLUTION, timestep=261, ensemble_size=2, seed=11, batch_size=8)
NAME = "up_blocks.1"


def _unet_inputs(backbone, images, settings):
    """Extract and return (features, the latents every UNet call received, in order)."""
    received = []
    hook = backbone.unet.register_forward_pre_hook(lambda module, args: received.append(args[0].clone()))
    try:
        features = backbone.extract(images, [NAME], settings)[NAME]
    finally:
        hook.remove()
    return features, torch.cat(received)


def _recovered_noise(backbone, image, latents, settings):
    """ε of one image's member rows, from its UNet input and its independently encoded posterior mean."""
    with torch.no_grad():
        pixels = to_model_input([image], RESOLUTION, "squash")
        z = backbone.vae.encode(pixels).latent_dist.mean * backbone.vae.config.scaling_factor
    alpha_bar = backbone.scheduler.alphas_cumprod[settings.timestep]
    return (latents - alpha_bar.sqrt() * z) / (1 - alpha_bar).sqrt()


def test_different_images_get_independent_noise(tiny_sd15, photos):
    _, latents = _unet_inputs(tiny_sd15, photos[:2], SETTINGS)
    members = SETTINGS.ensemble_size
    first = _recovered_noise(tiny_sd15, photos[0], latents[:members], SETTINGS)
    second = _recovered_noise(tiny_sd15, photos[1], latents[members:], SETTINGS)
    n = first.numel()  # 2 members × 4 × 32 × 32 = 8,192 standard normals per image
    assert first.std().item() == pytest.approx(1.0, abs=0.05) and second.std().item() == pytest.approx(1.0, abs=0.05)
    correlation = torch.corrcoef(torch.stack([first.flatten(), second.flatten()]))[0, 1].item()
    assert abs(correlation) < 5 / n**0.5  # independent: |r| within 5 standard errors of 0
    # the ensemble members of one image are independent of each other too
    members_r = torch.corrcoef(torch.stack([first[0].flatten(), first[1].flatten()]))[0, 1].item()
    assert abs(members_r) < 5 / (n / 2) ** 0.5
    # and the draws are the documented ones: the image's own generator, members × C × h × w
    expected = torch.randn(members, 4, 32, 32, generator=per_image_generator(11, to_model_input(photos[:1], 256,
                                                                                                "squash")[0]))
    torch.testing.assert_close(first, expected, rtol=0, atol=2e-3)


def test_identical_images_get_identical_noise(tiny_sd15, photos):
    copy = Image.fromarray(np.asarray(photos[0]))  # another object, same pixels
    features, latents = _unet_inputs(tiny_sd15, [photos[0], copy], SETTINGS)
    assert torch.equal(latents[:2], latents[2:])
    torch.testing.assert_close(features[0], features[1], rtol=0, atol=0)


def test_an_image_gets_the_same_noise_alone_in_a_batch_from_the_cache_and_on_rank_1(tmp_path, tiny_sd15, photos):
    paths = []
    for index, photo in enumerate(photos):
        path = tmp_path / f"photo{index}.png"
        photo.resize((300, 200)).save(path)
        paths.append(path)
    images = [Image.open(path).convert("RGB") for path in paths]
    settings = SETTINGS.replace(latent_mode="sample", batch_size=2)   # posterior ε and noise both drawn
    alone, alone_latents = _unet_inputs(tiny_sd15, images[1:2], settings)
    batched, batched_latents = _unet_inputs(tiny_sd15, [images[2], images[1], images[0]], settings)
    torch.testing.assert_close(batched_latents[2:4], alone_latents, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batched[1], alone[0], rtol=1e-5, atol=1e-5)

    items = [CacheItem(image_key(path), path) for path in paths]
    cache = FeatureCache(tmp_path / "cache", storage_dtype="float32")
    store = cache.open(tiny_sd15, settings)
    cached_extract(tiny_sd15, items, [NAME], settings, store)   # one process, batches of 1 image
    torch.testing.assert_close(store.load(items[1].key, [NAME])[NAME], alone[0], rtol=1e-5, atol=1e-5)

    rank_store = FeatureCache(tmp_path / "ranks", storage_dtype="float32").open(tiny_sd15, settings)
    counts = cached_extract(tiny_sd15, [items[0], items[1]], [NAME], settings, rank_store, rank=1, world_size=2)
    assert counts["computed"] == 1 and rank_store.has(items[1].key, [NAME]) and not rank_store.has(items[0].key,
                                                                                                    [NAME])
    torch.testing.assert_close(rank_store.load(items[1].key, [NAME])[NAME], alone[0], rtol=1e-5, atol=1e-5)


def test_features_of_the_shared_noise_recipe_are_never_reused(tmp_path, tiny_sd15, monkeypatch):
    """The recipe version is part of the cache key: recipe 1 (one noise field per call, shared by
    all images) and recipe 2 (per image) live in different configurations."""
    cache = FeatureCache(tmp_path)
    current = cache.open(tiny_sd15, SETTINGS)
    assert current.config["recipe"] == 2 == tiny_sd15.recipe_version
    monkeypatch.setattr(tiny_sd15, "recipe_version", 1)
    older = cache.open(tiny_sd15, SETTINGS)
    assert older.folder != current.folder and older.config["recipe"] == 1
