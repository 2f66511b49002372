"""spair/gdf-conv: grid mapping, the symmetric CLIP loss against a literal version, training, selection."""

import hashlib
import json
import shutil

import pytest
import torch
import torch.nn.functional as F

from dfbench import ExtractSettings
from dfbench.backbones.base import DiffusionBackbone
from dfbench.cli import main
from dfbench.errors import DfbenchInputError
from dfbench.options import parse_options
from dfbench.tasks.spair.conv_readout import grid_index_to_points, points_to_grid_index, symmetric_clip_loss
from dfbench.tasks.spair.dataset import SpairPair, load_spair
from dfbench.tasks.spair.gdf_conv import (
    GdfConvOptions,
    draw_settings,
    gdf_report,
    train,
    validation_pck,
    validation_steps,
)
from dfbench.tasks.spair.mini import mini_spair_root


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
    given = {"max_steps": "20", "eval_every": "5", "lr": "1e-3", "val_pairs_file": "val360.txt", "noise_draws": "3",
             "report": "gdf"}
    options = parse_options(GdfConvOptions, given, "spair/gdf-conv")
    assert options.max_steps == 20 and options.eval_every == 5 and options.lr == 1e-3
    assert options.val_pairs_file == "val360.txt"
    assert options.noise_draws == 3 and options.report == "gdf"
    with pytest.raises(DfbenchInputError, match="unknown option.*max_step"):
        parse_options(GdfConvOptions, {"max_step": 3}, "spair/gdf-conv")
    with pytest.raises(DfbenchInputError, match="max_steps='many': expected int"):
        parse_options(GdfConvOptions, {"max_steps": "many"}, "spair/gdf-conv")
    with pytest.raises(DfbenchInputError, match="report='best': choose one of select, gdf"):
        parse_options(GdfConvOptions, {"report": "best"}, "spair/gdf-conv")
    with pytest.raises(DfbenchInputError, match="noise_draws=0: must be ≥ 1"):
        parse_options(GdfConvOptions, {"noise_draws": 0}, "spair/gdf-conv")
    with pytest.raises(DfbenchInputError, match="max_steps=500 must exceed eval_every=500"):
        parse_options(GdfConvOptions, {"report": "gdf", "max_steps": 500}, "spair/gdf-conv")


def test_validation_steps_are_gdfs():
    """GDF's loop written out (correspondence/task-corres.py:152-177): 2 epochs × 5,000 steps,
    step = epoch·len + i, validate when step > 0 and step % 500 == 0 — never the untrained head."""
    gdf_steps = [epoch * 5000 + i for epoch in range(2) for i in range(5000)
                 if epoch * 5000 + i > 0 and (epoch * 5000 + i) % 500 == 0]
    assert gdf_steps == list(range(500, 10000, 500)) and len(gdf_steps) == 19
    assert validation_steps(GdfConvOptions(report="gdf")) == gdf_steps
    # select also validates the last head (step 9,999), so the end of training can be chosen
    assert validation_steps(GdfConvOptions()) == [*gdf_steps, 9999]
    assert validation_steps(GdfConvOptions(max_steps=9, eval_every=3)) == [3, 6, 8]
    assert validation_steps(GdfConvOptions(max_steps=2, eval_every=5)) == [1]


def test_gdf_report_on_a_hand_made_history():
    """task-corres.py:186-188: max1 = max(max1, pck_img), max2 = max(max2, pck_bbox), separately."""
    history = [(500, 40.0, 30.0), (1000, 45.0, 28.0), (1500, 42.0, 35.0), (2000, 45.0, 35.0)]
    assert gdf_report(history) == {"pck@0.1_img": 45.0, "pck@0.1_bbox": 35.0,
                                   "best_step_img": 1000.0, "best_step_bbox": 1500.0}
    with pytest.raises(DfbenchInputError, match="no validation ran"):
        gdf_report([])


