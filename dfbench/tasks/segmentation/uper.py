"""Protocol ``gdf-uper`` (v1) of ``ade20k`` / ``cityscapes``: Meng et al.'s (GDF) UPerNet setting,
run on mmsegmentation 1.2.2 and mmengine 0.10.7.

Everything follows GDF's ``segmentation/configs/{ade_sd15,city_sd15}.py`` and their ``_base_`` files:

- model (``ade_sd15.py:8-45``): ``SegDataPreProcessor`` scaling images to [-1, 1] (mean = std =
  127.5, BGR → RGB, image padding 0, *label padding 1*: GDF's ``seg_pad_val=1``, option
  ``seg_pad_val``; mmseg's own configs use 255); the frozen backbone and GDF's residual adapter
  (:mod:`dfbench.tasks.segmentation.mmseg_models`); ``UPerHead`` 512 channels, pool scales (1, 2, 3), dropout 0.1,
  CrossEntropy 1.0 + Lovász 1.0 (reduction none); auxiliary ``FCNHead`` on level 1, one conv, 512
  channels, dropout 0.1, CrossEntropy 0.4; BatchNorm in the heads (``SyncBN`` across GPUs, as
  ``_base_/models/upernet_r50.py:2``); slide inference.
- data (``_base_/datasets/{ade20k,cityscapes}.py``): ADE20K RandomResize (2048, 512) × 0.5–2.0 keep
  ratio, RandomCrop 512² (cat_max_ratio 0.75), flip 0.5, PhotoMetricDistortion, batch 2; test Resize
  (2048, 512) keep ratio, slide 512 / stride 512. Cityscapes Resize (2048, 1024) keep ratio,
  RandomCrop 1024², flip, PhotoMetricDistortion, batch 2; test Resize (2048, 1024), slide 1024 /
  stride 512. Option ``crop_size`` scales the resize scales and the slide window with the crop.
- schedule (``_base_/schedules/schedule_80k.py``): AdamW lr 1.6e-4, weight decay 1e-3, PolyLR power
  0.9, eta_min 1e-4, 80,000 iterations, validation and checkpoint every 8,000 (mmseg's ``IoUMetric``
  in the log); mmengine's ``Runner`` resumes from the run folder's last checkpoint.

The record holds the final model's scores on the evaluated split, computed from its predictions
exactly as ``IoUMetric`` computes them.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from dfbench.backbones.protocol import Backbone
from dfbench.errors import DfbenchInputError
from dfbench.options import require_at_least_one
from dfbench.settings import ExtractSettings
from dfbench.signing import is_signed
from dfbench.tasks.base import RunContext, TaskOutput
from dfbench.tasks.segmentation.dataset import SegmentationLayout, SegmentationSample, dataset_root
from dfbench.tasks.segmentation.scoring import SegmentationProtocol, image_labels, score_maps

if TYPE_CHECKING:
    from dfbench.resolve import ResolvedRun


@dataclass(frozen=True)
class GdfUperOptions:
    """Options of the ``gdf-uper`` protocol (``--option key=value``); the defaults are GDF's."""

    #: options that cannot change the numbers (recorded apart, outside the run's identity)
    RUNTIME_OPTIONS: ClassVar[tuple[str, ...]] = ("val_interval", "checkpoint_interval", "log_interval")
    #: options added after runs were recorded: in the identity only off their default (the earlier behaviour)
    ADDED_OPTIONS: ClassVar[tuple[str, ...]] = ("report",)

    iters: int = 80000
    val_interval: int = 2000              # GDF validates every 2,000 iterations (segmentation/configs/ade_sd15.py:73)
    checkpoint_interval: int = 8000
    crop_size: int | None = None          # None: the dataset's (ADE20K 512, Cityscapes 1024)
    batch_size: int = 2
    lr: float = 1.6e-4
    weight_decay: float = 1e-3
    eta_min: float = 1e-4
    head_channels: int = 512
    adapter: bool = True                  # GDF's zero-initialised residual blocks before the heads
    seg_pad_val: int = 1                  # GDF's label padding (ade_sd15.py:14); mmseg's configs use 255
    train_limit: int | None = None
    workers: int = 2
    log_interval: int = 50
    #: which model predicts: ``last`` (the trained model, the honest default) or ``best`` (the one of best validation
    #: mIoU — on the evaluated split itself: a selection on the test data, labelled so; GDF's rule is not known)
    report: str = "last"

    def validate(self, where: str) -> None:
        if self.report not in ("last", "best"):
            raise DfbenchInputError(f"{where} option report={self.report!r}: choose last or best")
        require_at_least_one(self, ("iters", "val_interval", "checkpoint_interval", "batch_size", "head_channels",
                                    "log_interval", "crop_size", "train_limit"), where)
        if self.workers < 0:
            raise DfbenchInputError(f"{where} option workers={self.workers}: must be ≥ 0")
        if self.lr <= 0 or self.eta_min < 0:
            raise DfbenchInputError(f"{where} options lr={self.lr}, eta_min={self.eta_min}: need lr > 0, eta_min ≥ 0")
        if not 0 <= self.seg_pad_val <= 255:
            raise DfbenchInputError(f"{where} option seg_pad_val={self.seg_pad_val}: a label value 0…255")


