"""PCK, scoring and matching against hand-worked cases and a literal DIFT implementation."""

import math

import pytest
import torch
import torch.nn.functional as F

from dfbench.heads.nn_matcher import bilinear_taps, bilinear_weights, match_points, upsample, upsampled_norm
from dfbench.tasks.spair.dataset import SpairPair
from dfbench.tasks.spair.pck import bbox_reference, correct_keypoints, image_reference
from dfbench.tasks.spair.scoring import PairPrediction, score_predictions


def test_point_exactly_on_the_threshold_counts():
    truth = torch.tensor([[100.0, 100.0], [100.0, 100.0], [100.0, 100.0]])
    # reference 200, alpha 0.1 → threshold 20 px; distances 20 (3-4-5 triangle ×4), 20.0001, 0
    predicted = torch.tensor([[112.0, 116.0], [120.0001, 100.0], [100.0, 100.0]])
    assert correct_keypoints(predicted, truth, 200.0, 0.1).tolist() == [True, False, True]


def test_bbox_and_image_references():
    assert bbox_reference((10, 20, 110, 70)) == 100  # w 100, h 50
    assert bbox_reference((0, 0, 30, 90)) == 90
    assert image_reference((500, 375)) == 500


def _pair(category, trg_kps, bbox, size, name):
    return SpairPair(name, category, None, None, tuple(trg_kps), tuple(trg_kps), bbox, bbox, size, size,
                     {"src_imname": name, "trg_imname": name})


def test_per_keypoint_vs_per_image_vs_per_category_by_hand():
    # pair A (cat): 4 keypoints, bbox 100 → 0.1 threshold 10 px; image 400 → 40 px
    a = _pair("cat", [(0, 0)] * 4, (0, 0, 100, 50), (400, 300), "a")
    a_pred = torch.tensor([[5, 0], [0, 10], [30, 0], [0, 50]])   # distances 5, 10, 30, 50
    # pair B (dog): 1 keypoint, bbox 200 → 20 px; image 200 → 20 px
    b = _pair("dog", [(0, 0)], (0, 0, 200, 200), (200, 100), "b")
    b_pred = torch.tensor([[15, 0]])                               # distance 15
    metrics, categories = score_predictions([PairPrediction(a, a_pred), PairPrediction(b, b_pred)], alphas=(0.1,))
    # bbox: A 2/4 correct, B 1/1. pooled 3/5 = 60 %; per image (50 % + 100 %)/2 = 75 %
    assert metrics["pck@0.1_bbox"] == pytest.approx(60.0)
    assert metrics["pck@0.1_bbox_per_image"] == pytest.approx(75.0)
    # img: A threshold 40 → 5,10,30 correct (3/4); B threshold 20 → 1/1. pooled 4/5, per image 87.5
    assert metrics["pck@0.1_img"] == pytest.approx(80.0)
    assert metrics["pck@0.1_img_per_image"] == pytest.approx(87.5)
    assert categories["cat"]["pck@0.1_bbox"] == pytest.approx(50.0)
    assert categories["dog"]["pck@0.1_bbox"] == pytest.approx(100.0)
    assert metrics["pck@0.1_bbox_category_mean"] == pytest.approx(75.0)
    assert metrics["pairs"] == 2 and metrics["keypoints"] == 5


