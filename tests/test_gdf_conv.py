"""spair/gdf-conv: grid mapping, the symmetric CLIP loss against a literal version, training, selection."""

import json

import pytest
import torch
import torch.nn.functional as F

from dfbench.benchmarks.spair_gdf_conv import GdfConvOptions
from dfbench.cli import main
from dfbench.errors import DfbenchInputError
from dfbench.heads.conv_readout import grid_index_to_points, points_to_grid_index, symmetric_clip_loss


def test_points_to_grid_and_back_by_hand():
    points = torch.tensor([[0.0, 0.0], [499.0, 374.0], [250.0, 100.0], [600.0, -5.0]])
    index = points_to_grid_index(points, (500, 375), 128)
    # x: 250·128/500 = 64 → col 64; y: 100·128/375 = 34.13 → row 34; out-of-image points clip to the grid
    assert index.tolist() == [0, 127 * 128 + 127, 34 * 128 + 64, 0 * 128 + 127]
    back = grid_index_to_points(torch.tensor([34 * 128 + 64]), (500, 375), 128)
    assert back.tolist() == [[64 * 500 / 128, 34 * 375 / 128]]


def test_symmetric_loss_equals_literal_full_matrix_version():
    """GDF computes the whole g²×g² cosine matrix and indexes rows; only K rows are formed here."""
    generator = torch.Generator().manual_seed(0)
    src, trg = torch.randn(1, 6, 5, 5, generator=generator), torch.randn(1, 6, 5, 5, generator=generator)
    src_index, trg_index = torch.tensor([0, 7, 24]), torch.tensor([3, 12, 20])
    a = F.normalize(src.flatten(2)[0].T, dim=1)   # 25×6
    b = F.normalize(trg.flatten(2)[0].T, dim=1)
    full = a @ b.T / 0.07                          # 25×25 source→target logits
    expected = (F.cross_entropy(full[src_index], trg_index) + F.cross_entropy(full.T[trg_index], src_index)) / 2
    torch.testing.assert_close(symmetric_clip_loss(src, trg, src_index, trg_index), expected)


def test_options_are_typed_and_checked():
    options = GdfConvOptions.from_dict({"max_steps": "20", "lr": "1e-3", "val_pairs_file": "val360.txt"})
    assert options.max_steps == 20 and options.lr == 1e-3 and options.val_pairs_file == "val360.txt"
    with pytest.raises(DfbenchInputError, match="unknown option.*max_step"):
        GdfConvOptions.from_dict({"max_step": 3})
    with pytest.raises(DfbenchInputError, match="max_steps='many': expected int"):
        GdfConvOptions.from_dict({"max_steps": "many"})


def test_gdf_conv_trains_selects_on_val_and_reports_test(tmp_path, monkeypatch):
    monkeypatch.setenv("DFBENCH_HOME", str(tmp_path / "home"))
    results = tmp_path / "results"
    args = ["run", "--backbone", "tiny-sd15", "--task", "spair/gdf-conv", "--select", "us6", "us9",
            "--data-root", "mini", "--resolution", "64", "--results", str(results), "--no-progress",
            "--no-figures", "--option", "max_steps=9", "--option", "eval_every=3"]
    assert main(args) == 0
    (record_path,) = (results / "runs").glob("*.json")
    record = json.loads(record_path.read_text())
    training = record["details"]["training"]
    assert record["protocol"] == "spair/gdf-conv" and record["details"]["options"]["max_steps"] == 9
    assert record["selection"] == ["up_blocks.1", "up_blocks.2"]
    assert [step for step, _ in training["val_pck@0.1_bbox"]] == [0, 3, 6, 9]
    assert len(training["loss"]) == 9
    scores = dict(training["val_pck@0.1_bbox"])
    assert training["best_val_pck@0.1_bbox"] == max(scores.values())
    assert scores[training["best_step"]] == max(scores.values())  # the first step reaching the best score
    assert record["metrics"]["pairs"] == 9  # reported on test, which training never saw
    # same seed → same training and the same test numbers
    assert main([*args, "--results", str(tmp_path / "again")]) == 0
    (again,) = (tmp_path / "again" / "runs").glob("*.json")
    again = json.loads(again.read_text())
    assert again["details"]["training"]["loss"] == training["loss"]
    assert again["metrics"] == record["metrics"]


def test_dift_nn_rejects_options(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DFBENCH_HOME", str(tmp_path / "home"))
    code = main(["run", "--backbone", "tiny-sd15", "--task", "spair", "--select", "us6", "--data-root", "mini",
                 "--resolution", "64", "--results", str(tmp_path), "--option", "max_steps=3"])
    assert code == 2 and "spair/dift-nn takes no options" in capsys.readouterr().err