def test_validation_pck_pools_keypoints_like_gdf():
    """GDF's compute_pck (correspondence_utils.py:160-167): dist <= 0.1·max(W, H) (img) or
    0.1·max(right − left, bottom − top) (bbox), summed over all keypoints of all pairs."""
    pairs = [_pair("a", [[10, 10], [50, 50]], [[12, 10], [80, 50]], (0, 0, 100, 40), (200, 100)),
             _pair("b", [[5, 5]], [[5, 5]], (0, 0, 10, 10), (20, 20))]
    predicted = [torch.tensor([[12.0, 29.0], [80.0, 50.0]]), torch.tensor([[7.0, 5.0]])]
    # pair a: errors 19 and 0; img threshold 20 → 2 right; bbox threshold 10 → 1 right.
    # pair b: error 2; img threshold 2 (inclusive) → right; bbox threshold 1 → wrong.
    img, bbox = validation_pck(pairs, predicted)
    assert img == pytest.approx(100 * 3 / 3) and bbox == pytest.approx(100 * 1 / 3)


def test_draw_settings_are_independent_seeds():
    settings = ExtractSettings(seed=3)
    assert draw_settings(settings, 0) is settings
    expected = int.from_bytes(hashlib.sha256(b"3:draw2").digest()[:4], "big")
    assert draw_settings(settings, 2) == settings.replace(seed=expected)


class _CountingFeatures(dict):
    """A feature table that counts reads of each image key."""

    def __init__(self, table):
        super().__init__(table)
        self.reads = {}

    def __getitem__(self, key):
        self.reads[key] = self.reads.get(key, 0) + 1
        return super().__getitem__(key)


def test_training_picks_a_noise_realisation_per_image_and_step():
    generator = torch.Generator().manual_seed(0)
    train_pairs = [_pair("t", [[4, 4], [20, 20]], [[6, 4], [22, 20]], (0, 0, 32, 32), (32, 32))]
    val = [_pair("v", [[8, 8]], [[8, 8]], (0, 0, 32, 32), (32, 32))]
    keys = ["cat/t_src.jpg", "cat/t_trg.jpg", "cat/v_src.jpg", "cat/v_trg.jpg"]
    draws = [_CountingFeatures({key: {"a": torch.randn(4, 8, 8, generator=generator)} for key in keys})
             for _ in range(3)]
    options = GdfConvOptions(max_steps=60, eval_every=30)
    best, history = train(train_pairs, val, draws, options, seed=0, device=torch.device("cpu"), progress=False)
    train_reads = [sum(draw.reads.get(key, 0) for key in keys[:2]) for draw in draws]
    # one realisation per image per step: 60 steps × 2 images, plus the channel probe on draw 0
    assert sum(train_reads) == 60 * 2 + 1
    assert all(reads > 20 for reads in train_reads)          # each of the 3 realisations is used
    assert all(draw.reads.get("cat/v_src.jpg", 0) == 0 for draw in draws[1:])  # validation: draw 0 only
    assert [step for step, _, _ in history["validations"]] == [30, 59]
    assert best["step"] in (30, 59) and len(history["loss"]) == 60


@pytest.mark.slow
def test_gdf_conv_trains_selects_on_val_and_reports_test(tmp_path, monkeypatch):
    monkeypatch.setenv("DFBENCH_HOME", str(tmp_path / "home"))
    results = tmp_path / "results"
    args = ["run", "--backbone", "tiny-sd15", "--task", "spair/gdf-conv", "--select", "us6", "us9",
            "--data-root", "mini", "--resolution", "64", "--results", str(results), "--no-progress",
            "--no-figures", "--option", "max_steps=9", "--option", "eval_every=3"]
    assert main(args) == 0
    (record_path,) = (results / "runs").glob("*/record.json")
    record = json.loads(record_path.read_text())
    training = record["details"]["training"]
    assert record["protocol"] == "spair/gdf-conv" and record["details"]["options"]["max_steps"] == 9
    assert record["selection"] == ["up_blocks.1", "up_blocks.2"]
    # validated after steps 3, 6 and the last (8); never the untrained head
    assert [step for step, _, _ in training["validations"]] == [3, 6, 8]
    assert len(training["loss"]) == 9
    scores = {step: bbox for step, _, bbox in training["validations"]}
    assert training["best_val_pck@0.1_bbox"] == max(scores.values())
    assert scores[training["best_step"]] == max(scores.values())
    assert training["best_step"] == min(step for step, score in scores.items() if score == max(scores.values()))
    assert record["metrics"]["pairs"] == 9 and record["details"]["split"] == "test"  # training never saw test
    assert "variant" not in record["details"]
    # same seed → same training and the same test numbers
    assert main([*args, "--results", str(tmp_path / "again")]) == 0
    (again,) = (tmp_path / "again" / "runs").glob("*/record.json")
    again = json.loads(again.read_text())
    assert again["details"]["training"]["loss"] == training["loss"]
    assert again["metrics"] == record["metrics"]


