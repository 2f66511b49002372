"""NYUv2 depth: probe3d's metrics by hand, the loaders (folder layout and the official .mat), the probes'
heads and losses, the augmentation, and both protocols end to end on the mini set.

References: probe3d (mbanani/probe3d) evals/utils/metrics.py (evaluate_depth 52-96, match_scale_and_shift
135-173), evals/utils/losses.py (sig_loss 49-69, DepthLoss 72-86, gradient_loss 89-129), evals/models/probes.py
(DepthBinPrediction 80-120, DPT 169-211), evals/utils/optim.py:124-133, evals/datasets/nyu.py:106-112;
CleanDIFT (CompVis/cleandift) src/depth.py (SigLoss 40-57, DepthPred.depth_pred 128-158, forward 160-170).
"""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from dfbench.cli import main
from dfbench.errors import DfbenchInputError
from dfbench.tasks.nyuv2.augment import centre_box, centre_crop, random_resized_crop
from dfbench.tasks.nyuv2.dataset import load_depth, load_samples, nyuv2_root
from dfbench.tasks.nyuv2.metrics import depth_metrics, image_depth_metrics, match_scale_and_shift
from dfbench.tasks.nyuv2.probes import (
    BinDepth,
    DptDepthProbe,
    cleandift_sig_loss,
    gradient_loss,
    probe3d_depth_loss,
    probe3d_sig_loss,
    warmup_cosine_factor,
)


