"""``dfbench perf``: speed of the extraction recipes, measured side by side in one process.

``recipes`` (default) — on a full-size random-weight model (SD1.5 at 512 px by default):

* the UNet up to the end of ``up_blocks.1`` vs the full UNet (truncation);
* the ``dift`` recipe (one VAE encode, 8 posterior samples, ensemble 8) vs a DIFT-style
  implementation (the image repeated 8 times through the VAE, the same truncated UNet);
* one clean pass (CleanDIFT style) vs the DIFT-style ensemble of 8;
* the peak resident memory of the recipe's extraction, in a fresh child process.

``throughput`` — images/s of a single clean pass per backbone at its default resolution, the
FLOPs per image (PyTorch's FlopCounterMode) and the fraction of a given peak (for GPUs).
"""

from __future__ import annotations

import functools
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dfbench.capture import ActivationCapture
from dfbench.images import to_model_input
from dfbench.settings import DTypeName, ExtractSettings


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function: Callable[[], Any], repeats: int, device: torch.device, warmup: int = 0) -> float:
    """Median wall time of ``function()`` in seconds over ``repeats`` runs (after ``warmup`` runs)."""
    for _ in range(warmup):
        function()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def dift_style_features(backbone: Any, pixels: torch.Tensor, settings: ExtractSettings) -> torch.Tensor:
    """DIFT's own algorithm, for comparison: the image repeated N times through the VAE encoder
    (a sample each), N seeded noises at t, the UNet truncated after ``up_blocks.1``, the mean."""
    members = settings.ensemble_size
    generator = torch.Generator().manual_seed(settings.seed)
    with torch.inference_mode():
        repeated = pixels.to(backbone.device, next(backbone.vae.parameters()).dtype).repeat(members, 1, 1, 1)
        posterior = backbone.vae.encode(repeated).latent_dist
        latents = posterior.sample(generator=torch.Generator().manual_seed(settings.seed + 1))
        latents = latents * backbone.vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=generator).to(latents.device, latents.dtype)
        t = torch.full((members,), settings.timestep, dtype=torch.long, device=latents.device)
        noisy = backbone.scheduler.add_noise(latents, noise, t).to(backbone.dtype)
        text = backbone.prompt_embedding("").hidden_states.to(backbone.dtype).repeat(members, 1, 1)
        added = backbone.added_cond_kwargs(backbone.prompt_embedding(""), members, pixels.shape[-1])
        capture = ActivationCapture(backbone.unet, ["up_blocks.1"])
        features = capture.run(lambda: backbone.unet(noisy, t, text, added_cond_kwargs=added))
    return features["up_blocks.1"].float().mean(0, keepdim=True)


