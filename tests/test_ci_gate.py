"""The regression gate sees real bugs (issue 14): rows of configs/ci.yaml are rerun with a bug planted in
the code, and the comparison with the committed baseline (results/baselines/ci.json, two-sided) must
flag some metric beyond its tolerance; the same rows without the bug must pass. And the gate's
arithmetic: a planted 1-point drop fails, a 0.1-point change passes."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from dfbench.results import compare_to_baseline, load_results, save_result, write_baseline
from dfbench.runner import load_suite, run_one

ROOT = Path(__file__).resolve().parents[1]
CI_SUITE, BASELINE = ROOT / "configs" / "ci.yaml", ROOT / "results" / "baselines" / "ci.json"


@pytest.fixture(autouse=True)
def mini_home(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DFBENCH_HOME", str(tmp_path_factory.getbasetemp() / "dfbench_home"))


def gate(results, protocol, backbone=None):
    """Run the CI suite's rows of ``protocol`` (and ``backbone``) into ``results``; the baseline
    comparison rows of those runs (two-sided), as {metric: status}."""
    specs = [spec for spec in load_suite(CI_SUITE)
             if spec.task == protocol and (backbone is None or spec.backbone == backbone)]
    assert specs, protocol
    for spec in specs:
        run_one(spec, results, progress=False, figures=False)
    rows, _ = compare_to_baseline(load_results(results), BASELINE, two_sided=True)
    ran = [row for row in rows if row[-1] != "MISSING"]
    assert len({tuple(row[:4]) for row in ran}) == len(specs)      # every rerun row matched its baseline entry
    return {row[4]: row[-1] for row in ran}


def flagged(statuses):
    return sorted(metric for metric, status in statuses.items() if status in ("REGRESSION", "CHANGED"))


@pytest.mark.slow
def test_the_ci_rows_reproduce_the_committed_baseline(tmp_path):
    """Control: without a planted bug, the rows the mutation tests rerun are within tolerance (here: equal)."""
    for protocol, backbone in (("spair/dift-nn", "tiny-sd15"), ("ade20k/linear", None),
                               ("nyuv2/cleandift-linear", None)):
        statuses = gate(tmp_path / protocol.replace("/", "-"), protocol, backbone)
        assert set(statuses.values()) == {"ok"}, statuses


@pytest.mark.slow
def test_one_pixel_offset_in_predicted_keypoints_is_caught(tmp_path, monkeypatch):
    from dfbench.benchmarks import spair
    from dfbench.heads.nn_matcher import match_points

    monkeypatch.setattr(spair, "match_points", lambda *a, **k: match_points(*a, **k) + torch.tensor([1.0, 0.0]))
    statuses = gate(tmp_path, "spair/dift-nn", "tiny-sd15")
    assert "aepe" in flagged(statuses)          # the photo-with-itself pairs: every keypoint now 1 px off


@pytest.mark.slow
def test_swapped_x_and_y_is_caught(tmp_path, monkeypatch):
    from dfbench.benchmarks import spair
    from dfbench.heads.nn_matcher import match_points

    monkeypatch.setattr(spair, "match_points", lambda *a, **k: match_points(*a, **k).flip(1))
    assert {"aepe", "pck@0.1_bbox"} <= set(flagged(gate(tmp_path, "spair/dift-nn", "tiny-sd15")))


@pytest.mark.slow
def test_image_instead_of_bbox_threshold_is_caught(tmp_path, monkeypatch):
    """The bbox threshold computed from the whole target image: PCK_bbox rises — a change the
    two-sided gate flags (a deterministic baseline moves only when the code does)."""
    from dfbench.benchmarks import spair

    original = spair.score_predictions

    def image_as_bbox(predictions, *args, **kwargs):
        whole = [dataclasses.replace(p, pair=dataclasses.replace(
            p.pair, trg_bbox=(0, 0, p.pair.trg_size[0], p.pair.trg_size[1]))) for p in predictions]
        return original(whole, *args, **kwargs)

    monkeypatch.setattr(spair, "score_predictions", image_as_bbox)
    assert "pck@0.1_bbox" in flagged(gate(tmp_path, "spair/dift-nn"))


@pytest.mark.slow
def test_class_index_shift_in_segmentation_is_caught(tmp_path, monkeypatch):
    from dfbench.benchmarks import segmentation

    original = segmentation.predict
    monkeypatch.setattr(segmentation, "predict", lambda *a, **k: (original(*a, **k) + 1) % 150)
    assert "mIoU" in flagged(gate(tmp_path, "ade20k/linear"))


@pytest.mark.slow
def test_metres_read_as_millimetres_in_depth_is_caught(tmp_path, monkeypatch):
    """The 16-bit PNG depths read without the mm → m conversion (the mini set's training depths are PNGs)."""
    from dfbench.benchmarks import depth
    from dfbench.datasets.nyuv2 import MAX_DEPTH, load_depth

    def unconverted(path, size=None):
        values = load_depth(path, size)
        if Path(path).suffix == ".png":
            values = values * 1000
            values[values > MAX_DEPTH] = 0
        return values

    monkeypatch.setattr(depth, "load_depth", unconverted)
    assert "rmse" in flagged(gate(tmp_path, "nyuv2/cleandift-linear"))


def test_a_planted_one_point_drop_fails_and_a_tenth_passes(tmp_path):
    """The gate's arithmetic on records of known values, with the CI baseline's 0.5 tolerance."""
    from dfbench.results import Result

    def record(value, created, folder):
        result = Result(task="spair", protocol="spair/dift-nn", protocol_version=1, backbone="tiny-sd15",
                        selection=["up_blocks.1"], settings={"resolution": 64, "timestep": 261},
                        metrics={"pck@0.1_bbox": value, "pck@0.1_bbox_stderr": 2.0}, created=created,
                        details={"split": "val", "leaderboard_metrics": ["pck@0.1_bbox"]},
                        metric_specs={"pck@0.1_bbox": {"higher_is_better": True, "primary": True, "unit": "%"}})
        save_result(result, folder)

    record(66.67, "2026-01-01T00:00:00", tmp_path / "base")
    baseline = write_baseline(load_results(tmp_path / "base"), tmp_path / "ci.json", 0.5)
    for change, passes in ((-1.0, False), (-0.1, True), (+0.1, True), (+1.0, False)):
        folder = tmp_path / f"run{change}"
        record(66.67 + change, "2026-01-02T00:00:00", folder)
        rows, passed = compare_to_baseline(load_results(folder), baseline, two_sided=True)
        assert passed is passes, (change, rows)
        assert rows[0][7] == pytest.approx(change) and rows[0][8] == 2.0      # the change beside its stderr
    rows, passed = compare_to_baseline(load_results(tmp_path / "run1.0"), baseline)   # one-sided: an improvement
    assert passed and rows[0][-1] == "improved"


def test_bootstrap_stderr_matches_a_closed_form():
    """The mean of n values: its bootstrap standard error tends to σ/√n (σ with ddof 0)."""
    from dfbench.benchmarks.base import bootstrap_stderr

    values = np.arange(100, dtype=float)
    stderr = bootstrap_stderr(len(values), lambda chosen: float(values[chosen].mean()), seed=0, draws=4000)
    assert stderr == pytest.approx(values.std() / np.sqrt(len(values)), rel=0.05)
    assert bootstrap_stderr(len(values), lambda chosen: float(values[chosen].mean()), seed=0, draws=4000) == stderr
