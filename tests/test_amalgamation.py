"""Amalgamation, GDF's way (Meng et al.'s "Ours-XL-t"): several backbones joined by the fusion backbone, each at its
own input size and timestep; the pixel tasks resize each source's maps to its own widest map; SPair's gdf-conv halves
the channels when several sources are joined. A three-source tiny amalgamation runs Horse-21 and SPair gdf-conv on
the mini sets."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from dfbench import ExtractSettings, create_backbone
from dfbench.heads.pixel_features import PixelFeatureBank
from dfbench.registry import get_preset
from dfbench.resolve import resolve_features
from dfbench.runner import RunSpec, run_one
from dfbench.tasks.spair.conv_readout import readout_channels

AMALGAM = "tiny-sdxl+tiny-sd15+tiny-pgv2"
TINY_SIZES = {"resolution.1": 64, "resolution.2": 64, "resolution.3": 64}


def test_the_ours_xl_t_preset_has_gdfs_8154_channels():
    """SDXL config_xl_practical (3,840) + SD1.5 config_15_amalgamation (2,880) + up_cross (154) + Playground v2's
    up-level0-repeat0-vit-block3-out (1,280), each model at its own size and timestep (no weights needed)."""
    resolved = resolve_features("sdxl+sd15+pgv2", preset="gdf-ours-xl-t", weightless=True)
    rows = {row.name: row for row in resolved.backbone.catalog()}
    per_source = {}
    for name in resolved.selection:
        per_source[name.split(":")[0]] = per_source.get(name.split(":")[0], 0) + rows[name].channels
    assert per_source == {"sdxl": 3840, "sd15": 2880 + 154, "pgv2": 1280}
    assert rows["sd15:gdf.up_cross"].height == 64
    assert rows["pgv2:up_blocks.0.attentions.0.transformer_blocks.3"].height == 32
    assert resolved.backbone.timesteps == {"sd15": 51} and resolved.settings.timestep == 50
    assert get_preset("gdf-ours-xl-t-horse21").settings["prompt"] == "a photo of a horse"


def test_a_source_runs_at_its_own_timestep(photos):
    """timestep.<source> gives that source its own t: the fused SD1.5 part equals tiny-sd15 alone at t=51 while the
    other source keeps the shared t; and it enters the cache key only when given."""
    settings = ExtractSettings(timestep=50, seed=3)
    fused = create_backbone("tiny-sd15+tiny-sd21", options={"timestep.1": 51})
    plain = create_backbone("tiny-sd15+tiny-sd21")
    features = fused.extract(photos[:1], ["1:up_blocks.1", "2:up_blocks.1"], settings)
    alone = create_backbone("tiny-sd15").extract(photos[:1], ["up_blocks.1"], settings.replace(timestep=51))
    torch.testing.assert_close(features["tiny-sd15:up_blocks.1"], alone["up_blocks.1"])
    other = create_backbone("tiny-sd21").extract(photos[:1], ["up_blocks.1"], settings)
    torch.testing.assert_close(features["tiny-sd21:up_blocks.1"], other["up_blocks.1"])
    assert fused.weight_fingerprint() != plain.weight_fingerprint()
    assert "timestep.1" not in plain.options and fused.options["timestep.tiny-sd15"] == 51


def test_pixel_bank_takes_each_sources_widest_map():
    """GDF: one extract_feature.py run per model resizes that model's maps nearest to its widest one
    (extract_feature.py 113-125), task-pixel.py then resizes each model's file bilinearly (46-53)."""
    generator = torch.Generator().manual_seed(0)
    maps = {"a:x": torch.randn(3, 4, 4, generator=generator), "a:y": torch.randn(2, 8, 8, generator=generator),
            "b:z": torch.randn(2, 2, 2, generator=generator), "b:w": torch.randn(3, 4, 4, generator=generator)}
    bank = PixelFeatureBank([maps], (16, 16), mode="nearest-bilinear")
    parts = []
    for source, widest in (("a", 8), ("b", 4)):
        names = [name for name in maps if name.startswith(source)]
        joined = torch.cat([F.interpolate(maps[name][None], size=(widest, widest), mode="nearest")
                            for name in names], dim=1)
        parts.append(F.interpolate(joined, size=(16, 16), mode="bilinear", align_corners=False))
    expected = torch.cat(parts, dim=1)[0].permute(1, 2, 0).reshape(-1, 10)
    rows, columns = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    got = bank.gather(torch.zeros(256, dtype=torch.long), rows.reshape(-1), columns.reshape(-1))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_readout_halves_channels_only_for_several_sources():
    assert readout_channels(8154, ["sdxl:a", "sd15:b", "pgv2:c"]) == 4077
    assert readout_channels(3840, ["up_blocks.0", "up_blocks.1"]) == 3840
    assert readout_channels(3840, ["sdxl:a", "sdxl:b"]) == 3840                  # one source of a fusion