@pytest.fixture(autouse=True)
def home(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DFBENCH_HOME", str(tmp_path_factory.getbasetemp() / "dfbench_home"))


# ------------------------------------------------------------------------------------------------ metrics
# Image A, 2×2 with one invalid pixel (gt 0, where the prediction 7 must not count):
#   gt [[1, 2], [4, 0]], prediction [[1, 1], [5, 7]]; valid pixels: (1→1), (2→1), (4→5).
#   ratios max(g/p, p/g): 1, 2, 1.25 → δ1 (< 1.25) 1/3, δ2 (< 1.5625) 2/3, δ3 (< 1.953125) 2/3
#   RMSE √((0 + 1 + 1)/3); AbsRel (0 + 1/2 + 1/4)/3 = 0.25; log10 (0 + log10 2 + log10 1.25)/3
# Image B, 1×1: gt 3, prediction 3 → δ 1, errors 0.
A_TRUTH, A_PRED = np.array([[1.0, 2.0], [4.0, 0.0]]), np.array([[1.0, 1.0], [5.0, 7.0]])
B_TRUTH, B_PRED = np.array([[3.0]]), np.array([[3.0]])
A_EXPECTED = {"delta1": 1 / 3, "delta2": 2 / 3, "delta3": 2 / 3, "rmse": math.sqrt(2 / 3), "abs_rel": 0.25,
              "log10": (math.log10(2) + math.log10(1.25)) / 3}


def test_metrics_of_one_image_by_hand_invalid_pixels_left_out():
    assert image_depth_metrics(A_PRED, A_TRUTH) == pytest.approx(A_EXPECTED, abs=1e-12)
    assert image_depth_metrics(B_PRED, B_TRUTH) == pytest.approx(
        {"delta1": 1, "delta2": 1, "delta3": 1, "rmse": 0, "abs_rel": 0, "log10": 0})


def test_metrics_average_over_images_not_pixels():
    """Two images of different sizes: the mean of per-image values, which pooling would not give."""
    metrics = depth_metrics([A_PRED, B_PRED], [A_TRUTH, B_TRUTH])
    assert metrics["delta1"] == pytest.approx((1 / 3 + 1) / 2)          # pooled: 2 of 4 valid pixels = 0.5
    assert metrics["rmse"] == pytest.approx(math.sqrt(2 / 3) / 2)        # pooled: √(2/4) = 0.707
    assert metrics["abs_rel"] == pytest.approx(0.125) and metrics["log10"] == pytest.approx(A_EXPECTED["log10"] / 2)
    assert metrics["delta1"] != pytest.approx(0.5) and metrics["rmse"] != pytest.approx(math.sqrt(0.5))


def test_an_image_without_valid_pixels_scores_zero_and_still_counts():
    """probe3d clamps num_valid to 1: such an image adds 0 to every metric and 1 to the count."""
    metrics = depth_metrics([B_PRED, np.ones((2, 2))], [B_TRUTH, np.zeros((2, 2))])
    assert metrics["delta1"] == pytest.approx(0.5) and metrics["rmse"] == 0.0


def test_scale_and_shift_invariant_metrics():
    """A prediction that is an affine map of the ground truth on the valid pixels is perfect after the fit."""
    truth = np.array([[1.0, 2.0, 0.0], [3.0, 5.0, 8.0]])
    prediction = (truth - 1.0) / 2.0
    prediction[0, 2] = 100.0                                              # invalid pixel: not in the fit
    metrics = depth_metrics([prediction], [truth])
    assert metrics["rmse_si"] == pytest.approx(0, abs=1e-12) and metrics["delta1_si"] == 1.0
    assert metrics["abs_rel_si"] == pytest.approx(0, abs=1e-12)
    assert metrics["rmse"] > 1                                            # scale-aware: far off


def test_match_scale_and_shift_is_least_squares_and_leaves_a_singular_system():
    rng = np.random.default_rng(0)
    truth, prediction = rng.uniform(0.5, 5, (6, 7)), rng.uniform(0, 3, (6, 7))
    truth[0, :3] = 0
    valid = truth > 0
    design = np.stack([prediction[valid], np.ones(valid.sum())], axis=1)
    (scale, shift), *_ = np.linalg.lstsq(design, truth[valid], rcond=None)   # a second implementation
    np.testing.assert_allclose(match_scale_and_shift(prediction, truth), prediction * scale + shift, rtol=1e-10)
    constant = np.full((6, 7), 2.0)                                       # det = n·Σp² − (Σp)² = 0
    np.testing.assert_array_equal(match_scale_and_shift(constant, truth), constant)


# ------------------------------------------------------------------------------------------------ loaders
def write_layout(root, pairs):
    """pairs: {(split, stem): (rgb H×W×3 uint8, depth array or None, depth suffix)}."""
    for (split, stem), (rgb, depth, suffix) in pairs.items():
        (root / split / "rgb").mkdir(parents=True, exist_ok=True)
        (root / split / "depth").mkdir(parents=True, exist_ok=True)
        if rgb is not None:
            Image.fromarray(rgb).save(root / split / "rgb" / f"{stem}.png")
        if depth is not None:
            path = root / split / "depth" / f"{stem}{suffix}"
            if suffix == ".npy":
                np.save(path, depth)
            else:
                Image.fromarray(depth).save(path)
    return root


def test_depth_files_millimetre_png_and_metre_npy_capped_at_10_m(tmp_path):
    rgb = np.zeros((2, 3, 3), np.uint8)
    millimetres = np.array([[0, 1500, 10000], [10001, 65535, 250]], np.uint16)
    metres = np.array([[np.nan, 1.5, 10.0], [10.5, np.inf, -1.0]], np.float32)
    root = write_layout(tmp_path, {("train", "a"): (rgb, millimetres, ".png"), ("test", "b"): (rgb, metres, ".npy")})
    (train,), (test,) = load_samples(root, "train"), load_samples(root, "test")
    np.testing.assert_allclose(load_depth(train.depth, (2, 3)), [[0, 1.5, 10.0], [0, 0, 0.25]], rtol=1e-6)
    np.testing.assert_array_equal(load_depth(test.depth, (2, 3)), [[0, 1.5, 10.0], [0, 0, 0]])


@pytest.mark.parametrize("problem, fragment", [
    ("no depth", "no depth"), ("no image", "no image"), ("size", "must be the same size"),
    ("8-bit", "16-bit"), ("3-D npy", "2-D float"),
])
def test_layout_problems_are_one_line_exit_2(problem, fragment, tmp_path, capsys):
    rgb = np.zeros((4, 5, 3), np.uint8)
    depth = np.ones((4, 5), np.float32)
    pairs = {("train", "a"): (rgb, depth, ".npy"), ("test", "b"): (rgb, depth, ".npy")}
    if problem == "no depth":
        pairs[("test", "c")] = (rgb, None, ".npy")
    elif problem == "no image":
        pairs[("test", "c")] = (None, depth, ".npy")
    elif problem == "size":
        pairs[("test", "b")] = (rgb, np.ones((5, 4), np.float32), ".npy")
    elif problem == "8-bit":
        pairs[("test", "b")] = (rgb, np.ones((4, 5), np.uint8), ".png")
    else:
        pairs[("test", "b")] = (rgb, np.ones((4, 5, 1), np.float32), ".npy")
    root = write_layout(tmp_path / "nyu", pairs)
    code = main(["run", "--backbone", "tiny-sd15", "--task", "nyuv2", "--select", "up_blocks.1", "--data-root",
                 str(root), "--results", str(tmp_path / "results"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and fragment in err and len(err.splitlines()) == 1, err


def write_official_mat(folder, images, depths, train, test, raw=None):
    """The official files' structure: MATLAB v7.3 (HDF5) stores column-major arrays, which h5py sees
    transposed — images N×3×W×H uint8, depths and rawDepths N×W×H; splits.mat (v5) with 1-based index columns."""
    import h5py
    import scipy.io

    with h5py.File(folder / "nyu_depth_v2_labeled.mat", "w") as handle:
        handle["images"] = np.transpose(images, (0, 3, 2, 1))            # N×H×W×3 → N×3×W×H
        handle["depths"] = np.transpose(depths, (0, 2, 1))               # N×H×W → N×W×H
        handle["rawDepths"] = np.transpose(depths if raw is None else raw, (0, 2, 1))
    scipy.io.savemat(folder / "splits.mat", {"trainNdxs": np.array(train)[:, None],
                                             "testNdxs": np.array(test)[:, None]})
    return folder / "nyu_depth_v2_labeled.mat"


def test_official_mat_is_written_into_the_layout_once(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 3, 5, 3), dtype=np.uint8)          # N×H×W×3, H ≠ W
    depths = rng.uniform(0.5, 12.0, (4, 3, 5)).astype(np.float32)
    mat = write_official_mat(tmp_path, images, depths, train=[1, 3], test=[2, 4])
    root = nyuv2_root(mat, home=tmp_path / "home")
    assert nyuv2_root(tmp_path, home=tmp_path / "home") == root          # the folder names the same file
    assert [sample.stem for sample in load_samples(root, "train")] == ["0001", "0003"]
    (first, second) = load_samples(root, "test")
    assert (first.stem, second.stem) == ("0002", "0004")
    np.testing.assert_array_equal(np.asarray(Image.open(second.image)), images[3])
    expected = np.where(depths[3] > 10, 0, depths[3])
    np.testing.assert_array_equal(load_depth(second.depth, (3, 5)), expected)


def test_raw_depths_are_the_default_ground_truth_and_filled_ones_an_option(tmp_path):
    """probe3d reads rawDepths (data_processing/create_nyu_pkl.py 37, 50): the sensor's depths with holes (0). The
    layout keeps them in depth/ (the default, depth=raw) and the in-painted depths in depth_filled/ (depth=filled)."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (2, 3, 4, 3), dtype=np.uint8)
    filled = rng.uniform(0.5, 9.0, (2, 3, 4)).astype(np.float32)
    raw = filled.copy()
    raw[:, 0, :] = 0.0                                                  # a row of holes
    mat = write_official_mat(tmp_path, images, filled, train=[1], test=[2], raw=raw)
    root = nyuv2_root(mat, home=tmp_path / "home")
    (default,) = load_samples(root, "test")
    (inpainted,) = load_samples(root, "test", "filled")
    np.testing.assert_array_equal(load_depth(default.depth, (3, 4)), raw[1])
    np.testing.assert_array_equal(load_depth(inpainted.depth, (3, 4)), filled[1])
    assert (load_depth(default.depth) > 0).sum() == 8 and (load_depth(inpainted.depth) > 0).sum() == 12
    # a folder layout without in-painted depths: depth=filled is one line; depth stays out of the identity at raw
    from dfbench.registry import TASKS
    from dfbench.resolve import option_details
    from dfbench.tasks.nyuv2.options import LinearBinsOptions

    (root / "test" / "depth_filled").rename(tmp_path / "moved")
    with pytest.raises(DfbenchInputError, match="depth=filled: no folder"):
        load_samples(root, "test", "filled")
    protocol = TASKS.get("nyuv2")().protocol("cleandift-linear")
    assert "depth" not in option_details(protocol, LinearBinsOptions())["options"]
    assert option_details(protocol, LinearBinsOptions(depth="filled"))["options_changed"] == {"depth": "filled"}


def test_official_mat_problems_are_one_line(tmp_path):
    (tmp_path / "nyu_depth_v2_labeled.mat").write_bytes(b"MATLAB 5.0 MAT-file, not HDF5")
    with pytest.raises(DfbenchInputError, match="not an HDF5 file"):
        nyuv2_root(tmp_path, home=tmp_path / "home")
    other = tmp_path / "other"
    other.mkdir()
    mat = write_official_mat(other, np.zeros((2, 3, 4, 3), np.uint8), np.ones((2, 3, 4), np.float32), [1], [3])
    with pytest.raises(DfbenchInputError, match="outside 1…2"):
        nyuv2_root(mat, home=tmp_path / "home")
    (other / "splits.mat").unlink()
    with pytest.raises(DfbenchInputError, match="splits.mat"):
        nyuv2_root(mat, home=tmp_path / "home")
    assert not list((tmp_path / "home" / "nyuv2").iterdir())              # nothing half-written


# ------------------------------------------------------------------------------------------------ heads
def test_bin_depth_linear_normalisation_by_hand():
    """logits (−1, 0, 1), bins 1, 2, 3: ReLU + 0.1 → (0.1, 0.1, 1.1) / 1.3 → (0.1 + 0.2 + 3.3) / 1.3."""
    logits = torch.tensor([-1.0, 0.0, 1.0])[None, :, None, None]
    assert BinDepth(1, 3, 3)(logits).item() == pytest.approx(3.6 / 1.3)
    softmax = torch.softmax(torch.tensor([-1.0, 0.0, 1.0]), 0)
    assert BinDepth(1, 3, 3, "softmax")(logits).item() == pytest.approx(float(softmax @ torch.tensor([1.0, 2, 3])))


def test_dpt_output_is_16_times_the_grid_with_probe3d_parameter_names():
    probe = DptDepthProbe([8, 6, 4, 2], hidden=16)
    maps = [torch.randn(2, channels, 3, 5) for channels in (8, 6, 4, 2)]
    assert probe(maps).shape == (2, 1, 48, 80)
    names = set(probe.state_dict())
    assert {"head.conv_0.weight", "head.conv_3.weight", "head.ref_0.resConfUnit1.conv.0.weight",
            "head.ref_3.resConfUnit2.conv.2.bias", "head.out_conv.2.weight"} <= names
    assert not any(name.startswith("head.ref_3.resConfUnit1") for name in names)   # the first block has no skip
    assert probe.head.out_conv[2].out_channels == 256


def linear_depth_maps(seed=0, channels=6, size=8):
    """Features and a depth map that is a linear function of them: d = 3 + 0.8·f₀ − 0.5·f₁ (1.6–4.4 m)."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.rand(channels, size, size, generator=generator) * 2 - 1
    return features, 3 + 0.8 * features[0] - 0.5 * features[1]


def test_linear_bins_probe_fits_a_depth_that_is_linear_in_the_features():
    from dfbench.tasks.nyuv2.linear import train_linear_bins
    from dfbench.tasks.nyuv2.options import LinearBinsOptions

    pairs = [linear_depth_maps(seed) for seed in range(6)]
    options = LinearBinsOptions(epochs=150, batch_size=3, lr=3e-2)
    probe, losses = train_linear_bins([f for f, _ in pairs], [d for _, d in pairs], options, 0, "cpu")
    features, depth = linear_depth_maps(99)                               # an unseen map
    with torch.no_grad():
        predicted = probe(features[None])[0, 0]
    assert float(torch.sqrt(((predicted - depth) ** 2).mean())) < 0.05 and losses[-1] < 0.2 * losses[0]


@pytest.mark.slow
def test_dpt_probe_fits_a_depth_that_is_linear_in_the_features():
    torch.manual_seed(0)
    probe = DptDepthProbe([6, 6, 6, 6], hidden=16, min_depth=0.001)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=3e-3)
    pairs = [linear_depth_maps(seed, size=2) for seed in range(4)]
    maps = torch.stack([f for f, _ in pairs])
    # the target lives at the head's output resolution: the linear map upsampled as the head upsamples
    depth = torch.nn.functional.interpolate(torch.stack([d for _, d in pairs])[:, None], scale_factor=16,
                                            mode="bilinear", align_corners=True)
    first = None
    for _ in range(100):
        loss = probe3d_depth_loss(probe([maps] * 4), depth)
        first = first if first is not None else float(loss.detach())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        rmse = float(torch.sqrt(((probe([maps] * 4) - depth) ** 2).mean()))
    assert rmse < 0.05 and float(loss) < 0.1 * first                        # starts near 2 m off


# ------------------------------------------------------------------------------------------------ losses
def test_sig_losses_closed_forms():
    """p = c·t everywhere (ε = 0): g = log c is constant, so probe3d's √(mean g² − 0.85 mean² g) and
    CleanDIFT's √(Var g + 0.15 mean² g) are both √0.15·|log c|; invalid pixels (t = 0) left out."""
    target = torch.tensor([[1.0, 2.0], [4.0, 0.0]])
    prediction = torch.tensor([[3.0, 6.0], [12.0, 99.0]])
    expected = math.sqrt(0.15) * math.log(3)
    assert float(probe3d_sig_loss(prediction, target, eps=0)) == pytest.approx(expected, rel=1e-6)
    assert float(cleandift_sig_loss(prediction, target, eps=0)) == pytest.approx(expected, rel=1e-6)


def test_cleandift_sig_loss_uses_the_unbiased_variance():
    """g = log p − log t = (0, log 2, log 4) (ε = 0): Var (n − 1) = (log 2)², mean log 2."""
    prediction, target = torch.tensor([1.0, 2.0, 4.0]), torch.tensor([1.0, 1.0, 1.0])
    assert float(cleandift_sig_loss(prediction, target, eps=0)) == pytest.approx(
        math.sqrt(math.log(2) ** 2 + 0.15 * math.log(2) ** 2), rel=1e-6)
    assert float(probe3d_sig_loss(prediction, target, eps=0)) == pytest.approx(
        math.sqrt((0 + math.log(2) ** 2 + math.log(4) ** 2) / 3 - 0.85 * math.log(2) ** 2), rel=1e-6)


def test_gradient_loss_by_hand():
    """3×3, t = 1 everywhere, p = 1 except e at the centre (ε = 0 would give log-errors 0 / 1): at stride
    1 no pair two apart spans the centre except none — pairs (r, c)/(r+2, c) never include row 1, so 0;
    stride 2, 4, 6: 2×2, 1×1, 1×1 maps without the centre → 0. Then a row of errors 0, 0, 1 → |0 − 1|."""
    target = torch.ones(3, 3)
    prediction = torch.ones(3, 3)
    prediction[1, 1] = math.e
    assert float(gradient_loss(prediction, target, eps=0)) == pytest.approx(0.0)
    prediction = torch.ones(3, 3)
    prediction[0, 2] = math.e     # stride 1: the pairs (0,0)-(0,2) and (0,2)-(2,2) each differ by 1; 9 valid
    # stride 2 keeps (0,0), (0,2), (2,0), (2,2) with no pair two apart inside a 2×2 map; 4, 6: one pixel
    assert float(gradient_loss(prediction, target, eps=0)) == pytest.approx(2 / 9, rel=1e-6)


def test_probe3d_depth_loss_ignores_targets_above_max_and_lists_pool_like_a_batch():
    torch.manual_seed(0)
    prediction, target = torch.rand(2, 1, 12, 12) + 0.5, torch.rand(2, 1, 12, 12) * 3 + 0.5
    far = target.clone()
    far[0, 0, :2] = 50.0                                                  # above 10 m: treated as invalid
    cut = target.clone()
    cut[0, 0, :2] = 0.0
    assert float(probe3d_depth_loss(prediction, far)) == pytest.approx(float(probe3d_depth_loss(prediction, cut)))
    as_list = probe3d_depth_loss([prediction[0:1], prediction[1:2]], [target[0:1], target[1:2]])
    assert float(as_list) == pytest.approx(float(probe3d_depth_loss(prediction, target)), rel=1e-6)


def test_warmup_cosine_schedule():
    assert warmup_cosine_factor(0, 100, 15) == pytest.approx(0.01)
    assert warmup_cosine_factor(15, 100, 15) == pytest.approx(1.0)
    assert warmup_cosine_factor(57.5, 100, 15) == pytest.approx(0.99 * math.cos(math.pi / 4) + 0.01)
    assert warmup_cosine_factor(100, 100, 15) == pytest.approx(0.01)


# ------------------------------------------------------------------------------------------ augmentation
def test_centre_crop_is_probe3ds_columns_80_to_560():
    assert centre_box(480, 640, None) == (0, 80, 480)
    image = Image.fromarray(np.tile(np.arange(640, dtype=np.uint16)[None] % 256, (480, 1)).astype(np.uint8))
    depth = np.tile(np.arange(640, dtype=np.float32)[None], (480, 1))
    cropped_image, cropped_depth = centre_crop(image, depth, None)
    assert cropped_depth.shape == (480, 480) and cropped_depth[0, 0] == 80 and cropped_depth[0, -1] == 559
    assert np.asarray(cropped_image)[0, 0] == 80


def test_random_resized_crop_keeps_image_and_depth_aligned():
    """The image's pixels encode their own depth, so after any crop and nearest resize they still agree."""
    values = np.arange(1, 33 * 33 + 1).reshape(33, 33)
    image = Image.fromarray(np.stack([values % 256, values // 256, np.zeros_like(values)], -1).astype(np.uint8))
    rng = np.random.default_rng(3)
    for _ in range(5):
        cropped, depth = random_resized_crop(image, values.astype(np.float32), rng)
        decoded = np.asarray(cropped).astype(np.int64)
        np.testing.assert_array_equal(decoded[..., 0] + 256 * decoded[..., 1], depth.astype(np.int64))
        assert depth.shape == (33, 33)


# ------------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_probe3d_dpt_runs_saves_nan_outside_the_crop_and_scores_the_same(tmp_path, capsys):
    results = tmp_path / "results"
    assert main(["run", "--backbone", "tiny-sd21", "--task", "nyuv2/probe3d-dpt", "--preset", "probe3d-dift",
                 "--resolution", "64", "--data-root", "mini", "--results", str(results), "--no-progress",
                 "--save-predictions", "--option", "epochs=2", "--option", "hidden=8", "--option",
                 "warmup_epochs=0.5"]) == 0
    (record_path,) = (results / "runs").glob("*/record.json")
    record = json.loads(record_path.read_text())
    assert record["metric_specs"]["rmse"] == {"higher_is_better": False, "primary": True, "unit": "m"}
    predictions = record_path.parent / "predictions"
    small = np.load(predictions / "motorcycle_010.npy")                   # 90×120: the 90² centre crop
    assert small.shape == (90, 120) and np.isnan(small[:, :15]).all() and np.isnan(small[:, 105:]).all()
    assert np.isfinite(small[:, 15:105]).all()
    capsys.readouterr()
    assert main(["score", "--task", "nyuv2/probe3d-dpt", "--data-root", "mini", "--predictions", str(predictions),
                 "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == record["metrics"]
    # the linear protocol scores whole images: the NaN outside the crop is refused in one line
    assert main(["score", "--task", "nyuv2/cleandift-linear", "--data-root", "mini", "--predictions",
                 str(predictions)]) == 2
    assert "NaN or inf" in capsys.readouterr().err
    np.save(predictions / "plane_009.npy", np.zeros((3, 3), np.float32))
    assert main(["score", "--task", "nyuv2/probe3d-dpt", "--data-root", "mini", "--predictions",
                 str(predictions)]) == 2
    assert "the ground truth is 120×160" in capsys.readouterr().err


def test_dpt_needs_four_activations(tmp_path, capsys):
    assert main(["run", "--backbone", "tiny-sd21", "--task", "nyuv2/probe3d-dpt", "--select", "up_blocks.1",
                 "--data-root", "mini", "--results", str(tmp_path), "--no-progress"]) == 2
    assert "takes 4 activations" in capsys.readouterr().err


def test_linear_protocol_scores_its_saved_predictions_with_the_metric_by_hand(tmp_path, capsys):
    """score = depth_metrics of the saved .npy files against the mini set's depths (a second path to the numbers)."""
    results = tmp_path / "results"
    assert main(["run", "--backbone", "tiny-sd21", "--task", "nyuv2", "--preset", "cleandift-depth", "--resolution",
                 "64", "--data-root", "mini", "--results", str(results), "--no-progress", "--save-predictions",
                 "--option", "epochs=3"]) == 0
    (record_path,) = (results / "runs").glob("*/record.json")
    record = json.loads(record_path.read_text())
    from dfbench.tasks.nyuv2.mini import mini_nyuv2_root

    samples = load_samples(mini_nyuv2_root(), "test")
    predictions = [np.load(record_path.parent / "predictions" / f"{sample.stem}.npy") for sample in samples]
    truths = [load_depth(sample.depth) for sample in samples]
    assert {key: record["metrics"][key] for key in ("rmse", "delta1_si")} == pytest.approx(
        {key: depth_metrics(predictions, truths)[key] for key in ("rmse", "delta1_si")})
    assert record["settings"]["prompt"] == "A photo of a room" and record["details"]["channels"] > 0
    assert (record_path.parent / "figures" / "depth-examples.png").is_file()