@pytest.mark.slow
def test_report_gdf_is_the_max_over_validations_on_gdfs_list(tmp_path, monkeypatch, capsys):
    """report=gdf: GDF's JSON list matched by image names, unmatched pairs named, the maximum of
    PCK_img and of PCK_bbox over the validations, and the test split never read."""
    monkeypatch.setenv("DFBENCH_HOME", str(tmp_path / "home"))
    root = tmp_path / "spair"
    shutil.copytree(mini_spair_root(), root)
    shutil.rmtree(root / "PairAnnotation" / "test")  # the test split is never used
    (root / "Layout" / "large" / "test.txt").unlink()
    val = load_spair(root, "val")
    entries = [{"source_path": f"{p.category}/{p.src_image.name}", "target_path": f"{p.category}/{p.trg_image.name}",
                "category": p.category} for p in reversed(val)]
    entries.append({"source_path": "dog/2008_007494.jpg", "target_path": "dog/2009_004227.jpg", "category": "dog"})
    gdf_list = tmp_path / "spair_71k_val-360.json"
    gdf_list.write_text(json.dumps(entries))
    results = tmp_path / "results"
    code = main(["run", "--backbone", "tiny-sd15", "--task", "spair/gdf-conv", "--select", "us6",
                 "--data-root", str(root), "--resolution", "64", "--results", str(results), "--no-progress",
                 "--no-figures", "--option", "max_steps=10", "--option", "eval_every=3", "--option", "report=gdf",
                 "--option", f"val_pairs_file={gdf_list}", "--option", "train_limit=3"])
    assert code == 0
    assert "1 pairs of" in capsys.readouterr().err
    (record_path,) = (results / "runs").glob("*/record.json")
    record = json.loads(record_path.read_text())
    details, metrics = record["details"], record["metrics"]
    validations = details["training"]["validations"]
    assert [step for step, _, _ in validations] == [3, 6, 9]  # not the last step (GDF never validates it)
    assert metrics["pck@0.1_img"] == max(img for _, img, _ in validations)
    assert metrics["pck@0.1_bbox"] == max(bbox for _, _, bbox in validations)
    assert metrics["pairs"] == len(val) and details["val_pairs"] == len(val)
    assert details["val_pairs_unmatched"] == ["dog/2008_007494.jpg → dog/2009_004227.jpg"]
    assert details["variant"] == "report=gdf" and details["split"] == "val"
    # train_limit is a seeded sample across categories, not the first 3 pairs of one category
    assert details["train_pairs"] == 3 and len(details["train_categories"]) == 3
    leaderboard = (results / "leaderboard.md").read_text()
    assert "tiny-sd15 / up_blocks.1 [report=gdf]" in leaderboard