def _peak_rss_child(backbone: str, resolution: int, dtype: str, ensemble: int) -> float:
    """Peak RSS (GiB) of a fresh process that builds ``backbone`` and runs the ensemble recipe once."""
    code = f"""
from dfbench import ExtractSettings, create_backbone
from dfbench.perf import perf_image
b = create_backbone({backbone!r}, init="random", device="cpu", torch_dtype={dtype!r})
b.extract([perf_image()], ["up_blocks.1"], ExtractSettings(resolution={resolution}, ensemble_size={ensemble},
          batch_size={ensemble}, latent_mode="sample", dtype={dtype!r}))
print(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1])
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # VmHWM (KiB): this process's own peak; ru_maxrss would carry the parent's peak across exec
    return int(done.stdout.strip().splitlines()[-1]) / 2**20


def peak_rss_gib() -> float:
    """This process's peak resident set size (``ru_maxrss``), GiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def vm_hwm_gib() -> float:
    """This process's own peak RSS since exec (``VmHWM`` of /proc/self/status), GiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    return 0.0


def perf_image() -> Any:
    """The photo used for timing (scikit-image's chelsea, 451×300)."""
    import skimage.data
    from PIL import Image

    return Image.fromarray(skimage.data.chelsea())


def machine_description(device: torch.device) -> str:
    """CPU model / GPU name, core count and torch version, for the report."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            for line in open("/proc/cpuinfo"):
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
    return f"{name}; {torch.get_num_threads()} threads; torch {torch.__version__}"


def run_recipes(backbone_name: str = "sd15", resolution: int | None = None, dtype: DTypeName = "float32",
                repeats: int = 1, ensemble: int = 8, device: str = "cpu", measure_rss: bool = True,
                log: Callable[[str], None] = print) -> dict[str, Any]:
    """Time truncation, the ensemble recipe, DIFT-style encoding and a clean pass side by side."""
    from dfbench.registry import create_backbone

    log(f"building {backbone_name} with random weights ({dtype}) …")
    backbone = create_backbone(backbone_name, init="random", device=device, torch_dtype=dtype)
    resolution = resolution or backbone.default_resolution
    dev = backbone.device
    pixels = to_model_input([perf_image()], resolution, "squash")
    latent = torch.randn(1, 4, resolution // 8, resolution // 8, generator=torch.Generator().manual_seed(0))
    latent = latent.to(dev, backbone.dtype)
    text = backbone.prompt_embedding("").hidden_states.to(backbone.dtype)
    added = backbone.added_cond_kwargs(backbone.prompt_embedding(""), 1, resolution)
    t = torch.tensor([261], device=dev)

    def full_unet() -> None:
        with torch.inference_mode():
            backbone.unet(latent, t, text, added_cond_kwargs=added)

    def truncated_unet() -> None:
        with torch.inference_mode():
            ActivationCapture(backbone.unet, ["up_blocks.1"]).run(
                lambda: backbone.unet(latent, t, text, added_cond_kwargs=added)
            )

    recipe = ExtractSettings(resolution=resolution, ensemble_size=ensemble, batch_size=ensemble,
                             latent_mode="sample", dtype=dtype)
    clean = recipe.replace(ensemble_size=1, batch_size=1, add_noise=False, latent_mode="mode")
    results: dict[str, Any] = {"backbone": backbone_name, "resolution": resolution, "dtype": dtype,
                               "ensemble": ensemble, "repeats": repeats, "machine": machine_description(dev)}
    steps = {
        "unet_full_s": full_unet,
        "unet_to_up_blocks_1_s": truncated_unet,
        "recipe_ensemble_s": lambda: backbone.extract(pixels, ["up_blocks.1"], recipe),
        "dift_style_ensemble_s": lambda: dift_style_features(backbone, pixels, recipe),
        "clean_pass_s": lambda: backbone.extract(pixels, ["up_blocks.1"], clean),
    }
    # One untimed warm-up run per single-pass step: the first forward of a shape pays one-time
    # costs (allocations, oneDNN/cuDNN kernel selection) that would bias whichever step runs first.
    # The ensemble steps reuse the shapes warmed up before them and are too slow to run twice on CPU.
    warmups = {"unet_full_s": 1, "unet_to_up_blocks_1_s": 1, "clean_pass_s": 1}
    for key, step in steps.items():
        log(f"timing {key} …")
        results[key] = timed(step, repeats, dev, warmup=warmups.get(key, 1 if dev.type == "cuda" else 0))
    results["truncation_speedup"] = results["unet_full_s"] / results["unet_to_up_blocks_1_s"]
    results["recipe_vs_dift_style_speedup"] = results["dift_style_ensemble_s"] / results["recipe_ensemble_s"]
    results["clean_vs_dift_style_speedup"] = results["dift_style_ensemble_s"] / results["clean_pass_s"]
    results["this_process_peak_rss_gib"] = peak_rss_gib()
    if measure_rss and dev.type == "cpu":
        log("measuring the recipe's peak RSS in a fresh process …")
        results["recipe_peak_rss_gib"] = _peak_rss_child(backbone_name, resolution, dtype, ensemble)
    return results


def run_throughput(backbones: list[str], dtype: DTypeName = "bfloat16", batch_size: int = 8, repeats: int = 5,
                   device: str | None = None, peak_tflops: float | None = None,
                   log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Images/s of one clean pass (VAE encode + truncated UNet) per backbone at its default resolution."""
    from torch.utils.flop_counter import FlopCounterMode

    from dfbench.registry import create_backbone

    rows = []
    for name in backbones:
        log(f"building {name} ({dtype}) …")
        backbone = create_backbone(name, init="random", device=device, torch_dtype=dtype)
        resolution = backbone.default_resolution
        pixels = to_model_input([perf_image()] * batch_size, resolution, "squash")
        settings = ExtractSettings(resolution=resolution, add_noise=False, batch_size=batch_size, dtype=dtype)
        run = functools.partial(backbone.extract, pixels, ["up_blocks.1"], settings)
        seconds = timed(run, repeats, backbone.device, warmup=2)
        with FlopCounterMode(display=False) as counter:
            backbone.extract(pixels[:1], ["up_blocks.1"], settings)
        flops_per_image = counter.get_total_flops()
        row = {"backbone": name, "resolution": resolution, "dtype": dtype, "batch": batch_size,
               "images_per_s": batch_size / seconds, "gflop_per_image": flops_per_image / 1e9,
               "achieved_tflops": flops_per_image * batch_size / seconds / 1e12,
               "machine": machine_description(backbone.device)}
        if peak_tflops:
            row["fraction_of_peak"] = row["achieved_tflops"] / peak_tflops
        rows.append(row)
        backbone = None  # free the model before building the next
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return rows


def format_report(results: dict[str, Any] | list[dict[str, Any]]) -> str:
    """Pretty JSON for the console and for docs/performance.md."""
    return json.dumps(results, indent=1, sort_keys=False)


SPAIR_IMAGE_SIZES = ((375, 500), (500, 375), (333, 500))  # (H, W): typical PASCAL-sized SPair images


def run_matching(pairs: int = 12234, images: int = 1800, channels: int = 1280, feature_size: int = 48,
                 keypoints: int = 10, storage_dtype: str = "float16", seed: int = 0,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Time the ``spair/dift-nn`` matching and scoring alone on synthetic features of real shapes.

    ``images`` feature maps channels×feature_size² (SD2.1 ``up_blocks.1`` at 768 px: 1280×48×48)
    are held in ``storage_dtype`` (the cache's default), images have SPair-like sizes, and
    ``pairs`` random pairs with ``keypoints`` keypoints each are matched and scored exactly as the
    task does (target norms once per target image, pairs ordered by target).
    """
    from dfbench.benchmarks.spair import PairPrediction, SpairTask, score_predictions
    from dfbench.datasets.spair import SpairPair

    generator = torch.Generator().manual_seed(seed)
    log(f"generating {images} synthetic feature maps {channels}×{feature_size}² ({storage_dtype}) …")
    store_dtype = {"float16": torch.float16, "float32": torch.float32, "bfloat16": torch.bfloat16}[storage_dtype]
    features = {f"img{i}": torch.randn(channels, feature_size, feature_size, generator=generator).to(store_dtype)
                for i in range(images)}
    sizes = {f"img{i}": SPAIR_IMAGE_SIZES[i % len(SPAIR_IMAGE_SIZES)] for i in range(images)}
    synthetic = []
    for index in range(pairs):
        src, trg = torch.randint(0, images, (2,), generator=generator).tolist()
        src_h, src_w = sizes[f"img{src}"]
        trg_h, trg_w = sizes[f"img{trg}"]
        src_kps = torch.stack([torch.randint(0, src_w, (keypoints,), generator=generator),
                               torch.randint(0, src_h, (keypoints,), generator=generator)], 1).tolist()
        trg_kps = torch.stack([torch.randint(0, trg_w, (keypoints,), generator=generator),
                               torch.randint(0, trg_h, (keypoints,), generator=generator)], 1).tolist()
        synthetic.append(SpairPair(
            f"pair{index}", "synthetic", Path(f"img{src}"), Path(f"img{trg}"), tuple(map(tuple, src_kps)),
            tuple(map(tuple, trg_kps)), (0, 0, src_w, src_h), (0, 0, trg_w / 2, trg_h / 2), (src_w, src_h),
            (trg_w, trg_h), {"src_imname": f"img{src}", "trg_imname": f"img{trg}"}))
    keyed = {f"synthetic/img{i}": features[f"img{i}"] for i in range(images)}
    keyed_sizes = {f"synthetic/img{i}": sizes[f"img{i}"] for i in range(images)}
    log(f"matching {pairs} pairs …")
    start = time.perf_counter()
    predictions: list[PairPrediction] = SpairTask().match(synthetic, keyed, keyed_sizes, progress=True)
    matched = time.perf_counter()
    score_predictions(predictions)
    scored = time.perf_counter()
    return {"pairs": pairs, "images": images, "feature_shape": [channels, feature_size, feature_size],
            "keypoints_per_pair": keypoints, "storage_dtype": storage_dtype, "match_s": matched - start,
            "score_s": scored - matched, "ms_per_pair": 1000 * (scored - start) / pairs,
            "machine": machine_description(torch.device("cpu"))}


def run_cache(images: int = 32, full_size_images: int = 64, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Cache hit read throughput vs recomputation, and bytes on disk per image per activation.

    * tiny-sd15 at 64 px (``up_blocks.1``): ``images`` real photos extracted into a fresh cache
      (recomputation), then read back from it (hit);
    * full-size shapes: ``full_size_images`` synthetic maps of SD2.1 ``up_blocks.1`` at 768 px
      (1280 × 48 × 48) and of SD1.5 ``up_blocks.1`` at 512 px (1280 × 32 × 32) written through the
      store and read back; their recomputation cost is the recipe timing of ``dfbench perf recipes``.
    """
    import tempfile

    from dfbench.cache import CacheItem, FeatureCache, image_key, load_features
    from dfbench.datasets.mini_spair import mini_spair_root
    from dfbench.datasets.spair import spair_images
    from dfbench.registry import create_backbone

    results: dict[str, Any] = {"machine": machine_description(torch.device("cpu"))}
    with tempfile.TemporaryDirectory() as root:
        backbone = create_backbone("tiny-sd15")
        settings = ExtractSettings(resolution=64, batch_size=8)
        photos = spair_images(mini_spair_root(), "trn") + spair_images(mini_spair_root(), "test")
        items = [CacheItem(image_key(path), path, category) for path, category in photos][:images]
        store = FeatureCache(Path(root) / "tiny").open(backbone, settings)
        start = time.perf_counter()
        load_features(backbone, items, ["up_blocks.1"], settings, store)
        computed = time.perf_counter() - start
        reader = FeatureCache(Path(root) / "tiny").open(backbone, settings)
        start = time.perf_counter()
        load_features(backbone, items, ["up_blocks.1"], settings, reader)
        read = time.perf_counter() - start
        results["tiny-sd15@64 up_blocks.1"] = {
            "images": len(items), "recompute_images_per_s": len(items) / computed,
            "cache_hit_images_per_s": len(items) / read,
            "bytes_per_image_per_activation": reader.summary()["bytes"] / len(items)}
        for label, shape in {"sd21@768 up_blocks.1": (1280, 48, 48), "sd15@512 up_blocks.1": (1280, 32, 32)}.items():
            for dtype in ("float16", "float32"):
                log(f"full-size shape {label} ({dtype}) …")
                store = FeatureCache(Path(root) / f"{label}-{dtype}", dtype).open(backbone, settings)
                generator = torch.Generator().manual_seed(0)
                keys = [f"img{i:04d}" for i in range(full_size_images)]
                for start_index in range(0, full_size_images, 8):
                    store.write({key: {"up_blocks.1": torch.randn(shape, generator=generator)}
                                 for key in keys[start_index : start_index + 8]})
                reader = FeatureCache(Path(root) / f"{label}-{dtype}", dtype).open(backbone, settings)
                start = time.perf_counter()
                for key in keys:
                    reader.load(key, ["up_blocks.1"])
                read = time.perf_counter() - start
                results[f"{label} {dtype}"] = {
                    "images": full_size_images, "cache_hit_images_per_s": full_size_images / read,
                    "bytes_per_image_per_activation": reader.summary()["bytes"] / full_size_images}
    return results


def _gdf_uper_iteration_s(backbone: Any, dataset: str, preset: str, crop: int | None, repeats: int,
                          log: Callable[[str], None]) -> dict[str, Any]:
    """Seconds per ``gdf-uper`` training iteration (batch 2 at the crop size: preprocessing, extraction,
    adapter, UPerHead + aux losses, backward, AdamW step), median of ``repeats`` after one warm-up."""
    from dfbench.benchmarks.segmentation_uper import GDF_RECIPES, GdfUperOptions, activation_shapes, build_segmentor
    from dfbench.datasets.segmentation import ADE20K, CITYSCAPES
    from dfbench.registry import get_preset

    preset_settings = get_preset(preset)
    settings = ExtractSettings.from_dict({**preset_settings.settings, "resolution": backbone.default_resolution})
    selection = backbone.canonical_selection(preset_settings.selection)
    recipe = GDF_RECIPES[dataset].scaled_to(crop)
    options = GdfUperOptions()
    classes = (ADE20K if dataset == "ade20k" else CITYSCAPES).num_classes
    model = build_segmentor(backbone, selection, settings, activation_shapes(backbone, selection, settings),
                            classes, options, recipe, sync_bn=False).to(backbone.device)
    # mmengine / mmseg imports after build_segmentor, which installs the mmcv.ops stand-in they need
    from mmengine.optim import OptimWrapper
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    wrapper = OptimWrapper(torch.optim.AdamW(model.parameters(), lr=options.lr, weight_decay=options.weight_decay))
    generator = torch.Generator().manual_seed(0)
    size = recipe.crop

    def batch() -> dict[str, Any]:
        samples = []
        for _ in range(options.batch_size):
            sample = SegDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size),
                                                 pad_shape=(size, size)))
            sample.gt_sem_seg = PixelData(data=torch.randint(0, classes, (1, size, size), generator=generator))
            samples.append(sample)
        images = [torch.randint(0, 256, (3, size, size), generator=generator, dtype=torch.uint8)
                  for _ in range(options.batch_size)]
        return {"inputs": images, "data_samples": samples}

    model.train()
    log(f"gdf-uper {dataset} crop {size}: {backbone.name} …")
    step_s = timed(lambda: model.train_step(batch(), wrapper), repeats, backbone.device, warmup=1)
    return {"s_per_iter": step_s, "crop": size, "batch": options.batch_size,
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "peak_rss_gib": peak_rss_gib()}