def test_tales_weighted_and_average_pck_on_categories_of_different_sizes():
    """Tale of Two Features (sd-dino pck_spair_pascal.py 531-537): "Average" = the mean of the categories' PCKs,
    "Weighted" = np.average(pcks, weights=pairs per category). cat: 3 pairs, 2 of 3 keypoints correct → 66.67 %;
    dog: 1 pair, 1 of 2 → 50 %. Average (66.67 + 50) / 2 = 58.33; Weighted (3·66.67 + 1·50) / 4 = 62.5; pooled 3/5."""
    cat = [_pair("cat", [(0, 0)], (0, 0, 100, 100), (400, 300), name) for name in "abc"]
    dog = _pair("dog", [(0, 0), (0, 0)], (0, 0, 100, 100), (400, 300), "d")
    near, far = torch.tensor([[1, 0]]), torch.tensor([[50, 0]])
    predictions = [PairPrediction(cat[0], near), PairPrediction(cat[1], near), PairPrediction(cat[2], far),
                   PairPrediction(dog, torch.tensor([[1, 0], [50, 0]]))]
    metrics, _ = score_predictions(predictions, alphas=(0.1,))
    assert metrics["pck@0.1_bbox_category_mean"] == pytest.approx((200 / 3 + 50) / 2)
    assert metrics["pck@0.1_bbox_pair_weighted"] == pytest.approx((3 * 200 / 3 + 50) / 4)
    assert metrics["pck@0.1_bbox"] == pytest.approx(60.0)
    # Tale's constants for the full test set are SPair's test pairs per category: 12,234 in all
    tale_weights = [690, 650, 702, 702, 870, 644, 564, 600, 646, 640, 600, 600, 702, 650, 862, 664, 756, 692]
    assert sum(tale_weights) == 12234