def test_report_gdf_needs_gdfs_list_and_no_test_filters(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DFBENCH_HOME", str(tmp_path / "home"))
    base = ["run", "--backbone", "tiny-sd15", "--task", "spair/gdf-conv", "--select", "us6", "--data-root", "mini",
            "--resolution", "64", "--results", str(tmp_path), "--no-figures", "--option", "report=gdf",
            "--option", "max_steps=10", "--option", "eval_every=3"]
    assert main(base) == 2
    assert "pass --option val_pairs_file=spair_71k_val-360.json" in capsys.readouterr().err
    assert main([*base, "--option", "val_pairs_file=x.json", "--limit", "3"]) == 2
    assert "--limit, per_category and pairs_file do not apply" in capsys.readouterr().err


@pytest.mark.slow
def test_noise_draws_are_extracted_once_into_the_cache(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DFBENCH_HOME", str(tmp_path / "home"))
    calls = []
    original = DiffusionBackbone.extract

    def counting(self, images, selection, settings=None, categories=None, progress=False):
        calls.append((len(images), settings.seed))
        return original(self, images, selection, settings, categories, progress)

    monkeypatch.setattr(DiffusionBackbone, "extract", counting)
    args = ["run", "--backbone", "tiny-sd15", "--task", "spair/gdf-conv", "--select", "us6", "--data-root", "mini",
            "--resolution", "64", "--results", str(tmp_path / "results"), "--no-progress", "--no-figures",
            "--cache-dir", str(tmp_path / "cache"), "--option", "max_steps=4", "--option", "eval_every=2",
            "--option", "noise_draws=2", "--latent-mode", "sample"]
    assert main(args) == 0
    seeds = {seed for _, seed in calls}
    assert seeds == {0, draw_settings(ExtractSettings(seed=0), 1).seed}
    trn_images = {key for pair in load_spair(mini_spair_root(), "trn") for key in (pair.src_key, pair.trg_key)}
    second_draw = sum(count for count, seed in calls if seed != 0)
    assert second_draw == len(trn_images)  # the extra realisation: training images only
    assert len(list((tmp_path / "cache" / "tiny-sd15").iterdir())) == 2  # one cache config per draw
    calls.clear()
    assert main([*args, "--results", str(tmp_path / "again")]) == 0
    assert calls == []  # both realisations come from the cache
    code = main([*args[:-2], "--no-noise"])
    assert code == 2 and "every realisation is the same" in capsys.readouterr().err


def _pair(name, src_kps, trg_kps, trg_bbox, trg_size):
    from pathlib import Path

    return SpairPair(name, "cat", Path(f"{name}_src.jpg"), Path(f"{name}_trg.jpg"),
                     tuple(map(tuple, src_kps)), tuple(map(tuple, trg_kps)), (0, 0, 1, 1), trg_bbox,
                     (32, 32), trg_size, {"src_imname": f"{name}_src.jpg", "trg_imname": f"{name}_trg.jpg"})


def test_dift_nn_rejects_options(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DFBENCH_HOME", str(tmp_path / "home"))
    code = main(["run", "--backbone", "tiny-sd15", "--task", "spair", "--select", "us6", "--data-root", "mini",
                 "--resolution", "64", "--results", str(tmp_path), "--option", "max_steps=3"])
    err = capsys.readouterr().err
    assert code == 2 and "spair/dift-nn: unknown option 'max_steps'; valid options: per_category (int or none), " \
                         "pairs_file (str or none)" in err


@pytest.mark.slow
def test_a_killed_training_resumes_from_its_run_folder(tmp_path, monkeypatch, capsys):
    """Interrupted after the step-3 validation (checkpoint saved), the same command again reuses the
    unfinished run folder and finishes with exactly the uninterrupted run's losses and metrics."""
    import dfbench.tasks.spair.gdf_conv as gdf

    monkeypatch.setenv("DFBENCH_HOME", str(tmp_path / "home"))
    args = ["run", "--backbone", "tiny-sd15", "--task", "spair/gdf-conv", "--select", "us6", "--data-root", "mini",
            "--resolution", "64", "--no-progress", "--no-figures", "--option", "max_steps=9",
            "--option", "eval_every=3", "--latent-mode", "sample", "--option", "noise_draws=2"]
    assert main([*args, "--results", str(tmp_path / "whole")]) == 0
    (whole,) = (tmp_path / "whole" / "runs").glob("*/record.json")
    whole = json.loads(whole.read_text())

    original, calls = gdf.symmetric_clip_loss, []

    def killed_at_step_5(*arguments):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return original(*arguments)

    monkeypatch.setattr(gdf, "symmetric_clip_loss", killed_at_step_5)
    results = tmp_path / "killed"
    assert main([*args, "--results", str(results)]) == 130
    (folder,) = (results / "runs").iterdir()
    assert (folder / "checkpoint.json").is_file() and not (folder / "record.json").exists()
    assert [path.name for path in folder.glob("checkpoint-*.safetensors")] == ["checkpoint-3.safetensors"]
    assert not list(folder.glob("*.pt"))                                   # no pickle anywhere
    monkeypatch.setattr(gdf, "symmetric_clip_loss", original)
    capsys.readouterr()
    assert main([*args, "--results", str(results)]) == 0
    assert f"spair/gdf-conv: resumed from the checkpoint in {folder} at step 4 of 9 (validated up to step 3)" in (
        capsys.readouterr().err)
    (resumed_path,) = (results / "runs").glob("*/record.json")
    resumed = json.loads(resumed_path.read_text())
    assert resumed_path.parent == folder and resumed["details"]["training"]["resumed_at_step"] == 4
    assert resumed["details"]["training"]["loss"] == whole["details"]["training"]["loss"]
    assert resumed["details"]["training"]["validations"] == whole["details"]["training"]["validations"]
    assert resumed["metrics"] == whole["metrics"]


def test_a_pickle_in_a_run_folder_is_refused_never_unpickled(tmp_path):
    """A run folder copied from a collaborator or a CI artifact may carry a crafted checkpoint.pt; resuming
    must not unpickle it (torch.load(weights_only=False) would run the code it names)."""
    import pickle

    import dfbench.tasks.spair.gdf_conv as gdf
    from dfbench.errors import DfbenchInputError

    marker = tmp_path / "ran"

    class Crafted:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (tmp_path / "checkpoint.pt").write_bytes(pickle.dumps(Crafted()))
    with pytest.raises(DfbenchInputError, match=r"checkpoint.pt is a pickle .* does not unpickle files from a run "
                                                r"folder, since that can run code: delete"):
        gdf.load_checkpoint(tmp_path)
    assert not marker.exists()


def test_checkpoint_round_trip_is_tensors_and_json(tmp_path):
    """What save_checkpoint writes loads back equal: head, optimizer moments, random states, best head and
    predictions; a tensor file that does not match its recorded sha256 is one line."""
    import random

    import dfbench.tasks.spair.gdf_conv as gdf
    from dfbench.errors import DfbenchInputError

    head = torch.nn.Conv2d(4, 4, 3, bias=False)
    optimizer = torch.optim.AdamW(head.parameters(), lr=5e-4, weight_decay=0.01)
    head(torch.randn(1, 4, 5, 5)).sum().backward()
    optimizer.step()
    order_rng, draw_rng = random.Random(3), random.Random("3:draws")
    order_rng.random()
    predictions = [torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 4.0], [5.0, 6.0]])]
    state = {"step": 7, "head": head.state_dict(), "optimizer": optimizer.state_dict(),
             "order_rng": order_rng.getstate(), "draw_rng": draw_rng.getstate(), "epoch": [4, 1],
             "best": {"step": 7, "pck_img": 50.0, "pck_bbox": 40.0, "state": head.state_dict(),
                      "predictions": predictions},
             "history": {"loss": [0.5], "validations": [[7, 50.0, 40.0]]}}
    gdf.save_checkpoint(tmp_path, state)
    loaded = gdf.load_checkpoint(tmp_path)
    assert loaded["step"] == 7 and loaded["epoch"] == [4, 1] and loaded["history"] == state["history"]
    assert loaded["order_rng"] == order_rng.getstate() and loaded["draw_rng"] == draw_rng.getstate()
    assert torch.equal(loaded["head"]["weight"], head.weight)
    restored = torch.optim.AdamW(torch.nn.Conv2d(4, 4, 3, bias=False).parameters())
    restored.load_state_dict(loaded["optimizer"])
    for key in ("exp_avg", "exp_avg_sq", "step"):
        assert torch.equal(restored.state_dict()["state"][0][key], optimizer.state_dict()["state"][0][key])
    assert restored.param_groups[0]["lr"] == 5e-4 and restored.param_groups[0]["weight_decay"] == 0.01
    assert all(torch.equal(a, b) for a, b in zip(loaded["best"]["predictions"], predictions, strict=True))
    assert loaded["best"]["pck_bbox"] == 40.0 and torch.equal(loaded["best"]["state"]["weight"], head.weight)
    (tmp_path / "checkpoint-7.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(DfbenchInputError, match="does not match its sha256"):
        gdf.load_checkpoint(tmp_path)
