"""ade20k / cityscapes, protocol `gdf-uper`: GDF's UPerNet setting on mmseg + mmengine.

GDF = Darkbblue/generic-diffusion-feature; the expected values below are typed from its files,
cited by path and line, not read from dfbench.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from references import TextureBackbone, hand_miou

from dfbench import ExtractSettings
from dfbench.distributed import Ranks
from dfbench.errors import DfbenchInputError
from dfbench.options import parse_options
from dfbench.runner import RunSpec, run_one
from dfbench.tasks.segmentation.dataset import ADE20K, CITYSCAPES
from dfbench.tasks.segmentation.mmseg_models import FrozenFeatureBackbone, GdfResidualAdapter, feature_levels
from dfbench.tasks.segmentation.uper import (
    GDF_RECIPES,
    GdfRecipe,
    GdfUperOptions,
    build_segmentor,
    evaluation_pipeline,
    training_pipeline,
)

QUICK = {"iters": 2, "val_interval": 2, "checkpoint_interval": 2, "crop_size": 64, "workers": 0, "head_channels": 16,
         "log_interval": 1}


@pytest.fixture(autouse=True)
def mini_home(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DFBENCH_HOME", str(tmp_path_factory.getbasetemp() / "dfbench_home"))


def test_levels_group_by_spatial_size_smallest_first_in_selection_order():
    shapes = {"a": (320, 64, 64), "b": (1280, 16, 16), "c": (640, 32, 32), "d": (1280, 16, 16)}
    # GDF ade_sd15.py:59-63: [[16² maps], [32²], [64²]]
    assert feature_levels(shapes) == [["b", "d"], ["c"], ["a"]]
    # equal areas: the smaller height first (8×12 before 12×8)
    assert feature_levels({"y": (3, 12, 8), "x": (3, 8, 12), "z": (3, 4, 4)}) == [["z"], ["x"], ["y"]]


def test_frozen_backbone_is_the_resized_extraction_concatenated_per_level(tiny_sd15):
    settings = ExtractSettings(resolution=64, timestep=51, latent_mode="sample")
    selection = ["up_blocks.2", "up_blocks.1", "up_blocks.3"]
    levels = [["up_blocks.1"], ["up_blocks.2", "up_blocks.3"]]
    module = FrozenFeatureBackbone(tiny_sd15, selection, settings, levels)
    crops = torch.rand(2, 3, 96, 80, generator=torch.Generator().manual_seed(0)) * 2 - 1
    outputs = module(crops)
    # GDF diffusion_feature.py:360-364: F.interpolate(image, (img_size, img_size), mode='bilinear')
    direct = tiny_sd15.extract(F.interpolate(crops, size=(64, 64), mode="bilinear"), selection, settings)
    torch.testing.assert_close(outputs[0], direct["up_blocks.1"])
    torch.testing.assert_close(outputs[1], torch.cat([direct["up_blocks.2"], direct["up_blocks.3"]], dim=1))
    assert not any(output.requires_grad for output in outputs)
    assert list(module.parameters()) == [] and module.state_dict() == {}   # frozen, not checkpointed


def test_adapter_is_gdf_resblocks_per_activation_then_per_level():
    torch.manual_seed(0)
    adapter = GdfResidualAdapter([[3, 2], [4]]).eval()
    inputs = [torch.randn(2, 5, 4, 4), torch.randn(2, 4, 8, 8)]
    for output, given in zip(adapter(inputs), inputs, strict=True):
        torch.testing.assert_close(output, given)          # zero-initialised: the identity (GDF :35-38)
    for parameter in adapter.parameters():
        torch.nn.init.normal_(parameter)

    def resblock(block, x):   # GDF diffusion_segmentor.py:40-41: x + conv2(relu(conv1(x)))
        conv1, bn1, conv2, bn2 = block.conv1[0], block.conv1[1], block.conv2[0], block.conv2[1]
        hidden = F.relu(F.batch_norm(F.conv2d(x, conv1.weight, conv1.bias, padding=1), bn1.running_mean,
                                     bn1.running_var, bn1.weight, bn1.bias))
        return x + F.batch_norm(F.conv2d(hidden, conv2.weight, conv2.bias, padding=1), bn2.running_mean,
                                bn2.running_var, bn2.weight, bn2.bias)

    # GDF :233-246: each activation through its own block, concatenated, then the level's block
    first = resblock(adapter.per_level[0], torch.cat([resblock(adapter.per_activation[0][0], inputs[0][:, :3]),
                                                      resblock(adapter.per_activation[0][1], inputs[0][:, 3:])], 1))
    second = resblock(adapter.per_level[1], resblock(adapter.per_activation[1][0], inputs[1]))
    outputs = adapter(inputs)
    torch.testing.assert_close(outputs[0], first)
    torch.testing.assert_close(outputs[1], second)


def test_zero_initialised_blocks_learn_only_the_last_batchnorm_bias():
    """A consequence of GDF's initialisation worth knowing: with every conv and BN weight at zero the
    convolutions get zero gradients forever, so each block stays x + (learnt per-channel bias)."""
    torch.manual_seed(0)
    adapter = GdfResidualAdapter([[3]])
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(5):
        loss = adapter([torch.randn(2, 3, 4, 4)])[0].square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    block = adapter.per_level[0]
    for layer in (block.conv1[0], block.conv1[1], block.conv2[0]):
        assert not layer.weight.any() and not layer.bias.any()
    assert not block.conv2[1].weight.any() and block.conv2[1].bias.abs().min() > 0


def test_segmentor_has_gdf_heads_losses_and_preprocessing(tiny_sd15):
    settings = ExtractSettings(resolution=64)
    shapes = {"up_blocks.1": (64, 4, 4), "up_blocks.2": (64, 8, 8), "up_blocks.3": (32, 8, 8),
              "down_blocks.1": (64, 2, 2)}
    model = build_segmentor(tiny_sd15, list(shapes), settings, shapes, 150, GdfUperOptions(),
                            GDF_RECIPES["ade20k"], sync_bn=False)
    head, aux, pre = model.decode_head, model.auxiliary_head, model.data_preprocessor
    # ade_sd15.py:17-44
    assert head.__class__.__name__ == "UPerHead" and head.channels == 512 and head.num_classes == 150
    assert head.in_channels == [64, 64, 96] and head.in_index == [0, 1, 2]     # 2², 4², 8² levels
    assert [module.pool_scales for module in [head.psp_modules]] == [(1, 2, 3)]
    assert head.dropout.p == 0.1
    losses = {loss.__class__.__name__: loss for loss in head.loss_decode}
    assert set(losses) == {"CrossEntropyLoss", "LovaszLoss"}
    assert losses["CrossEntropyLoss"].loss_weight == 1.0 and not losses["CrossEntropyLoss"].use_sigmoid
    assert losses["LovaszLoss"].loss_weight == 1.0 and losses["LovaszLoss"].reduction == "none"
    assert aux.__class__.__name__ == "FCNHead" and aux.in_index == 1 and aux.in_channels == 64
    assert aux.num_convs == 1 and aux.channels == 512 and aux.dropout.p == 0.1
    assert aux.loss_decode.loss_weight == 0.4 and aux.loss_decode.loss_name == "loss_ce_aux"
    # ade_sd15.py:8-15: [-1, 1], BGR → RGB, label padding 1
    assert pre.mean.flatten().tolist() == [127.5] * 3 and pre.std.flatten().tolist() == [127.5] * 3
    assert pre.channel_conversion and pre.pad_val == 0 and pre.seg_pad_val == 1 and pre.size == (512, 512)
    # ade_sd15.py:45: slide 512 / 512
    assert model.test_cfg.mode == "slide" and tuple(model.test_cfg.crop_size) == (512, 512)
    assert tuple(model.test_cfg.stride) == (512, 512)
    assert isinstance(model.neck, GdfResidualAdapter)
    assert sum(parameter.numel() for parameter in model.backbone.parameters()) == 0


def test_gdf_recipes_and_pipelines():
    # _base_/datasets/ade20k.py:4-25 and cityscapes.py:4-26 (the crop 1024 of :4), city_sd15.py:45
    assert GDF_RECIPES["ade20k"] == GdfRecipe((2048, 512), (0.5, 2.0), 512, 512)
    assert GDF_RECIPES["cityscapes"] == GdfRecipe((2048, 1024), None, 1024, 512)
    assert GDF_RECIPES["cityscapes"].scaled_to(256) == GdfRecipe((512, 256), None, 256, 128)
    assert GDF_RECIPES["ade20k"].scaled_to(None) is GDF_RECIPES["ade20k"]
    ade = training_pipeline(ADE20K, GDF_RECIPES["ade20k"])
    assert [step["type"] for step in ade] == ["LoadImageFromFile", "LoadAnnotations", "RandomResize", "RandomCrop",
                                              "RandomFlip", "PhotoMetricDistortion", "PackSegInputs"]
    assert ade[1]["reduce_zero_label"] and ade[3]["cat_max_ratio"] == 0.75 and ade[4]["prob"] == 0.5
    assert ade[2] == dict(type="RandomResize", scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True)
    city = training_pipeline(CITYSCAPES, GDF_RECIPES["cityscapes"])
    assert city[2] == dict(type="Resize", scale=(2048, 1024), keep_ratio=True) and not city[1]["reduce_zero_label"]
    assert city[3]["crop_size"] == (1024, 1024)
    # labels loaded after the resize: scored at the original size (ade20k.py:18-25)
    assert [step["type"] for step in evaluation_pipeline(CITYSCAPES, GDF_RECIPES["cityscapes"])] == [
        "LoadImageFromFile", "Resize", "LoadAnnotations", "PackSegInputs"]


def test_schedule_defaults_are_gdf_and_bad_options_are_one_line():
    # _base_/schedules/schedule_80k.py:3-16; the model configs set train_cfg's val_interval to 2000 (ade_sd15.py:73)
    options = GdfUperOptions()
    assert (options.iters, options.val_interval, options.checkpoint_interval) == (80000, 2000, 8000)
    assert (options.lr, options.weight_decay, options.eta_min, options.batch_size) == (1.6e-4, 1e-3, 1e-4, 2)
    for bad, message in (({"crop_size": 0}, "crop_size=0: must be ≥ 1"), ({"lr": 0}, "lr=0.0, eta_min"),
                         ({"seg_pad_val": 300}, "seg_pad_val=300: a label value"),
                         ({"iters": "many"}, "iters")):
        with pytest.raises(DfbenchInputError, match=message):
            parse_options(GdfUperOptions, bad, "ade20k/gdf-uper")


def test_one_process_protocols_refuse_torchrun():
    spec = RunSpec(backbone="tiny-sd15", task="ade20k/linear", selection=["up_blocks.1"], data_root="mini")
    with pytest.raises(DfbenchInputError, match="ade20k/linear runs in one process; launch it without torchrun"):
        run_one(spec, "unused", ranks=Ranks(0, 2))


def _scalars(run_folder: Path) -> list[dict]:
    (log,) = run_folder.glob("mmseg/*/vis_data/scalars.json")
    return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("layout", [ADE20K, CITYSCAPES], ids=["ade20k", "cityscapes"])
def test_trains_on_the_mini_set_and_miou_is_iou_metric_and_a_hand_confusion_matrix(layout, tmp_path):
    from dfbench.registry import TASKS

    spec = RunSpec(backbone="tiny-sd15", task=f"{layout.name}/gdf-uper", data_root="mini", save_predictions=True,
                   selection=["up_blocks.1", "up_blocks.2", "up_blocks.3"], settings={"resolution": 64},
                   options={**QUICK, "iters": 3, "val_interval": 3})
    result, record = run_one(spec, tmp_path, progress=False, figures=False)
    assert result.details["iterations"] == 3 and result.details["levels"] == [["up_blocks.1"],
                                                                              ["up_blocks.2", "up_blocks.3"]]
    mini = TASKS.get(layout.name)().mini_root()
    assert result.metrics["mIoU"] == pytest.approx(hand_miou(layout, mini, record.parent / "predictions"), abs=1e-9)
    # mmengine's own validation at the last iteration: mmseg's IoUMetric (rounded to 2 decimals there)
    (validation,) = [entry for entry in _scalars(record.parent) if "mIoU" in entry]
    for key in ("mIoU", "mAcc", "aAcc"):
        assert result.metrics[key] == pytest.approx(validation[key], abs=0.006)
    assert result.metrics["images"] == 3 and result.timings["s_per_iter"] > 0


@pytest.mark.slow
def test_texture_features_learn_the_mini_set(tmp_path):
    spec = RunSpec(backbone="texture", task="cityscapes/gdf-uper", selection=["texture"], data_root="mini",
                   settings={"resolution": 64},
                   options={**QUICK, "iters": 60, "val_interval": 60, "checkpoint_interval": 60, "lr": 1e-3,
                            "batch_size": 4, "head_channels": 32})
    result, _ = run_one(spec, tmp_path, progress=False, figures=False, backbone=TextureBackbone())
    assert result.metrics["mIoU"] > 40   # four textures; chance-level would be far below


@pytest.mark.slow
def test_resume_continues_at_the_checkpointed_iteration(tmp_path):
    spec = RunSpec(backbone="tiny-sd15", task="ade20k/gdf-uper", data_root="mini", selection=["up_blocks.1"],
                   settings={"resolution": 64}, options={**QUICK, "iters": 4})
    result, record = run_one(spec, tmp_path, progress=False, figures=False)
    folder = record.parent
    assert result.details["resumed_from"] is None
    # a run killed after iteration 2: its record and later checkpoints absent, last_checkpoint at iter 2
    record.unlink()
    (folder / "mmseg" / "iter_4.pth").unlink()
    (folder / "mmseg" / "last_checkpoint").write_text(str(folder / "mmseg" / "iter_2.pth"))
    shutil.rmtree(next(folder.glob("mmseg/2*/")))
    assert (folder / "mmseg" / "iter_2.pth.hmac").is_file()                  # signed when mmengine saved it
    resumed, again = run_one(spec, tmp_path, progress=False, figures=False)
    assert again.parent == folder and resumed.details["resumed_from"] == "iter_2.pth"
    assert resumed.details["iterations"] == 4
    assert [entry["iter"] for entry in _scalars(folder) if "loss" in entry] == [3, 4]


@pytest.mark.slow
def test_two_rank_torchrun_trains_and_rank_zero_records(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
               "-m", "dfbench", "run", "--backbone", "tiny-sd15", "--task", "ade20k/gdf-uper", "--select",
               "up_blocks.1", "up_blocks.2", "--resolution", "64", "--data-root", "mini", "--results",
               str(tmp_path), "--no-progress", "--no-figures",
               *[part for key, value in QUICK.items() for part in ("--option", f"{key}={value}")]]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    (record,) = tmp_path.glob("runs/*/record.json")
    saved = json.loads(record.read_text())
    assert saved["details"]["iterations"] == 2 and saved["metrics"]["images"] == 3
    assert len(list(tmp_path.glob("runs/*"))) == 1          # one folder, made by rank 0
    log = next(tmp_path.glob("runs/*/mmseg/*/*.log")).read_text()
    assert "Distributed training: True" in log and "GPU number: 2" in log   # mmengine's words for 2 processes


def test_adapter_size_is_gdfs_two_conv_bn_pairs_per_activation_and_per_level(tiny_sd15):
    settings = ExtractSettings(resolution=64)
    shapes = {"up_blocks.1": (64, 4, 4), "up_blocks.2": (64, 8, 8), "up_blocks.3": (32, 8, 8)}

    def trainable(adapter):
        model = build_segmentor(tiny_sd15, list(shapes), settings, shapes, 19, GdfUperOptions(adapter=adapter),
                                GDF_RECIPES["cityscapes"], sync_bn=False)
        return sum(p.numel() for p in model.parameters() if p.requires_grad)

    def block(c):   # two 3×3 convs c→c with bias (9c² + c each) and two BatchNorms (2c each)
        return 2 * (9 * c * c + c) + 2 * (2 * c)

    expected = block(64) + block(64) + block(64 + 32) + block(64) + block(32)   # per level, per activation
    assert trainable(True) - trainable(False) == expected


def test_perf_segmentation_times_a_gdf_uper_training_step(tiny_sd15):
    from dfbench.perf.segmentation import _gdf_uper_iteration_s

    row = _gdf_uper_iteration_s(tiny_sd15, "cityscapes", "gdf-ours-sd15-cityscapes", 64, 1, lambda message: None)
    assert row["crop"] == 64 and row["batch"] == 2 and row["s_per_iter"] > 0 and row["peak_rss_gib"] > 0


def test_a_checkpoint_this_machine_did_not_sign_is_never_unpickled(tmp_path, monkeypatch):
    """A run folder copied from elsewhere may carry a crafted mmengine checkpoint (a pickle): resume_point
    refuses it in one line before mmengine's loader could unpickle it; a signed one is resumed, a signed one
    changed afterwards is refused again."""
    import pickle

    from dfbench.signing import sign
    from dfbench.tasks.segmentation.uper import RUN_CHECKPOINT, resume_point

    monkeypatch.setenv("DFBENCH_HOME", str(tmp_path / "home"))
    marker = tmp_path / "ran"

    class Crafted:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    work = tmp_path / "run" / "mmseg"
    work.mkdir(parents=True)
    checkpoint = work / "iter_8000.pth"
    checkpoint.write_bytes(pickle.dumps(Crafted()))
    (work / "last_checkpoint").write_text(str(checkpoint))
    with pytest.raises(DfbenchInputError, match=r"iter_8000.pth has no valid signature of this machine's dfbench .* "
                                                r"it is not loaded: delete"):
        resume_point(work)
    assert not marker.exists()
    sign(checkpoint)
    assert resume_point(work) == RUN_CHECKPOINT + str(checkpoint)
    checkpoint.write_bytes(checkpoint.read_bytes() + b"\x00")
    with pytest.raises(DfbenchInputError, match="no valid signature"):
        resume_point(work)
    sign(checkpoint)
    monkeypatch.setenv("DFBENCH_HOME", str(tmp_path / "other-machine"))    # another machine: another key
    with pytest.raises(DfbenchInputError, match="no valid signature"):
        resume_point(work)


@pytest.mark.slow
def test_every_validation_is_recorded_and_report_best_predicts_with_the_best_one(tmp_path):
    """GDF validates every 2,000 iterations (segmentation/configs/ade_sd15.py:73): every validation's mIoU is in the
    record; report=last scores the trained model (its mIoU is the last validation's), report=best the weights of the
    best validation (its mIoU is that validation's), labelled as a variant."""
    from dfbench.tasks.segmentation.uper import GdfUperOptions

    assert GdfUperOptions().val_interval == 2000 and GdfUperOptions().report == "last"
    results = {}
    for report in ("last", "best"):
        spec = RunSpec(backbone="tiny-sd15", task="ade20k/gdf-uper", data_root="mini", selection=["up_blocks.1"],
                       settings={"resolution": 64},
                       options={**QUICK, "iters": 6, "val_interval": 2, "checkpoint_interval": 6, "lr": 1e-2,
                                "report": report})
        results[report], _ = run_one(spec, tmp_path / report, progress=False, figures=False)
    validations = results["last"].details["validations"]
    assert [iteration for iteration, _ in validations] == [2, 4, 6]
    assert results["last"].metrics["mIoU"] == pytest.approx(validations[-1][1], abs=0.006)
    own = results["best"].details["validations"]
    best = max(own, key=lambda entry: entry[1])                  # the first of equal ones
    assert results["best"].details["best_validation"] == {"iteration": best[0], "mIoU": best[1]}
    assert results["best"].metrics["mIoU"] == pytest.approx(best[1], abs=0.006)
    assert results["best"].details["variant"] == "report=best" and "variant" not in results["last"].details


def test_report_joins_the_identity_only_off_its_default():
    """report was added after gdf-uper runs were recorded: at its default (last, the earlier behaviour) it stays out
    of the record's options, so those runs keep their identity; report=best is in the options and the variant."""
    from dfbench.registry import TASKS
    from dfbench.resolve import option_details
    from dfbench.tasks.segmentation.uper import GdfUperOptions

    protocol = TASKS.get("ade20k")().protocol("gdf-uper")
    assert "report" not in option_details(protocol, GdfUperOptions())["options"]
    best = option_details(protocol, GdfUperOptions(report="best"))
    assert best["options"]["report"] == "best" and best["options_changed"] == {"report": "best"}