@pytest.mark.slow
def test_three_source_amalgamation_through_spair_and_horse21(tmp_path):
    """The XL-t preset on three tiny models at 64 px: SPair gdf-conv trains a 3×3 conv of C → C/2 (its checkpoint),
    Horse-21's re-split protocol and ADE20K's gdf-uper (GDF's multi-model adapter) run on the amalgamated maps."""
    from dfbench.registry import TASKS
    from dfbench.tasks.spair.dataset import load_spair

    common = {"backbone": AMALGAM, "data_root": "mini", "backbone_options": dict(TINY_SIZES)}
    val_pairs = tmp_path / "val_pairs.txt"          # two validation pairs: gdf-conv validates on these only
    val_pairs.write_text("\n".join(pair.pair_id for pair in load_spair(TASKS.get("spair")().mini_root(), "val")[:2]))
    spair, record = run_one(RunSpec(task="spair/gdf-conv", preset="gdf-ours-xl-t", limit=2,
                                    options={"max_steps": 4, "eval_every": 2, "steps_per_epoch": 4,
                                             "train_limit": 4, "val_pairs_file": str(val_pairs)}, **common),
                            results_dir=tmp_path / "results", progress=False, figures=False)
    assert spair.metrics["pck@0.1_bbox"] >= 0
    checkpoint = json.loads((record.parent / "checkpoint.json").read_text())
    weight = load_file(record.parent / checkpoint["tensors"])["head.conv.weight"]
    channels = weight.shape[1]
    assert weight.shape == (channels // 2, channels, 3, 3)
    horse, _ = run_one(RunSpec(task="horse21/gdf-resplit", preset="gdf-ours-xl-t-horse21",
                               options={"seeds": 1, "epochs": 2, "resolution": 64}, **common),
                       results_dir=tmp_path / "results", progress=False, figures=False)
    assert 0 <= horse.metrics["mIoU"] <= 100
    quick = {"iters": 2, "val_interval": 2, "checkpoint_interval": 2, "crop_size": 64, "workers": 0,
             "head_channels": 16, "log_interval": 1}
    uper, _ = run_one(RunSpec(task="ade20k/gdf-uper", preset="gdf-ours-xl-t-horse21", options=quick, **common),
                      results_dir=tmp_path / "results", progress=False, figures=False)
    levels = uper.details["levels"]
    assert {name.split(":")[0] for level in levels for name in level} == {"tiny-sdxl", "tiny-sd15", "tiny-pgv2"}
    assert uper.details["iterations"] == 2 and 0 <= uper.metrics["mIoU"] <= 100


def test_the_segmentation_presets_have_gdfs_levels():
    """ade_full.py / city_full.py: c_per_level = [2560+1280, 1280+640, 640+640] at 32², 64², 128² (1024 px)."""
    from dfbench.tasks.segmentation.mmseg_models import feature_levels

    for dataset in ("ade20k", "cityscapes"):
        resolved = resolve_features("sdxl+pgv2", preset=f"gdf-ours-xl-t-{dataset}", weightless=True)
        rows = {row.name: row for row in resolved.backbone.catalog()}
        shapes = {name: (rows[name].channels, rows[name].height, rows[name].width) for name in resolved.selection}
        levels = feature_levels(shapes)
        assert [sum(shapes[name][0] for name in level) for level in levels] == [3840, 1920, 1280]
        assert [shapes[level[0]][1] for level in levels] == [32, 64, 128]


def test_amalgamated_adapter_wires_gdfs_blocks():
    """With random weights in place of GDF's zeros: each activation through its block 4 times (one shared block, as
    MultiRes's [ResBlock(dim)] * n), each model's part of a level through its block twice, the level's concatenation
    through one block — computed by hand here from the same blocks."""
    from dfbench.tasks.segmentation.mmseg_models import GdfAmalgamatedAdapter

    channels, sources = [[3, 2, 4], [2]], [["a", "a", "b"], ["b"]]
    adapter = GdfAmalgamatedAdapter(channels, sources).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in adapter.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    inputs = [torch.randn(2, 9, 4, 4, generator=generator), torch.randn(2, 2, 8, 8, generator=generator)]

    def repeat(block, x, times):
        for _ in range(times):
            x = block(x)
        return x

    with torch.no_grad():
        got = adapter(inputs)
        x0, x1, x2 = torch.split(inputs[0], [3, 2, 4], dim=1)
        blocks = [repeated.block for repeated in adapter.per_activation[0]]
        first_model = torch.cat([repeat(blocks[0], x0, 4), repeat(blocks[1], x1, 4)], dim=1)
        a = repeat(adapter.per_source[0][0].block, first_model, 2)
        b = repeat(adapter.per_source[0][1].block, repeat(blocks[2], x2, 4), 2)
        level0 = adapter.per_level[0](torch.cat([a, b], dim=1))
        single = repeat(adapter.per_source[1][0].block, repeat(adapter.per_activation[1][0].block, inputs[1], 4), 2)
        level1 = adapter.per_level[1](single)
    torch.testing.assert_close(got[0], level0)
    torch.testing.assert_close(got[1], level1)
    # shared blocks: one per activation, one per (level, model), one per level
    per_block = {count: sum(p.numel() for p in GdfAmalgamatedAdapter([[count]], [["a"]]).per_level.parameters())
                 for count in (2, 3, 4, 5, 9)}
    activations, models, levels = per_block[3] + per_block[2] + per_block[4] + per_block[2], \
        per_block[5] + per_block[4] + per_block[2], per_block[9] + per_block[2]
    assert sum(p.numel() for p in adapter.parameters()) == activations + models + levels