@pytest.mark.parametrize("in_size,out_size", [(6, 37), (48, 375), (5, 5), (7, 3), (1, 9)])
def test_bilinear_weights_reproduce_interpolate(in_size, out_size):
    signal = torch.randn(1, 1, 1, in_size)
    expected = F.interpolate(signal, size=(1, out_size), mode="bilinear", align_corners=False)[0, 0, 0]
    weights = bilinear_weights(torch.arange(out_size), in_size, out_size)
    torch.testing.assert_close(weights @ signal[0, 0, 0], expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(weights.sum(1), torch.ones(out_size))


def _literal_dift(src, trg, points, src_size, trg_size):
    """DIFT's own way: upsample both maps to full size, normalise, cosine, argmax. Returns the
    predictions and the cosine maps K×H×W."""
    source = F.normalize(upsample(src[None], src_size)[0], dim=0)
    target = F.normalize(upsample(trg[None], trg_size)[0], dim=0)
    vectors = source[:, points[:, 1], points[:, 0]].T
    cosine = vectors @ target.flatten(1)
    flat = cosine.argmax(1)
    return torch.stack([flat % trg_size[1], flat // trg_size[1]], dim=1), cosine.reshape(-1, *trg_size)


def test_matcher_equals_literal_dift_implementation():
    generator = torch.Generator().manual_seed(0)
    cases = [(32, (6, 8), (37, 50), (41, 60)), (64, (12, 12), (90, 120), (75, 100))]
    for channels, (h, w), src_size, trg_size in cases:
        src = torch.randn(channels, h, w, generator=generator)
        trg = torch.randn(channels, h + 1, w - 1, generator=generator)
        points = torch.stack([torch.randint(0, src_size[1], (12,), generator=generator),
                              torch.randint(0, src_size[0], (12,), generator=generator)], dim=1)
        ours = match_points(src, trg, points, src_size, trg_size)
        literal, cosine = _literal_dift(src, trg, points, src_size, trg_size)
        same = (ours == literal).all(dim=1)
        assert same.any()
        # upsampled cosine maps are smooth, so neighbouring pixels at the top can tie to float
        # rounding; wherever the two argmaxes differ, ours must reach the same maximum cosine
        for k in torch.nonzero(~same).flatten():
            ours_score = cosine[k, ours[k, 1], ours[k, 0]]
            literal_score = cosine[k, literal[k, 1], literal[k, 0]]
            assert ours_score == pytest.approx(literal_score.item(), abs=1e-5)


@pytest.mark.parametrize("low,high", [((5, 7), (23, 31)), ((48, 48), (375, 500)), ((6, 4), (6, 4)), ((9, 8), (4, 5)),
                                      ((1, 3), (7, 10))])
def test_upsampled_norm_equals_norm_of_the_upsampled_map(low, high):
    features = torch.randn(40, *low)
    full = upsample(features[None], high)[0].norm(dim=0)
    torch.testing.assert_close(upsampled_norm(features, high), full, rtol=1e-4, atol=1e-5)


def _position_codes(height, width):
    """One-hot code per pixel: channel y*W + x is 1 at (y, x) — every location is unique."""
    return torch.eye(height * width).reshape(height * width, height, width)


def test_one_hot_position_codes_match_exactly():
    features = _position_codes(6, 8)
    points = torch.tensor([[0, 0], [7, 5], [3, 2], [6, 1]])
    predicted = match_points(features, features, points, (6, 8), (6, 8))
    assert torch.equal(predicted, points)  # PCK = 100 at any threshold
    truth = points.double()
    assert correct_keypoints(predicted, truth, 8.0, 0.0).all()


def test_known_flip_is_mirrored():
    features = _position_codes(6, 8)
    flipped = features.flip(-1)  # target = source mirrored left-right
    points = torch.tensor([[0, 0], [7, 5], [3, 2], [6, 1]])
    predicted = match_points(features, flipped, points, (6, 8), (6, 8))
    expected = torch.stack([7 - points[:, 0], points[:, 1]], dim=1)
    assert torch.equal(predicted, expected)


def test_border_plateau_is_exactly_flat_and_its_first_pixel_wins():
    """Past the outermost cell centres a bilinear upsampling (align_corners=False) repeats the cell's value:
    for a 2×2 map brought to 20×20, rows and columns 15…19 ((p + 0.5)·2/20 − 0.5 ≥ 1) all equal cell (1, 1).
    With orthogonal cell vectors the cosine to cell (1, 1) is 1 only on that 5×5 plateau, so the match is its
    first pixel (x 15, y 15) in row-major order — as DIFT's own argmax breaks exact ties (Tsingularity/dift
    eval_spair.py:94-95 upsamples with nn.Upsample(mode='bilinear'), 117-119 takes np.argmax of the cosine
    map, the first maximum in row-major order) — and stays there whatever
    last-bit noise the features carry (PyTorch's kernel computes those pixels as (1 − λ)·a + λ·a, which the
    thread count and CPU round differently: the CI gate's fusion row moved by 0.37 px of AEPE that way)."""
    trg = torch.eye(4).reshape(4, 2, 2)                          # cell (y, x) holds e_{2y + x}
    src = torch.eye(4).reshape(4, 2, 2)
    point = torch.tensor([[19, 19]])                              # source pixel on its own (1, 1) plateau
    assert match_points(src, trg, point, (20, 20), (20, 20)).tolist() == [[15, 15]]
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        noisy = trg * (1 + 1e-6 * torch.randn(trg.shape, generator=generator))
        assert match_points(src, noisy, point, (20, 20), (20, 20)).tolist() == [[15, 15]]
    # the plateau's values are bit-identical: the norm map repeats cell (1, 1)'s norm exactly
    norm = upsampled_norm(trg * 3.0, (20, 20))
    assert torch.equal(norm[15:, 15:], torch.full((5, 5), 3.0))


@pytest.mark.parametrize("in_size,out_size", [(2, 20), (3, 400), (48, 375)])
def test_clamped_taps_weigh_one_cell_exactly(in_size, out_size):
    """Output pixels whose taps clamp to the last cell get weight exactly 1.0 on it and a high-tap weight of
    exactly 0 (PyTorch's kernel keeps λ = p·in/out − (in − 1) > 0 there, on the same cell twice)."""
    weights = bilinear_weights(torch.arange(out_size), in_size, out_size)
    start = math.ceil((in_size - 0.5) * out_size / in_size - 0.5)   # first p with (p + 0.5)·in/out − 0.5 ≥ in − 1
    assert torch.equal(weights[start:, -1], torch.ones(out_size - start))
    assert (weights[start - 1, -1] < 1).item()
    low, high, frac = bilinear_taps(torch.arange(out_size), in_size, out_size)
    assert (low[start:] == in_size - 1).all() and (high[start:] == in_size - 1).all()
    assert torch.equal(frac[start:], torch.zeros(out_size - start))
