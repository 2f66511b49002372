"""The regression gate sees real bugs: rows of configs/ci.yaml are rerun with a bug planted in
the code, and the comparison with the committed baseline (results/baselines/ci.json, two-sided) must
flag some metric beyond its tolerance; the same rows without the bug must pass. And the gate's
arithmetic: a planted 1-point drop fails, a 0.1-point change passes."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from dfbench.gate import compare_to_baseline, write_baseline
from dfbench.results import load_results, save_result
from dfbench.runner import run_one
from dfbench.suite import load_suite

ROOT = Path(__file__).resolve().parents[1]
CI_SUITE, BASELINE = ROOT / "configs" / "ci.yaml", ROOT / "results" / "baselines" / "ci.json"
FUSION = "tiny-sd15+tiny-dinov2"


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
                               ("nyuv2/cleandift-linear", None), ("spair/dift-nn", FUSION),
                               ("spair/patch-nn", FUSION)):
        statuses = gate(tmp_path / f"{protocol}-{backbone}".replace("/", "-"), protocol, backbone)
        assert set(statuses.values()) == {"ok"}, statuses


@pytest.mark.slow
def test_one_pixel_offset_in_predicted_keypoints_is_caught(tmp_path, monkeypatch):
    from dfbench.heads.nn_matcher import match_points
    from dfbench.tasks.spair import matching

    monkeypatch.setattr(matching, "match_points", lambda *a, **k: match_points(*a, **k) + torch.tensor([1.0, 0.0]))
    statuses = gate(tmp_path, "spair/dift-nn", "tiny-sd15")
    assert "aepe" in flagged(statuses)          # the photo-with-itself pairs: every keypoint now 1 px off


@pytest.mark.slow
def test_swapped_x_and_y_is_caught(tmp_path, monkeypatch):
    from dfbench.heads.nn_matcher import match_points
    from dfbench.tasks.spair import matching

    monkeypatch.setattr(matching, "match_points", lambda *a, **k: match_points(*a, **k).flip(1))
    assert {"aepe", "pck@0.1_bbox"} <= set(flagged(gate(tmp_path, "spair/dift-nn", "tiny-sd15")))


@pytest.mark.slow
def test_image_instead_of_bbox_threshold_is_caught(tmp_path, monkeypatch):
    """The bbox threshold computed from the whole target image: PCK_bbox rises — a change the
    two-sided gate flags (a deterministic baseline moves only when the code does)."""
    from dfbench.tasks.spair import protocols

    original = protocols.score_predictions

    def image_as_bbox(predictions, *args, **kwargs):
        whole = [dataclasses.replace(p, pair=dataclasses.replace(
            p.pair, trg_bbox=(0, 0, p.pair.trg_size[0], p.pair.trg_size[1]))) for p in predictions]
        return original(whole, *args, **kwargs)

    monkeypatch.setattr(protocols, "score_predictions", image_as_bbox)
    assert "pck@0.1_bbox" in flagged(gate(tmp_path, "spair/dift-nn"))


@pytest.mark.slow
def test_class_index_shift_in_segmentation_is_caught(tmp_path, monkeypatch):
    from dfbench.tasks.segmentation import linear

    original = linear.predict
    monkeypatch.setattr(linear, "predict", lambda *a, **k: (original(*a, **k) + 1) % 150)
    assert "mIoU" in flagged(gate(tmp_path, "ade20k/linear"))


@pytest.mark.slow
def test_metres_read_as_millimetres_in_depth_is_caught(tmp_path, monkeypatch):
    """The 16-bit PNG depths read without the mm → m conversion (the mini set's training depths are PNGs)."""
    from dfbench.tasks.nyuv2 import dataset
    from dfbench.tasks.nyuv2.dataset import MAX_DEPTH, load_depth

    def unconverted(path, size=None):
        values = load_depth(path, size)
        if Path(path).suffix == ".png":
            values = values * 1000
            values[values > MAX_DEPTH] = 0
        return values

    monkeypatch.setattr(dataset, "load_depth", unconverted)
    assert "rmse" in flagged(gate(tmp_path, "nyuv2/cleandift-linear"))


@pytest.mark.slow
def test_pair_pca_without_centring_is_caught(tmp_path, monkeypatch):
    """Tale's co_pca centres the pair's tokens by their joint mean before the SVD
    (sd-dino utils/utils_correspondence.py:358-372); a PCA of the raw tokens moves the fusion row."""
    from dfbench.backbones import fusion

    def uncentred(first, second, dim):
        channels = first.shape[0]
        tokens = torch.cat([first.reshape(channels, -1), second.reshape(channels, -1)], dim=1).T.float()
        dim = min(dim, *tokens.shape)
        reduced = (tokens @ torch.linalg.svd(tokens, full_matrices=False)[2][:dim].T).T
        split = first.shape[1] * first.shape[2]
        return reduced[:, :split].reshape(dim, *first.shape[1:]), reduced[:, split:].reshape(dim, *second.shape[1:])

    monkeypatch.setattr(fusion, "pca_pair", uncentred)
    assert "aepe" in flagged(gate(tmp_path, "spair/dift-nn", FUSION))


@pytest.mark.slow
def test_letterbox_offset_left_in_patch_predictions_is_caught(tmp_path, monkeypatch):
    """spair/patch-nn maps a matched cell back to original pixels by removing the letterbox offset (Tale's
    pck_spair_pascal.py); a prediction left in letterboxed input coordinates moves every keypoint."""
    from dfbench.tasks.spair import matching

    original = matching.input_placement

    def no_offset(size, resolution, resize_mode):
        scale, offset = original(size, resolution, resize_mode)
        return scale, offset * 0
    monkeypatch.setattr(matching, "input_placement", no_offset)
    assert "aepe" in flagged(gate(tmp_path, "spair/patch-nn", FUSION))


@pytest.mark.slow
def test_the_fusion_row_is_the_same_at_one_and_two_threads(tmp_path):
    """The gate's fusion rows run in subprocesses with OMP_NUM_THREADS=1 and 2: the features differ in their
    last bits (the thread count changes the reduction order), the metrics must not. Before the matcher's
    border plateaus were made exact, aepe was 47.034 at one thread and 47.228 at two."""
    import os
    import subprocess
    import sys

    import yaml

    suite = yaml.safe_load(CI_SUITE.read_text())
    suite["runs"] = [run for run in suite["runs"] if run["backbone"] == FUSION]
    assert len(suite["runs"]) == 2
    path = tmp_path / "fusion.yaml"
    path.write_text(yaml.safe_dump(suite))
    metrics = {}
    for threads in (1, 2):
        results = tmp_path / f"threads{threads}"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        subprocess.run([sys.executable, "-m", "dfbench", "suite", str(path), "--results", str(results),
                        "--no-progress"], env=env, check=True, capture_output=True, timeout=600)
        records = load_results(results)
        assert {record.environment["threads"]["torch"] for record in records} == {threads}
        metrics[threads] = {record.protocol: record.metrics for record in records}
    assert metrics[1] == metrics[2]
    rows, _ = compare_to_baseline(load_results(tmp_path / "threads1"), BASELINE, two_sided=True)
    ran = [row for row in rows if row[-1] != "MISSING"]           # the suite's other rows did not run here
    assert {row[0] for row in ran} == {"spair/dift-nn", "spair/patch-nn"}
    assert {row[-1] for row in ran} == {"ok"}, ran


def test_compare_names_what_differs_from_the_baselines_environment(tmp_path):
    """The baseline keeps the environment its runs were made in; compare names the versions and thread
    setup that differ from the latest run's, or says they are equal."""
    from dfbench.gate import baseline_environment_note
    from dfbench.results import Result

    def record(created, folder, torch_version, threads):
        environment = {"torch": torch_version, "packages": {"torch": torch_version, "numpy": "2.4.6"},
                       "python": "3.11.7", "cpu": "Some CPU", "threads": {"torch": threads}}
        save_result(Result(task="spair", protocol="spair/dift-nn", protocol_version=1, backbone="tiny-sd15",
                           selection=["up_blocks.1"], settings={"resolution": 64}, metrics={"aepe": 40.0},
                           created=created, details={"split": "val"}, environment=environment,
                           metric_specs={"aepe": {"higher_is_better": False, "primary": False, "unit": "px"}}),
                    folder)

    record("2026-01-01T00:00:00", tmp_path / "base", "2.13.0", 2)
    baseline = write_baseline(load_results(tmp_path / "base"), tmp_path / "ci.json", 0.5)
    import json
    assert json.loads(baseline.read_text())["environment"]["threads"] == {"torch": 2}
    record("2026-01-02T00:00:00", tmp_path / "same", "2.13.0", 2)
    assert "equal the baseline's" in baseline_environment_note(load_results(tmp_path / "same"), baseline)
    record("2026-01-02T00:00:00", tmp_path / "other", "2.14.1", 1)
    note = baseline_environment_note(load_results(tmp_path / "other"), baseline)
    assert "torch: 2.13.0 → 2.14.1" in note and "threads torch: 2 → 1" in note and "numpy" not in note


def test_a_negative_tolerance_is_refused(tmp_path, capsys):
    from dfbench.cli import main

    for args in (["--tolerance", "-1"], ["--metric-tolerance", "aepe=-0.1"], ["--tolerance", "nan"]):
        assert main(["compare", str(tmp_path), "--baseline", str(BASELINE), *args]) == 2
        error = capsys.readouterr().err.strip()
        assert "tolerance" in error and "≥ 0" in error and "\n" not in error


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
    from dfbench.tasks.base import bootstrap_stderr

    values = np.arange(100, dtype=float)
    stderr = bootstrap_stderr(len(values), lambda chosen: float(values[chosen].mean()), seed=0, draws=4000)
    assert stderr == pytest.approx(values.std() / np.sqrt(len(values)), rel=0.05)
    assert bootstrap_stderr(len(values), lambda chosen: float(values[chosen].mean()), seed=0, draws=4000) == stderr


@pytest.mark.slow
def test_dit_tokens_laid_out_column_major_are_caught(tmp_path, monkeypatch):
    """A DiT's tokens are row-major over the patch grid (PixArtTransformer2DModel's unpatchify reshapes them as
    (height, width)); a map built column-major transposes every feature map, which the gate's PixArt row sees."""
    from dfbench import capture

    original = capture.tokens_to_map
    monkeypatch.setattr(capture, "tokens_to_map",
                        lambda tokens, height, width: original(tokens, width, height).transpose(2, 3))
    assert "aepe" in flagged(gate(tmp_path, "spair/dift-nn", "tiny-pixart"))