@dataclass(frozen=True)
class GdfRecipe:
    """GDF's data recipe of one dataset: resize scale (long, short), random ratio range, crop, stride."""

    scale: tuple[int, int]
    ratio_range: tuple[float, float] | None
    crop: int
    stride: int

    def scaled_to(self, crop: int | None) -> GdfRecipe:
        """The same recipe with every length scaled by ``crop / self.crop``."""
        if crop is None or crop == self.crop:
            return self
        factor = crop / self.crop
        return GdfRecipe((round(self.scale[0] * factor), round(self.scale[1] * factor)), self.ratio_range, crop,
                         max(1, round(self.stride * factor)))


GDF_RECIPES = {
    "ade20k": GdfRecipe((2048, 512), (0.5, 2.0), 512, 512),       # _base_/datasets/ade20k.py:4-25, ade_sd15.py:45
    "cityscapes": GdfRecipe((2048, 1024), None, 1024, 512),       # _base_/datasets/cityscapes.py:4-26, city_sd15.py:45
}


def training_pipeline(layout: SegmentationLayout, recipe: GdfRecipe) -> list[dict]:
    """mmseg transforms of GDF's training pipeline."""
    resize = (dict(type="RandomResize", scale=recipe.scale, ratio_range=recipe.ratio_range, keep_ratio=True)
              if recipe.ratio_range else dict(type="Resize", scale=recipe.scale, keep_ratio=True))
    return [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", reduce_zero_label=layout.reduce_zero_label),
            resize, dict(type="RandomCrop", crop_size=(recipe.crop, recipe.crop), cat_max_ratio=0.75),
            dict(type="RandomFlip", prob=0.5), dict(type="PhotoMetricDistortion"), dict(type="PackSegInputs")]


def evaluation_pipeline(layout: SegmentationLayout, recipe: GdfRecipe) -> list[dict]:
    """mmseg transforms of GDF's test pipeline (labels loaded after the resize: scored at full size)."""
    return [dict(type="LoadImageFromFile"), dict(type="Resize", scale=recipe.scale, keep_ratio=True),
            dict(type="LoadAnnotations", reduce_zero_label=layout.reduce_zero_label), dict(type="PackSegInputs")]


def mmseg_dataset(layout: SegmentationLayout, data_root: Path, split: str, samples: list[SegmentationSample],
                  pipeline: list[dict]) -> Any:
    """mmseg's own dataset class over the layout, cut to ``samples`` (already validated by dfbench)."""
    from mmseg.datasets import ADE20KDataset, CityscapesDataset

    root = dataset_root(layout, data_root)
    dataset_class = ADE20KDataset if layout.name == "ade20k" else CityscapesDataset
    folder = layout.splits[split]
    dataset = dataset_class(data_root=str(root), pipeline=pipeline, serialize_data=False,
                            data_prefix=dict(img_path=layout.images.format(split=folder),
                                             seg_map_path=layout.labels.format(split=folder)))
    wanted = {sample.image.resolve() for sample in samples}
    indices = [index for index in range(len(dataset))
               if Path(dataset.get_data_info(index)["img_path"]).resolve() in wanted]
    if len(indices) != len(samples):
        raise DfbenchInputError(f"{layout.name} {split}: mmseg lists {len(indices)} of the {len(samples)} images "
                                f"dfbench found under {root}; check file names against the layout")
    return dataset.get_subset(indices)


