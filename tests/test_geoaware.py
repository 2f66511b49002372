"""spair/geoaware: GeoAware-SC's zero-shot evaluation as CleanDIFT runs it.

References (CompVis/cleandift branch geoaware-sc-eval @6bc34e1): configs/eval_zero_shot_spair.yaml (ADAPT_FLIP,
SOFT_EVAL, SOFT_EVAL_WINDOW 5), utils/utils_correspondence.py 22-52 (get_distance), 226-256
(softmax_with_temperature, soft_argmax, β 0.02), 297-337 (get_flow: the window), 345-389 (the transfer, cell centres
``i·stride + stride // 2``), utils/utils_geoware.py 151-189 (permute_indices and its docstring examples), 199-204
(flip_keypoints), 269-279 (optimized_kps_1_to_2), pck_train.py 104-148 (the adaptive flip).
"""

import json
import math

import pytest
import torch

from dfbench.cli import main
from dfbench.tasks.spair.dataset import SpairPair
from dfbench.tasks.spair.geoaware import (
    GeoAwareOptions,
    flip_permutation,
    mean_nearest_distance,
    predict_pair,
    soft_argmax_cells,
)

TINY = ["--backbone", "tiny-sd15+tiny-dinov2", "--backbone-option", "resolution.1=64", "--backbone-option",
        "resolution.2=56", "--resolution", "56", "--data-root", "mini", "--split", "val", "--no-progress",
        "--no-figures", "--preset", "cleandift-fusion"]


