"""Stable Diffusion ⊕ DINOv2 fusion: Tale of Two Features' letterbox, the fusion
arithmetic by hand, the pair-fitted PCA against torch.pca_lowrank (Tale's co_pca), per-source extraction,
options, the cache (re-weighting extracts nothing), the pair-fitted matcher against a literal version, and an
SPair mini leaderboard with DINOv2, SD and fused rows.

References: Junyi42/sd-dino ``utils/utils_correspondence.py`` (``resize`` lines 13-30, ``co_pca`` lines 358-436),
``pck_spair_pascal.py`` (the defaults, lines 530-560); CompVis/cleandift branch geoaware-sc-eval ``pck_train.py``
(``normalize_feats`` lines 25-37, the [s3, up(s4), up(s5)] concatenation lines 45-52).
"""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dfbench.backbones.fusion import pca_pair, resize_to
from dfbench.cli import main
from dfbench.errors import DfbenchInputError, UnknownNameError
from dfbench.images import to_model_input
from dfbench.registry import create_backbone, get_preset
from dfbench.settings import ExtractSettings

TINY = "tiny-sd15+tiny-dinov2"
TINY_SIZES = ["--backbone-option", "resolution.1=64", "--backbone-option", "resolution.2=56"]


@pytest.fixture(autouse=True)
def mini_home(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DFBENCH_HOME", str(tmp_path_factory.getbasetemp() / "dfbench_home"))


@pytest.fixture(scope="module")
def fusion():
    return create_backbone(TINY, options={"resolution.1": 64, "resolution.2": 56})


def photo(seed=0, size=(80, 60)):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


# ----------------------------------------------------------------------------------------------- letterbox
def tale_resize(image, target):
    """Tale's ``resize(img, target_res, edge=False)`` (utils/utils_correspondence.py:13-30), re-typed: a zero
    canvas, the image resized with LANCZOS so its longer side is ``target``, placed at the centre."""
    width, height = image.size
    canvas = np.zeros((target, target, 3), dtype=np.uint8)
    if height <= width:
        resized = np.asarray(image.resize((target, int(np.around(target * height / width))), Image.Resampling.LANCZOS))
        top = (target - resized.shape[0]) // 2
        canvas[top : top + resized.shape[0]] = resized
    else:
        resized = np.asarray(image.resize((int(np.around(target * width / height)), target), Image.Resampling.LANCZOS))
        left = (target - resized.shape[1]) // 2
        canvas[:, left : left + resized.shape[1]] = resized
    return canvas


@pytest.mark.parametrize("size, target", [((80, 60), 56), ((45, 90), 64), ((501, 333), 120), ((50, 50), 28)])
def test_black_lanczos_letterbox_equals_tales_resize(size, target):
    image = photo(3, size)
    ours = to_model_input([image], target, "pad", pad_color="black", resample="lanczos")[0]
    as_bytes = torch.round((ours + 1) / 2 * 255).to(torch.uint8).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(as_bytes, tale_resize(image, target))


def test_pad_color_and_resample_enter_settings_records_and_cache_keys_only_when_set():
    default = ExtractSettings()
    assert "pad_color" not in default.value_dict() and "resample" not in default.value_dict()
    tale = ExtractSettings(resize_mode="pad", pad_color="black", resample="lanczos")
    assert tale.value_dict()["pad_color"] == "black" and tale.value_dict()["resample"] == "lanczos"
    grey = to_model_input([photo(1, (40, 20))], 40, "pad")[0]
    assert grey[:, 0, 0].tolist() == [0.0, 0.0, 0.0]                     # grey: 0 in [-1, 1]
    with pytest.raises(DfbenchInputError, match="pad_color='white'"):
        ExtractSettings(pad_color="white")
    with pytest.raises(DfbenchInputError, match="resample='nearest'"):
        ExtractSettings(resample="nearest")


# ----------------------------------------------------------------------------------------------- arithmetic
def test_fusion_arithmetic_against_a_hand_computed_case(fusion):
    # source 1 (tiny-sd15): x, 2 channels on a 1×1 grid = (3, 4) everywhere once resized; y, 1 channel on 2×2
    # source 2 (tiny-dinov2): z, 2 channels on 2×2
    x = torch.tensor([3.0, 4.0]).reshape(1, 2, 1, 1)
    y = torch.tensor([[0.0, 12.0], [0.0, 0.0]]).reshape(1, 1, 2, 2)
    z = torch.tensor([[[1.0, 0.0], [0.0, 2.0]], [[0.0, 0.0], [5.0, 0.0]]]).reshape(1, 2, 2, 2)
    activations = {"tiny-sd15:x": x, "tiny-sd15:y": y, "tiny-dinov2:z": z}
    fusion.options.update({"weight.tiny-sd15": 2.0, "weight.tiny-dinov2": 0.5, "renormalize": False})
    try:
        fused = fusion.combine(activations)[0]
        # by hand: location (row, col) → [2·(3, 4, y)/‖(3, 4, y)‖, 0.5·z/‖z‖]
        expected = {(0, 0): [2 * 0.6, 2 * 0.8, 0.0, 0.5, 0.0],
                    (0, 1): [2 * 3 / 13, 2 * 4 / 13, 2 * 12 / 13, 0.0, 0.0],
                    (1, 0): [2 * 0.6, 2 * 0.8, 0.0, 0.0, 0.5],
                    (1, 1): [2 * 0.6, 2 * 0.8, 0.0, 0.5, 0.0]}
        for (row, col), values in expected.items():
            torch.testing.assert_close(fused[:, row, col], torch.tensor(values))
        fusion.options["renormalize"] = True                                # CleanDIFT: the whole renormalised
        renormalised = fusion.combine(activations)[0]
        norm = (4 + 0.25) ** 0.5                                            # ‖(2·unit, 0.5·unit)‖
        torch.testing.assert_close(renormalised[:, 0, 0], torch.tensor([1.2, 1.6, 0, 0.5, 0]) / norm)
        # where DINO's vector is zero its part stays zero (no division by zero) and the SD part becomes a unit
        torch.testing.assert_close(renormalised[:, 0, 1], torch.tensor([3 / 13, 4 / 13, 12 / 13, 0, 0]))
    finally:
        fusion.options.update({"weight.tiny-sd15": 1.0, "weight.tiny-dinov2": 1.0, "renormalize": False})


def test_progressive_upsampling_is_tales_two_steps_and_direct_is_one():
    # a 2×2 map whose rows are [0, 4]: along x, bilinear (align_corners=False) 2 → 4 gives [0, 1, 3, 4] and 4 → 8
    # gives [0, .25, .75, 1.5, 2.5, 3.25, 3.75, 4]; 2 → 8 in one step gives [0, 0, .5, 1.5, 2.5, 3.5, 4, 4]
    coarse = torch.tensor([[0.0, 4.0], [0.0, 4.0]]).reshape(1, 1, 2, 2)
    middle = torch.zeros(1, 1, 4, 4)
    progressive, _ = resize_to([coarse, middle], (8, 8), progressive=True)
    direct, _ = resize_to([coarse, middle], (8, 8), progressive=False)
    assert progressive[0, 0, 3].tolist() == [0, 0.25, 0.75, 1.5, 2.5, 3.25, 3.75, 4]
    assert direct[0, 0, 3].tolist() == [0, 0, 0.5, 1.5, 2.5, 3.5, 4, 4]


# ----------------------------------------------------------------------------------------------- pair PCA
def tale_co_pca(first, second, dim):
    """Tale's co_pca for one layer (utils/utils_correspondence.py:377-407), re-typed: tokens of both images
    along the spatial axis, centred by their mean, projected with torch.pca_lowrank's V."""
    channels = first.shape[0]
    features = torch.cat([first.reshape(1, channels, -1), second.reshape(1, channels, -1)], dim=-1).permute(0, 2, 1)
    centred = features[0] - features[0].mean(dim=0, keepdim=True)
    _, _, v = torch.pca_lowrank(centred, q=dim)
    reduced = (centred @ v[:, :dim]).T
    half = reduced.shape[1] // 2
    return reduced[:, :half].reshape(dim, *first.shape[1:]), reduced[:, half:].reshape(dim, *second.shape[1:])


def test_pair_fitted_pca_equals_torch_pca_lowrank_up_to_component_signs():
    generator = torch.Generator().manual_seed(0)
    tokens, channels, dim = 32, 16, 4
    left, _ = torch.linalg.qr(torch.randn(tokens, channels, generator=generator))
    right, _ = torch.linalg.qr(torch.randn(channels, channels, generator=generator))
    spectrum = torch.tensor([100.0, 50, 20, 10] + [0.1 / (k + 1) for k in range(channels - 4)])
    matrix = left @ torch.diag(spectrum) @ right.T + 3.0                  # an offset that the centring removes
    first, second = matrix[:16].T.reshape(channels, 4, 4), matrix[16:].T.reshape(channels, 4, 4)
    torch.manual_seed(42)                                                 # Tale's seed (pca_lowrank is randomised)
    reference = tale_co_pca(first, second, dim)
    ours = pca_pair(first, second, dim)
    for mine, theirs in zip(ours, reference, strict=True):
        assert mine.shape == theirs.shape == (dim, 4, 4)
        for component in range(dim):
            sign = torch.sign((mine[component] * theirs[component]).sum())
            torch.testing.assert_close(sign * mine[component], theirs[component], atol=1e-3, rtol=1e-4)


def test_pair_pca_keeps_at_most_the_rank_bound_and_centres():
    first, second = torch.randn(3, 2, 2), torch.randn(3, 1, 3)
    reduced_first, reduced_second = pca_pair(first, second, 256)            # 3 channels, 7 tokens: 3 components
    assert reduced_first.shape == (3, 2, 2) and reduced_second.shape == (3, 1, 3)
    pooled = torch.cat([reduced_first.reshape(3, -1), reduced_second.reshape(3, -1)], dim=1)
    torch.testing.assert_close(pooled.mean(dim=1), torch.zeros(3), atol=1e-5, rtol=0)
    # a full-rank rotation keeps every distance between the centred tokens
    original = torch.cat([first.reshape(3, -1), second.reshape(3, -1)], dim=1).T
    torch.testing.assert_close(torch.cdist(pooled.T, pooled.T), torch.cdist(original, original), atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------------------------- backbone
def test_fusion_extract_is_each_source_at_its_own_size(fusion):
    from dfbench.backbones.protocol import Backbone

    assert isinstance(fusion, Backbone)                                     # the backbone contract, as a whole
    images = [photo(0), photo(1, (50, 70))]
    settings = ExtractSettings(resolution=56, timestep=100, resize_mode="pad", pad_color="black", resample="lanczos")
    fused = fusion.extract(images, ["1:up_blocks.1", "tiny-dinov2:blocks.11"], settings, categories=["cat", "dog"])
    assert list(fused) == ["tiny-sd15:up_blocks.1", "tiny-dinov2:blocks.11"]
    sd = create_backbone("tiny-sd15").extract(images, ["up_blocks.1"], settings.replace(resolution=64),
                                               categories=["cat", "dog"])
    dino = create_backbone("tiny-dinov2").extract(images, ["blocks.11"], settings)
    assert torch.equal(fused["tiny-sd15:up_blocks.1"], sd["up_blocks.1"])
    assert torch.equal(fused["tiny-dinov2:blocks.11"], dino["blocks.11"])
    assert fused["tiny-dinov2:blocks.11"].shape[-2:] == (4, 4)              # 56 px / 14


def test_fusion_names_options_and_sizes_are_checked():
    meta = create_backbone("sd15+dinov2-base", init="meta", options=get_preset("tale-of-two").backbone_options)
    assert meta.describe() == "sd15@960 pca256 ×1 ⊕ dinov2-base@840 ×1 [progressive]"
    rows = {row.name: row for row in meta.catalog()}
    # Tale's three SD layers at 960 px and DINOv2-base at 840 px (CleanDIFT's feature_dims 640, 1280, 1280, 768)
    assert [(rows[name].channels, rows[name].height) for name in meta.canonical_selection(
        get_preset("tale-of-two").selection)] == [(640, 60), (1280, 30), (1280, 15), (768, 60)]
    with pytest.raises(UnknownNameError, match="named <source>:<activation>"):
        meta.canonical_selection(["up_blocks.1"])
    with pytest.raises(DfbenchInputError, match="unknown option"):
        create_backbone(TINY, init="meta", options={"weight.sd15": 2})
    with pytest.raises(DfbenchInputError, match="expected int"):
        create_backbone(TINY, init="meta", options={"pca.1": "many"})
    with pytest.raises(DfbenchInputError, match="given twice"):
        create_backbone(TINY, init="meta", options={"pca.1": 4, "pca.tiny-sd15": 8})
    with pytest.raises(DfbenchInputError, match="own input sizes"):
        meta.check_resolution(512)
    with pytest.raises(DfbenchInputError, match="multiple of its 14-pixel patch"):
        create_backbone(TINY, init="meta", options={"resolution.2": 60})
    with pytest.raises(DfbenchInputError, match="takes no backbone options"):
        create_backbone("tiny-sd15", init="meta", options={"pca.1": 4})
    with pytest.raises(UnknownNameError, match="two or more different"):
        create_backbone("tiny-sd15+tiny-sd15")


def test_cli_runs_a_fusion_preset_and_rejects_bad_options(tmp_path, capsys):
    results = tmp_path / "results"
    assert main(["run", "--backbone", TINY, "--task", "spair", "--preset", "cleandift-fusion", "--data-root", "mini",
                 "--results", str(results), "--no-progress", "--no-figures", "--limit", "3", *TINY_SIZES]) == 0
    record = json.loads(next(results.glob("runs/*/record.json")).read_text())
    assert record["details"]["backbone_options"]["renormalize"] is True
    assert record["details"]["backbone_options"]["resolution.tiny-sd15"] == 64
    assert record["settings"]["timestep"] == 261 and record["settings"]["add_noise"] is False
    assert record["settings"]["pad_color"] == "black" and record["settings"]["resample"] == "lanczos"
    capsys.readouterr()
    assert main(["run", "--backbone", TINY, "--task", "spair", "--preset", "tale-of-two", "--data-root", "mini",
                 "--results", str(results), "--backbone-option", "weight.3=1"]) == 2
    assert "unknown option(s) weight.3" in capsys.readouterr().err
    assert main(["run", "--backbone", TINY, "--task", "spair", "--preset", "tale-of-two", "--data-root", "mini",
                 "--results", str(results), "--backbone-option", "pca.1"]) == 2
    assert "--backbone-option 'pca.1': expected KEY=VALUE" in capsys.readouterr().err
    assert main(["activations", "sd15+dinov2-base", "--backbone-option", "resolution.1=960", "--format", "json",
                 "--grep", "sd15:up_blocks.1$|blocks.11$"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["sd15:up_blocks.1"]["height"] == 60 and "us6" in rows["sd15:up_blocks.1"]["aliases"]
    assert (rows["dinov2-base:blocks.11"]["channels"], rows["dinov2-base:blocks.11"]["height"]) == (768, 60)


# ----------------------------------------------------------------------------------------------- SPair
def test_pair_fitted_matching_equals_a_literal_version(fusion):
    from dfbench.features import image_features
    from dfbench.tasks.spair.dataset import load_spair
    from dfbench.tasks.spair.matching import keep_half, match_pairs, pair_images
    from dfbench.tasks.spair.task import SpairTask

    fusion.options.update({"pca.tiny-sd15": 6, "upsample": "progressive"})
    try:
        pairs = load_spair(SpairTask().mini_root(), "test", 4)
        settings = ExtractSettings(resolution=56, timestep=100)
        found = image_features(fusion, pair_images(pairs), ["1:up_blocks.1", "1:up_blocks.2", "2:blocks.11"],
                               settings, keep=keep_half)
        predictions = match_pairs(pairs, found.features, found.sizes, False, combine_pair=fusion.combine_pair)
        for pair, prediction in zip(pairs, predictions, strict=True):
            maps = []
            for key in (pair.src_key, pair.trg_key):                         # the literal recipe, step by step
                acts = {name: value.double() for name, value in found.features[key].items()}
                maps.append(acts)
            reduced = {}
            for name in maps[0]:
                if name.startswith("tiny-sd15:"):
                    tokens = torch.cat([maps[0][name].flatten(1), maps[1][name].flatten(1)], dim=1).T
                    centred = tokens - tokens.mean(0)
                    u, s, vh = np.linalg.svd(centred.numpy(), full_matrices=False)
                    projected = torch.from_numpy(centred.numpy() @ vh[: min(6, *centred.shape)].T).T
                    split = maps[0][name][0].numel()
                    reduced[name] = (projected[:, :split].reshape(-1, *maps[0][name].shape[1:]),
                                     projected[:, split:].reshape(-1, *maps[1][name].shape[1:]))
                else:
                    reduced[name] = (maps[0][name], maps[1][name])
            descriptors = []
            for side in (0, 1):
                common = max(value[side].shape[1] for value in reduced.values())   # the largest grid (square maps)
                parts = []
                for source in ("tiny-sd15", "tiny-dinov2"):
                    maps_of_source = [value[side][None] for name, value in reduced.items() if name.startswith(source)]
                    steps = sorted({m.shape[2] for m in maps_of_source} | {common})
                    upsampled = []
                    for value in maps_of_source:                                 # Tale: coarse → finer → finest
                        for step in steps:
                            if step > value.shape[2]:
                                value = F.interpolate(value, size=(step, step), mode="bilinear", align_corners=False)
                        upsampled.append(value[0])
                    parts.append(F.normalize(torch.cat(upsampled), dim=0))
                descriptors.append(torch.cat(parts))
            source = F.normalize(F.interpolate(descriptors[0][None], size=found.sizes[pair.src_key], mode="bilinear",
                                               align_corners=False)[0], dim=0)
            target = F.normalize(F.interpolate(descriptors[1][None], size=found.sizes[pair.trg_key], mode="bilinear",
                                               align_corners=False)[0], dim=0)
            points = torch.tensor(pair.src_kps).long()
            cosine = source[:, points[:, 1], points[:, 0]].T @ target.flatten(1)
            best = cosine.max(dim=1).values
            width = found.sizes[pair.trg_key][1]
            got = prediction.predicted.long()
            reached = cosine[torch.arange(len(points)), got[:, 1] * width + got[:, 0]]
            torch.testing.assert_close(reached, best, atol=1e-5, rtol=0)    # the same maximum (ties allowed)
    finally:
        fusion.options.update({"pca.tiny-sd15": 0, "upsample": "direct"})


def test_reweighting_a_fusion_reads_the_cache_and_extracts_nothing(tmp_path):
    from dfbench.runner import RunSpec, run_one

    cache = tmp_path / "cache"
    base = dict(backbone=TINY, task="spair", preset="tale-of-two", data_root="mini", limit=4, cache_dir=str(cache))
    first, _ = run_one(RunSpec(**base, backbone_options={"resolution.1": 64, "resolution.2": 56}),
                       tmp_path / "results", progress=False, figures=False)
    shards = sorted(cache.rglob("*.safetensors"))
    assert shards and {path.parts[-4] for path in shards} == {TINY}
    second, _ = run_one(RunSpec(**base, backbone_options={"resolution.1": 64, "resolution.2": 56,
                                                          "weight.2": 0.25, "pca.1": 0}),
                        tmp_path / "results", progress=False, figures=False)
    assert sorted(cache.rglob("*.safetensors")) == shards                  # nothing new was extracted
    assert first.identity_hash != second.identity_hash
    assert second.details["backbone_detail"] == "tiny-sd15@64 ×1 ⊕ tiny-dinov2@56 ×0.25 [progressive]"


@pytest.mark.slow
def test_spair_mini_with_dinov2_sd_and_fused_rows_in_one_leaderboard(tmp_path):
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        "defaults: {task: spair, data_root: mini, limit: 4}\n"
        "runs:\n"
        "  - {backbone: tiny-dinov2, selection: [blocks.11], settings: {resize_mode: pad, pad_color: black}}\n"
        "  - {backbone: tiny-sd15, selection: [up_blocks.2.attentions.1, up_blocks.1.attentions.1, "
        "up_blocks.0.resnets.1], settings: {timestep: 100}}\n"
        f"  - {{backbone: {TINY}, preset: tale-of-two, backbone_options: {{resolution.1: 64, resolution.2: 56}}}}\n")
    results = tmp_path / "results"
    assert main(["suite", str(suite), "--results", str(results), "--no-progress"]) == 0
    board = (results / "leaderboard.md").read_text()
    for row in ("tiny-dinov2 / blocks.11", "tiny-sd15 / up_blocks.2.attentions.1",
                f"{TINY} / tale-of-two", "tiny-sd15@64 pca256 ×1 ⊕ tiny-dinov2@56 ×1 [progressive]"):
        assert row in board
    records = {record["backbone"]: record for record in
               (json.loads(path.read_text()) for path in results.glob("runs/*/record.json"))}
    assert sorted(records) == sorted(["tiny-dinov2", "tiny-sd15", TINY])
    assert records[TINY]["selection"] == ["tiny-sd15:up_blocks.2.attentions.1", "tiny-sd15:up_blocks.1.attentions.1",
                                          "tiny-sd15:up_blocks.0.resnets.1", "tiny-dinov2:blocks.11"]



# ----------------------------------------------------------------------------------------------- patch-nn
def tale_patch_prediction(src_desc, trg_desc, src_kps, src_size, trg_size, img_size):
    """Tale's matching, re-typed from pck_spair_pascal.py: preprocess_kps_pad (lines 23-45) puts the
    keypoints into the letterboxed img_size frame; the source patch is int(num_patches / img_size · y)
    (lines 184-187); the nearest target patch by cosine (chunk_cosine_sim); its position
    (i - 1)·stride + stride + patch_size // 2 - .5 (line 377, stride = patch = img_size / num_patches);
    then back to original pixels by the target's own scale and offset."""
    def pad_frame(width, height):
        scale = img_size / max(width, height)
        if height < width:
            new_h = int(np.around(img_size * height / width))
            return scale, 0, int((img_size - new_h) / 2)
        if width < height:
            new_w = int(np.around(img_size * width / height))
            return scale, int((img_size - new_w) / 2), 0
        return scale, 0, 0

    num_patches = src_desc.shape[1]
    stride = img_size // num_patches
    scale, off_x, off_y = pad_frame(src_size[1], src_size[0])
    kps = np.asarray(src_kps, dtype=np.float64) * scale + [off_x, off_y]
    patch_idx = num_patches * (num_patches / img_size * kps[:, 1]).astype(np.int32) \
        + (num_patches / img_size * kps[:, 0]).astype(np.int32)
    src_flat = F.normalize(src_desc.reshape(src_desc.shape[0], -1).T.double(), dim=1)
    trg_flat = F.normalize(trg_desc.reshape(trg_desc.shape[0], -1).T.double(), dim=1)
    nn = (src_flat[torch.from_numpy(patch_idx).long()] @ trg_flat.T).argmax(dim=1)
    nn_y, nn_x = nn // num_patches, nn % num_patches
    x = (nn_x - 1) * stride + stride + stride // 2 - .5
    y = (nn_y - 1) * stride + stride + stride // 2 - .5
    scale, off_x, off_y = pad_frame(trg_size[1], trg_size[0])
    return torch.stack([(x - off_x) / scale, (y - off_y) / scale], dim=1)


@pytest.mark.parametrize("src_size, trg_size", [((375, 500), (500, 333)), ((333, 500), (480, 480)),
                                                ((500, 281), (300, 451))])
def test_patch_nn_equals_tales_matching(src_size, trg_size):
    from dfbench.features import ImageFeatures
    from dfbench.tasks.spair.dataset import SpairPair
    from dfbench.tasks.spair.matching import match_patches

    generator = torch.Generator().manual_seed(sum(src_size))
    grid, img_size = 6, 84                                                   # a 6×6 grid of 14-pixel patches
    descriptors = {"src": torch.randn(8, grid, grid, generator=generator),
                   "trg": torch.randn(8, grid, grid, generator=generator)}
    kps = torch.stack([torch.randint(0, src_size[1], (7,), generator=generator),
                       torch.randint(0, src_size[0], (7,), generator=generator)], dim=1).tolist()
    pair = SpairPair(pair_id="p", category="cat", src_image=None, trg_image=None, src_kps=kps, trg_kps=kps,
                     src_bbox=(0, 0, 10, 10), trg_bbox=(0, 0, 10, 10), src_size=(src_size[1], src_size[0]),
                     trg_size=(trg_size[1], trg_size[0]), raw={"src_imname": "a.jpg", "trg_imname": "b.jpg"})
    found = ImageFeatures(features={pair.src_key: descriptors["src"], pair.trg_key: descriptors["trg"]},
                          sizes={pair.src_key: src_size, pair.trg_key: trg_size})
    settings = ExtractSettings(resolution=img_size, resize_mode="pad")
    (ours,) = match_patches([pair], found, settings, progress=False)
    expected = tale_patch_prediction(descriptors["src"], descriptors["trg"], kps, src_size, trg_size, img_size)
    torch.testing.assert_close(ours.predicted, expected.double())


def test_patch_nn_hand_worked_case():
    from dfbench.features import ImageFeatures
    from dfbench.tasks.spair.dataset import SpairPair
    from dfbench.tasks.spair.matching import match_patches

    # a 56×28 image letterboxed into 28 px: scale 0.5, content rows 7…21; a 2×2 grid of 14-pixel cells.
    # The source keypoint (40, 10) → input (20, 12) → cell (col 1, row 0), whose vector is e1; on the target
    # only cell (col 0, row 1) holds e1 → its centre less half a pixel, (6.5, 20.5) → original (13, 27).
    e = torch.eye(4)
    source = torch.stack([e[1], e[0], e[2], e[3]], dim=1).reshape(4, 2, 2)       # cells in row-major order
    target = torch.stack([e[1], e[2], e[0], e[3]], dim=1).reshape(4, 2, 2)
    pair = SpairPair(pair_id="p", category="cat", src_image=None, trg_image=None, src_kps=((40, 10),),
                     trg_kps=((13, 27),), src_bbox=(0, 0, 56, 28), trg_bbox=(0, 0, 56, 28), src_size=(56, 28),
                     trg_size=(56, 28), raw={"src_imname": "a.jpg", "trg_imname": "b.jpg"})
    found = ImageFeatures(features={pair.src_key: source, pair.trg_key: target},
                          sizes={pair.src_key: (28, 56), pair.trg_key: (28, 56)})
    settings = ExtractSettings(resolution=28, resize_mode="pad")
    (prediction,) = match_patches([pair], found, settings, False)
    assert prediction.predicted.tolist() == [[13.0, 27.0]]
    # cell_offset=0 (GeoAware-SC / CleanDIFT): the centre itself, (7, 21) → (14, 28)
    (prediction,) = match_patches([pair], found, settings, False, cell_offset=0.0)
    assert prediction.predicted.tolist() == [[14.0, 28.0]]


def test_patch_nn_runs_scores_its_saved_predictions_and_finds_each_photos_own_cells(tmp_path, capsys):
    results = tmp_path / "results"
    assert main(["run", "--backbone", TINY, "--task", "spair/patch-nn", "--preset", "tale-of-two", "--data-root",
                 "mini", "--split", "val", "--results", str(results), "--no-progress", "--no-figures",
                 "--save-predictions", str(tmp_path / "saved"), *TINY_SIZES]) == 0
    record = json.loads(next(results.glob("runs/*/record.json")).read_text())
    capsys.readouterr()
    assert main(["score", "--task", "spair/patch-nn", "--data-root", "mini", "--split", "val", "--predictions",
                 str(tmp_path / "saved"), "--format", "json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["pck@0.1_bbox"] == record["metrics"]["pck@0.1_bbox"] and scored["aepe"] == record["metrics"]["aepe"]
    # a photo paired with itself: every keypoint lands in its own 14-pixel cell of the 56-px input, so the error
    # is at most that cell's half-diagonal plus half a pixel, in original pixels
    from dfbench.tasks.spair.dataset import load_spair
    from dfbench.tasks.spair.task import SpairTask

    table = json.loads((tmp_path / "saved" / "predictions.json").read_text())
    pairs = [pair for pair in load_spair(SpairTask().mini_root(), "val") if pair.src_key == pair.trg_key]
    assert pairs
    for pair in pairs:
        scale = 56 / max(pair.trg_size)
        error = (torch.tensor(table[pair.pair_id]) - torch.tensor(pair.trg_kps, dtype=torch.float64)).norm(dim=1)
        assert (error <= (14 / 2 * 2 ** 0.5 + 0.5) / scale + 1e-6).all(), pair.pair_id


@pytest.mark.slow
def test_a_sweep_over_a_fusions_candidates_records_its_options(tmp_path, capsys):
    results = tmp_path / "results"
    assert main(["sweep", "--backbone", TINY, "--task", "spair", "--candidates", "tiny-sd15:up_blocks.1",
                 "tiny-dinov2:blocks.1?", "--resolution", "56", "--limit", "3", "--results", str(results),
                 "--cache-dir", str(tmp_path / "cache"), "--no-progress", *TINY_SIZES]) == 0
    assert "best:" in capsys.readouterr().out
    records = [json.loads(path.read_text()) for path in results.glob("runs/*/record.json")]
    assert sorted(record["selection"][0] for record in records) == [
        "tiny-dinov2:blocks.10", "tiny-dinov2:blocks.11", "tiny-sd15:up_blocks.1"]
    assert {record["details"]["backbone_options"]["resolution.tiny-sd15"] for record in records} == {64}