def build_segmentor(backbone: Backbone, selection: list[str], settings: ExtractSettings,
                    shapes: dict[str, tuple[int, int, int]], num_classes: int, options: GdfUperOptions,
                    recipe: GdfRecipe, sync_bn: bool) -> Any:
    """mmseg's ``EncoderDecoder`` with the frozen backbone, GDF's adapter and GDF's heads."""
    from mmengine.config import ConfigDict
    from mmengine.registry import DefaultScope

    from dfbench.tasks.segmentation.mmseg_models import MODELS, feature_levels  # mmseg: only for gdf-uper

    levels = feature_levels(shapes)
    channels = [[shapes[name][0] for name in level] for level in levels]
    level_channels = [sum(level) for level in channels]
    auxiliary = min(1, len(levels) - 1)   # GDF: level 1; a one-level selection has only level 0
    norm = dict(type="SyncBN" if sync_bn else "BN", requires_grad=True)
    crop = (recipe.crop, recipe.crop)
    config = ConfigDict(
        type="EncoderDecoder",
        data_preprocessor=dict(type="SegDataPreProcessor", mean=[127.5] * 3, std=[127.5] * 3, bgr_to_rgb=True,
                               pad_val=0, seg_pad_val=options.seg_pad_val, size=crop),
        backbone=dict(type="FrozenFeatureBackbone", backbone=backbone, selection=selection, settings=settings,
                      levels=levels),
        neck=adapter_config(levels, channels) if options.adapter else None,
        decode_head=dict(
            type="UPerHead", in_channels=level_channels, in_index=list(range(len(levels))), pool_scales=(1, 2, 3),
            channels=options.head_channels, dropout_ratio=0.1, num_classes=num_classes, norm_cfg=norm,
            align_corners=False,
            loss_decode=[dict(type="CrossEntropyLoss", loss_name="loss_ce", use_sigmoid=False, loss_weight=1.0),
                         dict(type="LovaszLoss", reduction="none", loss_weight=1.0)]),
        auxiliary_head=dict(
            type="FCNHead", in_channels=level_channels[auxiliary], in_index=auxiliary, channels=options.head_channels,
            num_convs=1, concat_input=False, dropout_ratio=0.1, num_classes=num_classes, norm_cfg=norm,
            align_corners=False,
            loss_decode=dict(type="CrossEntropyLoss", loss_name="loss_ce_aux", use_sigmoid=False, loss_weight=0.4)),
        train_cfg=dict(),
        test_cfg=dict(mode="slide", crop_size=crop, stride=(recipe.stride, recipe.stride)),
    )
    with DefaultScope.overwrite_default_scope("mmseg"):
        return MODELS.build(config)


def adapter_config(levels: list[list[str]], channels: list[list[int]]) -> dict[str, Any]:
    """GDF's adapter: its multi-model one when the activations come from several sources of an amalgamation."""
    sources = [[name.partition(":")[0] if ":" in name else "" for name in level] for level in levels]
    if len({source for level in sources for source in level}) > 1:
        return dict(type="GdfAmalgamatedAdapter", channels=channels, sources=sources)
    return dict(type="GdfResidualAdapter", channels=channels)


def activation_shapes(backbone: Backbone, selection: list[str],
                      settings: ExtractSettings) -> dict[str, tuple[int, int, int]]:
    """(C, h, w) of each selected activation at the settings' resolution, from one mid-grey image."""
    resolution = settings.resolution or backbone.default_resolution
    features = backbone.extract(torch.zeros(1, 3, resolution, resolution), selection, settings)
    return {name: (int(value.shape[1]), int(value.shape[2]), int(value.shape[3])) for name, value in features.items()}


#: the prefix of this run's own checkpoints, for mmengine's CheckpointLoader (see :func:`resume_point`)
RUN_CHECKPOINT = "dfbench-run://"


def load_run_checkpoint(filename: str, map_location: Any = None) -> Any:
    """Load one of the run's own mmengine checkpoints. They pickle message-hub objects (bound methods
    among them) that torch's ``weights_only=True`` refuses, so this one loader — reached only through
    the :data:`RUN_CHECKPOINT` prefix that :func:`resume_point` puts on a checkpoint whose signature
    (:mod:`dfbench.signing`) shows this machine's dfbench wrote it — loads with an explicit
    ``weights_only=False``. Nothing else changes."""
    return torch.load(filename.removeprefix(RUN_CHECKPOINT), map_location=map_location, weights_only=False)