@pytest.fixture(autouse=True)
def home(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DFBENCH_HOME", str(tmp_path_factory.getbasetemp() / "dfbench_home"))


def test_flip_permutation_is_permute_indices():
    """permute_indices' own docstring examples: [1, 2, [0, 3]] with keypoint 3 hidden leaves every index; with no
    visibility given, 0 and 3 swap."""
    assert flip_permutation(((0, 3),), 4, visible={0, 1, 2}) == [0, 1, 2, 3]
    assert flip_permutation(((0, 3),), 4) == [3, 1, 2, 0]


def test_windowed_soft_argmax_by_hand():
    """A 5×5 target grid, one source row: best cell (row 2, col 2) = 1.0, its right neighbour 0.98, the other
    seven window cells (w = 1) 0.9, and a far corner (0, 4) at 0.99 that the window zeroes. Softmax at β = 0.02
    after subtracting the maximum: weights 1 (best), e⁻¹ (right), e⁻⁵ (seven), e⁻⁵⁰ (the 16 zeroed cells).
    Expected column in [−1, 1] (linspace: −1, −.5, 0, .5, 1): (e⁻¹·0.5 + e⁻⁵·(−.5 − .5 − .5 + .5 + .5) +
    e⁻⁵⁰·Σ outside) / Z, then (v + 1)·(5 − 1)/2 cells; the row alike."""
    similarity = torch.zeros(1, 25)
    for row in (1, 2, 3):
        for col in (1, 2, 3):
            similarity[0, row * 5 + col] = 0.9
    similarity[0, 2 * 5 + 2], similarity[0, 2 * 5 + 3], similarity[0, 0 * 5 + 4] = 1.0, 0.98, 0.99
    axis = [-1.0, -0.5, 0.0, 0.5, 1.0]
    weights = {}
    for row in range(5):
        for col in range(5):
            inside = 1 <= row <= 3 and 1 <= col <= 3
            value = float(similarity[0, row * 5 + col]) if inside else 0.0
            weights[row, col] = math.exp((value - 1.0) / 0.02)
    total = sum(weights.values())
    x = sum(w * axis[col] for (row, col), w in weights.items()) / total
    y = sum(w * axis[row] for (row, col), w in weights.items()) / total
    cells = soft_argmax_cells(similarity, 5, 5, window=1, beta=0.02)
    assert cells[0].tolist() == pytest.approx([(x + 1) * 2, (y + 1) * 2], abs=1e-5)
    # without the window the corner's 0.99 pulls the column towards 4 and the row towards 0
    free = soft_argmax_cells(similarity, 5, 5, window=0, beta=0.02)
    assert free[0, 0] > cells[0, 0] + 0.5 and free[0, 1] < cells[0, 1] - 0.5


def test_mean_nearest_distance_by_hand_and_masks():
    """2×2 maps of unit vectors at grid 2 (the resize is the identity): source cells a, b, a, b with a = (.6, .8),
    b = (.8, .6); target cells a, a, a, c = (1, 1)/√2. Nearest distances: a → 0, b → |b − c| (c is nearer than
    a: |b − a| = 0.2√2); mean (0 + |b − c| + 0 + |b − c|) / 4. Masking the target's c cell (it becomes −100000)
    leaves b at 0.2√2 from a; masking the source's b cells leaves only the zeros. An entry that is exactly zero
    becomes −100000 too (get_distance lines 35-36 cannot tell it from a masked one): e1 = (0, 1) is then far from
    everything."""
    a, b, c = torch.tensor([0.6, 0.8]), torch.tensor([0.8, 0.6]), torch.tensor([1.0, 1.0]) / math.sqrt(2)
    source = torch.stack([a, b, a, b], dim=1).reshape(2, 2, 2)
    target = torch.stack([a, a, a, c], dim=1).reshape(2, 2, 2)
    b_to_c = float(torch.linalg.norm(b - c))
    assert b_to_c < 0.2 * math.sqrt(2)
    assert mean_nearest_distance(source, target, grid=2) == pytest.approx(b_to_c / 2, abs=1e-6)
    target_mask = torch.tensor([[1, 1], [1, 0]])
    assert mean_nearest_distance(source, target, None, target_mask, grid=2) == pytest.approx(
        0.2 * math.sqrt(2) / 2, abs=1e-6)
    source_mask = torch.tensor([[1, 0], [1, 0]])
    assert mean_nearest_distance(source, target, source_mask, None, grid=2) == pytest.approx(0.0, abs=1e-6)
    e1 = torch.tensor([0.0, 1.0])
    lone = torch.stack([e1, e1, e1, e1], dim=1).reshape(2, 2, 2)
    expected = float(torch.linalg.norm(torch.tensor([-100000.0, 1.0]) - a))
    assert mean_nearest_distance(lone, target, grid=2) == pytest.approx(expected, rel=1e-6)


def mirrored_pair(ids):
    """A 'cat' pair on a 4×4 grid of a 64-px squashed input (16-px cells): keypoints 0 and 1 are a left/right
    pair in GeoAware-SC's table, 8 has none."""
    points = {0: (8.0, 24.0), 1: (40.0, 24.0), 8: (24.0, 56.0)}
    kps = tuple(points[i] for i in ids)
    return SpairPair(pair_id="p", category="cat", src_image=None, trg_image=None, src_kps=kps, trg_kps=kps,
                     src_bbox=(0, 0, 64, 64), trg_bbox=(0, 0, 64, 64), src_size=(64, 64), trg_size=(64, 64),
                     raw={"src_imname": "a.jpg", "trg_imname": "b.jpg", "kps_ids": [str(i) for i in ids]})


def test_adaptive_flip_takes_the_mirrored_source_on_a_mirrored_pair():
    """Cell (r, c) of the source holds v[r, c] (a one-hot of its index plus 0.1 everywhere: no exact zeros) plus a
    0.2 nudge; the target holds v mirrored (v[r, 3 − c] at column c) and the mirrored source *is* the target, so
    its mean nearest distance is 0 and beats the original's: it is kept. On the 4×4 grid of a 64-px input (16-px
    cells): keypoint 0 at (8, 24) starts, relabelled, from the mirror of its partner 1 at x = 40: 64 − 40 = 24,
    cell (col 1, row 1), found at col 1 → centre (24, 24); keypoint 1 from the mirror of x = 8: 56 → (56, 24);
    keypoint 8 (no partner) from its own mirror: 64 − 24 = 40 → (40, 56). The original source sends each vector
    to where the mirror put it: 0 → (56, 24), 1 → (24, 24), 8 → (40, 56)."""
    base = torch.eye(16) + 0.1
    nudged = torch.stack([base[k] + 0.2 * base[(k + 1) % 16] for k in range(16)])
    source, target = nudged.T.reshape(16, 4, 4), base.T.reshape(16, 4, 4).flip(-1)
    maps = {"source": source, "target": target, "flipped": target}
    options = GeoAwareOptions(soft_eval=False)
    masks = {"source": None, "target": None, "flipped": None}
    pair = mirrored_pair([0, 1, 8])
    points, flipped = predict_pair(pair, maps, (64, 64), (64, 64), 64, "squash", options, masks)
    assert flipped and points.tolist() == [[24.0, 24.0], [56.0, 24.0], [40.0, 56.0]]
    plain, flipped = predict_pair(pair, maps, (64, 64), (64, 64), 64, "squash",
                                  GeoAwareOptions(soft_eval=False, adapt_flip=False), masks)
    assert not flipped and plain.tolist() == [[56.0, 24.0], [24.0, 24.0], [40.0, 56.0]]
    # keypoint 1 hidden: 0 is not relabelled (it starts from its own mirror, x = 56, col 3) and, its partner not
    # visible, keeps the original transfer even though the mirror is kept — here the mirrored map's col 3 of row 1
    # holds the target's (0, 0) vector, so a replacement would show as (8, 8)
    moved = target.clone()
    moved[:, 1, 3] = target[:, 0, 0]
    maps_hidden = {"source": source, "target": target, "flipped": moved}
    points, flipped = predict_pair(mirrored_pair([0, 8]), maps_hidden, (64, 64), (64, 64), 64, "squash", options,
                                   masks)
    assert flipped and points.tolist() == [[56.0, 24.0], [40.0, 56.0]]
    # the target is the source itself: the original agrees better (distance 0) and nothing is replaced
    same = {"source": source, "target": source, "flipped": target}
    points, flipped = predict_pair(pair, same, (64, 64), (64, 64), 64, "squash", options, masks)
    assert not flipped and points.tolist() == [[8.0, 24.0], [40.0, 24.0], [24.0, 56.0]]


def test_without_flip_and_soft_eval_it_is_patch_nn_at_the_cell_centre(tmp_path, capsys):
    """A second implementation: spair/geoaware with adapt_flip and soft_eval off predicts what spair/patch-nn with
    cell_offset=0 does, pair for pair; with both on it runs, records how many pairs took the mirror, and its
    saved predictions score to its record."""
    runs = {}
    for name, task, options in (("geo", "spair/geoaware", ["adapt_flip=false", "soft_eval=false"]),
                                ("patch", "spair/patch-nn", ["cell_offset=0"]),
                                ("full", "spair/geoaware", [])):
        assert main(["run", "--task", task, *TINY, "--results", str(tmp_path / name), "--save-predictions",
                     str(tmp_path / f"{name}-saved"), *[part for option in options for part in ("--option", option)]
                     ]) == 0
        runs[name] = json.loads(next((tmp_path / name).glob("runs/*/record.json")).read_text())
    saved = {name: json.loads((tmp_path / f"{name}-saved" / "predictions.json").read_text()) for name in runs}
    assert saved["geo"] == saved["patch"]
    assert runs["full"]["details"]["flipped_pairs"] >= 0 and runs["full"]["details"]["options"]["soft_window"] == 5
    capsys.readouterr()
    assert main(["score", "--task", "spair/geoaware", "--data-root", "mini", "--split", "val", "--predictions",
                 str(tmp_path / "full-saved"), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["pck@0.1_bbox"] == runs["full"]["metrics"]["pck@0.1_bbox"]