def _linear_step_s(channels: int, size: int, repeats: int) -> float:
    """Seconds per ``linear`` probe step at full-size feature shapes (8 images × 512 labelled pixels)."""
    from dfbench.benchmarks.segmentation import LinearProbeOptions, train_probe

    generator = torch.Generator().manual_seed(0)
    maps = [torch.randn(channels, size, size, generator=generator) for _ in range(8)]
    labels = [torch.randint(0, 150, (size * 8, size * 8), generator=generator) for _ in range(8)]
    steps = 20
    options = LinearProbeOptions(steps=steps)
    return timed(lambda: train_probe(maps, labels, 150, options, 0, "cpu"), repeats, torch.device("cpu")) / steps


def _linear_run_s(backbone: Any, cache_dir: Path, settings: dict[str, Any], selection: list[str]) -> float:
    """Wall time of one ``ade20k/linear`` run (50 steps) on the mini set with ``cache_dir``."""
    from dfbench.runner import RunSpec, run_one

    spec = RunSpec(backbone=backbone.name, task="ade20k/linear", selection=selection, data_root="mini",
                   settings=settings, options={"steps": 50}, cache_dir=str(cache_dir))
    start = time.perf_counter()
    run_one(spec, cache_dir / "results", progress=False, figures=False, backbone=backbone)
    return time.perf_counter() - start