def resume_point(work_dir: Path) -> str | None:
    """The latest checkpoint in ``work_dir`` (mmengine's ``last_checkpoint``) as a ``RUN_CHECKPOINT``
    path for the Runner's ``load_from``, or ``None`` for a fresh start. A checkpoint without this
    machine's signature (copied in, changed, or written by another dfbench) is refused in one line:
    unpickling it could run code."""
    from mmengine.runner import CheckpointLoader, find_latest_checkpoint


    CheckpointLoader.register_scheme(RUN_CHECKPOINT, load_run_checkpoint, force=True)
    latest = find_latest_checkpoint(str(work_dir)) if work_dir.is_dir() else None
    if latest is None:
        return None
    if not is_signed(Path(latest)):
        raise DfbenchInputError(
            f"run folder {work_dir.parent}: checkpoint {latest} has no valid signature of this machine's dfbench "
            "(copied from elsewhere, changed, or left by an older dfbench); it is a pickle, which can run code, so "
            f"it is not loaded: delete {work_dir} to train from iteration 0")
    return RUN_CHECKPOINT + latest


def runner_config(context: RunContext, seed: int, options: GdfUperOptions, train_set: Any, val_set: Any,
                  distributed: bool) -> dict[str, Any]:
    """mmengine ``Runner`` arguments: GDF's schedule, hooks and loops, this run's folder and seed."""
    loader = dict(num_workers=options.workers, persistent_workers=options.workers > 0,
                  collate_fn=dict(type="pseudo_collate"))
    return dict(
        work_dir=str(context.folder / "mmseg"),
        load_from=resume_point(context.folder / "mmseg"),
        train_dataloader=dict(batch_size=options.batch_size, dataset=train_set,
                              sampler=dict(type="InfiniteSampler", shuffle=True), **loader),
        val_dataloader=dict(batch_size=1, dataset=val_set, sampler=dict(type="DefaultSampler", shuffle=False),
                            **loader),
        val_evaluator=dict(type="IoUMetric", iou_metrics=["mIoU"]),
        train_cfg=dict(type="IterBasedTrainLoop", max_iters=options.iters, val_interval=options.val_interval),
        val_cfg=dict(type="ValLoop"),
        optim_wrapper=dict(type="OptimWrapper", clip_grad=None,
                           optimizer=dict(type="AdamW", lr=options.lr, weight_decay=options.weight_decay)),
        param_scheduler=[dict(type="PolyLR", eta_min=options.eta_min, power=0.9, begin=0, end=options.iters,
                              by_epoch=False)],
        default_hooks=dict(
            timer=dict(type="IterTimerHook"),
            logger=dict(type="LoggerHook", interval=options.log_interval, log_metric_by_epoch=False),
            param_scheduler=dict(type="ParamSchedulerHook"),
            checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=options.checkpoint_interval,
                            max_keep_ckpts=2),
            sampler_seed=dict(type="DistSamplerSeedHook")),
        custom_hooks=[dict(type="SignCheckpointsHook"),
                      dict(type="ValidationRecordHook", folder=str(context.folder / "validations"))],
        log_processor=dict(by_epoch=False),
        launcher="pytorch" if distributed else "none",
        # on CPU (gloo) DDP takes no device_ids; mmengine's default passes [LOCAL_RANK], meant for GPUs
        cfg=dict(model_wrapper_cfg=dict(type="MMDistributedDataParallel", device_ids=None)
                 if distributed and not torch.cuda.is_available() else None),
        env_cfg=dict(cudnn_benchmark=False, dist_cfg=dict(backend="nccl" if torch.cuda.is_available() else "gloo")),
        randomness=dict(seed=seed),
        resume=True,
        default_scope="mmseg",
    )


@dataclass(frozen=True)
class GdfUper(SegmentationProtocol):
    """GDF's UPerNet on frozen features (mmseg + mmengine's Runner), across GPUs under torchrun."""

    def variant(self, options: Any) -> str | None:
        return "report=best" if options.report == "best" else None

    def evaluate(self, task: Any, context: RunContext, run: ResolvedRun, train: list[SegmentationSample],
                 evaluated: list[SegmentationSample]) -> TaskOutput:
        predictions, details, timings = train_and_predict(task.layout, context, run.backbone, run.selection,
                                                          run.settings, run.data_root, run.split, train, evaluated,
                                                          run.options)
        output = score_maps(task.layout, image_labels(task.layout, evaluated), predictions)
        output.selection, output.split, output.details = run.selection, run.split, details
        output.timings = {**timings, "images": float(len(evaluated))}
        return output


