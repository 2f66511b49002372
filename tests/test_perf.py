"""`dfbench perf` on a tiny model: every step runs and the ratios are the quotients of the timings."""

import json

import pytest
import torch

from dfbench.cli import main
from dfbench.perf.recipes import dift_style_features
from dfbench.settings import ExtractSettings


@pytest.mark.slow
def test_perf_recipes_cli_writes_consistent_report(tmp_path, capsys):
    out = tmp_path / "perf.json"
    code = main(["perf", "recipes", "--backbone", "tiny-sd15", "--resolution", "64", "--ensemble", "2",
                 "--out", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["backbone"] == "tiny-sd15" and report["ensemble"] == 2
    assert report["truncation_speedup"] == pytest.approx(report["unet_full_s"] / report["unet_to_up_blocks_1_s"])
    assert report["recipe_vs_dift_style_speedup"] == pytest.approx(
        report["dift_style_ensemble_s"] / report["recipe_ensemble_s"])
    assert report["clean_vs_dift_style_speedup"] == pytest.approx(
        report["dift_style_ensemble_s"] / report["clean_pass_s"])
    assert 0.05 < report["recipe_peak_rss_gib"] < 24
    assert json.loads(capsys.readouterr().out) == report


def test_dift_style_reference_matches_recipe_in_distribution(tiny_sd15, photos):
    """Both estimate the same expectation: with noise off and mode latents they would coincide, so
    compare against the recipe with a large ensemble — the two means agree closely."""
    from dfbench.images import to_model_input

    pixels = to_model_input(photos[:1], 64, "squash")
    settings = ExtractSettings(resolution=64, ensemble_size=64, batch_size=64, latent_mode="sample", seed=1)
    reference = dift_style_features(tiny_sd15, pixels, settings)
    ours = tiny_sd15.extract(pixels, ["up_blocks.1"], settings.replace(seed=2))["up_blocks.1"]
    cosine = torch.nn.functional.cosine_similarity(reference.flatten(), ours.flatten(), dim=0)
    assert reference.shape == ours.shape == (1, 64, 4, 4)
    assert cosine > 0.98


def test_truncation_saves_the_flops_measured_in_the_design():
    """FLOPs of SD1.5 at 512 px on the meta device (no compute) against the measured table of docs/performance.md:
    VAE encode 1117, full UNet 803, UNet up to the end of up_blocks.1 439 GFLOP."""
    from torch.utils.flop_counter import FlopCounterMode

    from dfbench import create_backbone
    from dfbench.capture import ActivationCapture

    backbone = create_backbone("sd15", init="meta")
    unet = backbone.unet
    with torch.device("meta"):
        pixels, latents, text = torch.empty(1, 3, 512, 512), torch.empty(1, 4, 64, 64), torch.empty(1, 77, 768)
        counts = {}
        for key, run in {
            "vae": lambda: backbone.vae.encode(pixels),
            "unet": lambda: unet(latents, 1, text),
            "truncated": lambda: ActivationCapture(unet, ["up_blocks.1"]).run(lambda: unet(latents, 1, text)),
        }.items():
            with FlopCounterMode(display=False) as counter:
                run()
            counts[key] = counter.get_total_flops() / 1e9
    assert counts["vae"] == pytest.approx(1117, abs=1)
    assert counts["unet"] == pytest.approx(803, abs=1)
    assert counts["truncated"] == pytest.approx(439, abs=1)


def test_throughput_report_is_consistent_on_cpu():
    from dfbench.perf.throughput import run_throughput

    (row,) = run_throughput(["tiny-sd15"], dtype="float32", batch_size=2, repeats=1, device="cpu",
                            peak_tflops=2.0, log=lambda message: None)
    assert row["backbone"] == "tiny-sd15" and row["resolution"] == 64 and row["batch"] == 2
    assert row["images_per_s"] > 0 and row["gflop_per_image"] > 0
    assert row["achieved_tflops"] == pytest.approx(row["gflop_per_image"] * row["images_per_s"] / 1000)
    assert row["fraction_of_peak"] == pytest.approx(row["achieved_tflops"] / 2.0)


def test_cache_perf_bytes_per_image_match_the_tensor_sizes():
    from dfbench.perf.cache import run_cache

    report = run_cache(images=4, full_size_images=8, log=lambda message: None)
    # safetensors stores the raw tensor bytes plus one small JSON header per shard of 8 images
    for label, elements in (("sd21@768 up_blocks.1", 1280 * 48 * 48), ("sd15@512 up_blocks.1", 1280 * 32 * 32)):
        for dtype, size in (("float16", 2), ("float32", 4)):
            measured = report[f"{label} {dtype}"]["bytes_per_image_per_activation"]
            assert elements * size <= measured < elements * size * 1.001
    tiny = report["tiny-sd15@64 up_blocks.1"]
    assert tiny["images"] == 4 and tiny["bytes_per_image_per_activation"] >= 64 * 4 * 4 * 2
    assert tiny["cache_hit_images_per_s"] > 0 and tiny["recompute_images_per_s"] > 0


@pytest.mark.slow
def test_perf_backbone_times_each_backbone_in_its_own_process():
    from dfbench.perf.backbone import run_backbones

    (row,) = run_backbones(["tiny-dinov2"], None, ["blocks.1"], repeats=1, log=lambda message: None)
    assert row["backbone"] == "tiny-dinov2" and row["resolution"] == 56 and row["selection"] == ["blocks.1"]
    assert row["s_per_image"] > 0 and 0 < row["peak_rss_gib"] < 8
    from dfbench.backbones.dinov2 import TINY_CONFIG

    hidden, layers = TINY_CONFIG["hidden_size"], TINY_CONFIG["num_hidden_layers"]
    assert row["parameters_millions"] > layers * 4 * hidden * hidden / 1e6     # at least the attention weights


def test_perf_fusion_reports_parts_overhead_and_the_pair_descriptor():
    from dfbench.perf.fusion import run_fusion
    from dfbench.registry import create_backbone

    sizes = {"resolution.1": 64, "resolution.2": 56}
    row = run_fusion("tale-of-two", "tiny-sd15+tiny-dinov2", backbone_options=sizes, log=lambda message: None)
    assert {name: part["resolution"] for name, part in row["sources"].items()} == {"tiny-sd15": 64, "tiny-dinov2": 56}
    parts = sum(part["s_per_image"] for part in row["sources"].values())
    assert row["parts_s_per_image"] == pytest.approx(parts)
    assert row["overhead_s"] == pytest.approx(row["fused_s_per_image"] - parts)
    # the descriptor: each SD layer reduced to min(256, its channels, the pair's tokens) dims, plus DINO's channels,
    # on the largest grid of the fusion (from the weightless catalogs)
    meta = create_backbone("tiny-sd15+tiny-dinov2", init="meta", options=sizes)
    rows = {info.name: info for info in meta.catalog()}
    names = ("1:up_blocks.2.attentions.1", "1:up_blocks.1.attentions.1", "1:up_blocks.0.resnets.1", "2:blocks.11")
    chosen = [rows[name] for name in meta.canonical_selection(names)]
    channels = sum(min(256, info.channels, 2 * info.height * info.width) for info in chosen[:3]) + chosen[3].channels
    grid = max(info.height for info in chosen)
    assert row["descriptor_shape"] == [channels, grid, grid] and row["pair_descriptor_s"] > 0


def test_perf_suites_come_from_one_registry(capsys):
    """`dfbench perf list` prints the registry; every suite's module exists and has from_args."""
    import importlib

    from dfbench.cli import main
    from dfbench.perf import SUITES

    assert main(["perf", "list"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == list(SUITES) and len(listed) == 12
    for suite in SUITES.values():
        assert callable(importlib.import_module(f"dfbench.perf.{suite.module}").from_args)


@pytest.mark.slow
def test_perf_backbone_times_a_dit_without_its_t5():
    """The settings reach the child process: a DiT in bfloat16 with its T5 left out (never built with weights)."""
    from dfbench.perf.backbone import run_backbones

    (row,) = run_backbones(["tiny-pixart"], 64, ["transformer_blocks.13"], repeats=1, log=lambda message: None,
                           settings={"dtype": "bfloat16", "text_encoders": "none"})
    assert (row["dtype"], row["text_encoders"], row["selection"]) == ("bfloat16", "none", ["transformer_blocks.13"])
    assert row["s_per_image"] > 0 and row["parameters_millions"] > 0


def test_perf_pipeline_times_the_three_paths_side_by_side():
    """tiny-sd15, 8 photos in batches of 4: the three timings are there and each ratio is its two timings'."""
    from dfbench.perf.pipeline import run_pipeline

    (row,) = run_pipeline({"tiny-sd15": 64}, images=8, batch_size=4, log=lambda message: None)
    assert (row["images"], row["batch"]) == (8, 4)
    assert all(row[key] > 0 for key in ("forward_s", "sequential_s", "overlapped_s", "decode_s"))
    assert row["overlapped/forward"] == row["overlapped_s"] / row["forward_s"]
    assert row["sequential/forward"] == row["sequential_s"] / row["forward_s"]