def run_segmentation(full_size: bool = True, repeats: int = 2, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Segmentation on CPU, random weights: seconds per training iteration of ``gdf-uper`` (ADE20K
    crop 512, Cityscapes crop 1024) and of ``linear``, peak RSS, and the ``linear`` protocol's
    end-to-end speed-up from cached features vs live extraction (the ADE20K mini set)."""
    import tempfile

    from dfbench.registry import create_backbone

    results: dict[str, Any] = {"machine": machine_description(torch.device("cpu"))}
    names = ["tiny-sd15", "sd15"] if full_size else ["tiny-sd15"]
    for name in names:
        log(f"building {name} with random weights …")
        backbone = create_backbone(name, **({"init": "random"} if name == "sd15" else {}))
        for dataset in ("ade20k", "cityscapes"):
            results[f"gdf-uper {dataset} {name}"] = _gdf_uper_iteration_s(
                backbone, dataset, f"gdf-ours-sd15-{dataset}", None, repeats, log)
        selection = ["up_blocks.1", "up_blocks.2"]
        settings = {"resolution": backbone.default_resolution}
        with tempfile.TemporaryDirectory() as root:
            log(f"linear on the ADE20K mini set, {name}: live extraction, then from the cache …")
            live = _linear_run_s(backbone, Path(root), settings, selection)
            cached = _linear_run_s(backbone, Path(root), settings, selection)
        results[f"linear ade20k-mini {name}"] = {"live_s": live, "cached_s": cached, "speedup": live / cached,
                                                 "peak_rss_gib": resource.getrusage(
                                                     resource.RUSAGE_SELF).ru_maxrss / 2**20}
        del backbone
    results["linear step, SD1.5 Ours shapes (3520 ch at 64²)"] = {"s_per_step": _linear_step_s(3520, 64, repeats)}
    return results