def train_and_predict(layout: SegmentationLayout, context: RunContext, backbone: Backbone, selection: list[str],
                      settings: ExtractSettings, data_root: Path, split: str, train: list[SegmentationSample],
                      evaluated: list[SegmentationSample], options: GdfUperOptions,
                      ) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, float]]:
    """Train GDF's UPerNet on ``train`` (resuming from the run folder) and predict ``evaluated``.

    Returns (class-id maps by stem, details, timings)."""
    from mmengine.registry import DefaultScope

    import dfbench.tasks.segmentation.mmseg_models  # noqa: F401  (registers mmseg's modules and dfbench's two)

    with DefaultScope.overwrite_default_scope("mmseg"):
        return _train_and_predict(layout, context, backbone, selection, settings, data_root, split, train, evaluated,
                                  options)


def _train_and_predict(layout: SegmentationLayout, context: RunContext, backbone: Backbone, selection: list[str],
                       settings: ExtractSettings, data_root: Path, split: str, train: list[SegmentationSample],
                       evaluated: list[SegmentationSample], options: GdfUperOptions,
                       ) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, float]]:
    from mmengine.dataset import pseudo_collate
    from mmengine.model import is_model_wrapper
    from mmengine.runner import Runner
    from tqdm.auto import tqdm

    from dfbench.tasks.segmentation.mmseg_models import read_validation_record

    started = time.perf_counter()
    recipe = GDF_RECIPES[layout.name].scaled_to(options.crop_size)
    ranks = context.ranks
    distributed = ranks.world_size > 1
    shapes = activation_shapes(backbone, selection, settings)
    model = build_segmentor(backbone, selection, settings, shapes, layout.num_classes, options, recipe,
                            sync_bn=distributed and torch.cuda.is_available())
    train_set = mmseg_dataset(layout, data_root, "train", train, training_pipeline(layout, recipe))
    val_set = mmseg_dataset(layout, data_root, split, evaluated, evaluation_pipeline(layout, recipe))
    config = runner_config(context, settings.seed, options, train_set, val_set, distributed)
    runner = Runner(model=model, **config)
    runner.train()
    iteration_times = runner.message_hub.get_scalar("train/time").data[0]   # this process's iterations
    trained = time.perf_counter()
    network = runner.model.module if is_model_wrapper(runner.model) else runner.model
    record = context.folder / "validations"
    validations, best = read_validation_record(record)
    if options.report == "best":
        if best is None:
            raise DfbenchInputError("gdf-uper report=best: no validation ran (val_interval larger than iters?)")
        from safetensors.torch import load_file

        network.load_state_dict(load_file(record / "best.safetensors", device=str(next(network.parameters()).device)))
    network.eval()
    predictions: dict[str, np.ndarray] = {}
    stems = {sample.image.resolve(): sample.stem for sample in evaluated}
    for index in tqdm(range(ranks.rank, len(val_set), ranks.world_size), desc="predict", unit="image",
                      disable=not context.progress):
        with torch.no_grad():
            (output,) = network.test_step(pseudo_collate([val_set[index]]))
        predictions[stems[Path(output.img_path).resolve()]] = output.pred_sem_seg.data[0].cpu().numpy().astype(
            np.uint8)   # class ids < 255 (at most 150 classes): a quarter of the bytes to gather
    predictions = {stem: prediction.astype(np.int64) for shard in ranks.all_gather(predictions)
                   for stem, prediction in shard.items()}
    finished = time.perf_counter()
    levels = model.backbone.levels
    details = {"train_images": len(train), "iterations": runner.iter, "levels": levels,
               "level_channels": [sum(shapes[name][0] for name in level) for level in levels],
               "crop_size": recipe.crop, "slide_stride": recipe.stride, "resize_scale": list(recipe.scale),
               "work_dir": str(context.folder / "mmseg"), "validations": validations,
               "best_validation": best, "report": options.report,
               "resumed_from": Path(config["load_from"].removeprefix(RUN_CHECKPOINT)).name if config["load_from"]
               else None}
    timings = {"train_s": trained - started, "predict_s": finished - trained,
               "s_per_iter": float(np.median(iteration_times[1:] if len(iteration_times) > 1 else iteration_times)),
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    return predictions, details, timings
