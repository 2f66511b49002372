"""SPair-71k's protocols, each with its own ``run`` and ``score``: ``spair/dift-nn`` and ``spair/patch-nn``
(zero-shot, :mod:`dfbench.tasks.spair.matching`) and ``spair/gdf-conv`` (trained, :mod:`dfbench.tasks.spair.gdf_conv`);
see :mod:`dfbench.tasks.spair.task` for what each measures."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dfbench.errors import DfbenchInputError
from dfbench.features import ImageFeatures, image_features
from dfbench.tasks.base import Protocol, RunContext, TaskOutput
from dfbench.tasks.spair import gdf_conv as gdf
from dfbench.tasks.spair.dataset import SpairPair, check_image_sizes, load_spair, read_pair_list
from dfbench.tasks.spair.gdf_conv import GdfConvOptions, SpairSubsetOptions
from dfbench.tasks.spair.matching import (
    descriptor_keeper,
    keep_half,
    match_pairs,
    match_patches,
    pair_combiner,
    pair_images,
)
from dfbench.tasks.spair.scoring import (
    PREDICTIONS_FILE,
    PRIMARY,
    PairPrediction,
    checked_points,
    load_predictions,
    score_predictions,
)

if TYPE_CHECKING:
    from dfbench.resolve import ResolvedRun


@dataclass(frozen=True)
class PatchNnOptions(SpairSubsetOptions):
    """``spair/patch-nn``'s options: the subset ones, and ``cell_offset``, where a matched cell's point lies
    (input pixels from the cell's centre): -0.5 in Tale of Two Features (``pck_spair_pascal.py:377``), 0 in
    GeoAware-SC / CleanDIFT's evaluation (``utils/utils_correspondence.py:376``, ``i·stride + stride // 2``)."""

    cell_offset: float = -0.5


def evaluated_pairs(data_root: str | Path, split: str, limit: int | None, options: Any, seed: int) -> list[SpairPair]:
    """The pairs a run scores: ``split`` with the subset options and ``limit`` applied (never empty)."""
    pairs = load_spair(data_root, split, limit, options.per_category, pairs_file=options.pairs_file, seed=seed)
    if not pairs:
        raise DfbenchInputError(f"SPair {split}: no pairs left after the filters")
    return pairs


def score_saved(run: ResolvedRun, folder: Path, inside: bool) -> TaskOutput:
    """Score ``folder/predictions.json`` on the run's pairs (``inside``: every point must lie in its image)."""
    pairs = evaluated_pairs(run.data_root, run.split, run.limit, run.options, run.seed)
    table = load_predictions(Path(folder))
    missing = [pair.pair_id for pair in pairs if pair.pair_id not in table]
    if missing:
        raise DfbenchInputError(f"predictions {Path(folder) / PREDICTIONS_FILE}: no prediction for "
                                f"{len(missing)} of {len(pairs)} pairs of SPair {run.split} (first: {missing[0]})")
    predictions = [PairPrediction(pair, checked_points(table[pair.pair_id], pair, folder, inside)) for pair in pairs]
    metrics, categories = score_predictions(predictions)
    return TaskOutput(metrics, categories, predictions, split=run.split)


@dataclass(frozen=True)
class DiftNn(Protocol):
    """DIFT's zero-shot nearest neighbour on features upsampled to the images' sizes (the crop of the content)."""

    def run(self, task: Any, context: RunContext, run: ResolvedRun) -> TaskOutput:
        started = time.perf_counter()
        backbone, settings = run.backbone, run.settings
        pairs = evaluated_pairs(run.data_root, run.split, run.limit, run.options, run.seed)
        check_image_sizes(pairs)
        found = image_features(backbone, pair_images(pairs), run.selection, settings, context.cache, context.progress,
                               keep=descriptor_keeper(backbone), crop=self.crops)
        extracted = time.perf_counter()
        predictions = self.predict(pairs, found, run, context)
        metrics, categories = score_predictions(predictions)
        return TaskOutput(metrics, categories, predictions, selection=found.selection, split=run.split,
                          timings={"extract_s": extracted - started, "match_s": time.perf_counter() - extracted,
                                   "images": float(len(found.sizes))})

    #: the features are cropped to the image's content before matching (DIFT), not taken on the whole input
    crops = True

    def predict(self, pairs: list[SpairPair], found: ImageFeatures, run: ResolvedRun,
                context: RunContext) -> list[PairPrediction]:
        return match_pairs(pairs, found.features, found.sizes, context.progress, device=run.backbone.device,
                           combine_pair=pair_combiner(run.backbone))

    def score(self, task: Any, run: ResolvedRun, folder: Path) -> TaskOutput:
        return score_saved(run, folder, inside=True)


@dataclass(frozen=True)
class PatchNn(DiftNn):
    """Tale of Two Features' zero-shot nearest patch on the whole (letterboxed) grid."""

    crops = False

    def predict(self, pairs: list[SpairPair], found: ImageFeatures, run: ResolvedRun,
                context: RunContext) -> list[PairPrediction]:
        return match_patches(pairs, found, run.settings, context.progress, run.backbone.device,
                             pair_combiner(run.backbone), run.options.cell_offset)

    def score(self, task: Any, run: ResolvedRun, folder: Path) -> TaskOutput:
        return score_saved(run, folder, inside=False)      # Tale's nearest patch may lie in the letterbox


@dataclass(frozen=True)
class GdfConv(Protocol):
    """Meng et al.'s trained 3×3-conv readout: extract, train, then report on the split (``report=select``) or
    GDF's way (``report=gdf``: the best validations on its list, the split ``val``)."""

    def split(self, options: Any, requested: str) -> str:
        return "val" if options.report == "gdf" else requested

    def variant(self, options: Any) -> str | None:
        return "report=gdf" if options.report == "gdf" else None

    def run(self, task: Any, context: RunContext, run: ResolvedRun) -> TaskOutput:
        started = time.perf_counter()
        backbone, settings, options = run.backbone, run.settings, run.options
        if options.report == "gdf":
            if run.limit or options.per_category or options.pairs_file:
                raise DfbenchInputError("spair/gdf-conv report=gdf reports GDF's validation list "
                                        "(val_pairs_file); --limit, per_category and pairs_file do not apply "
                                        "(use --option train_limit=N / max_steps=N for a short run)")
            pairs: list[SpairPair] = []
        else:
            pairs = evaluated_pairs(run.data_root, run.split, run.limit, options, run.seed)
        if options.noise_draws > 1 and not settings.add_noise and settings.latent_mode == "mode":
            raise DfbenchInputError(f"spair/gdf-conv noise_draws={options.noise_draws}: these settings draw no "
                                    "noise (no noise, posterior mean), so every realisation is the same; use "
                                    "noise_draws=1, or --latent-mode sample / noise on")
        train = load_spair(run.data_root, "trn", options.train_limit, seed=settings.seed)
        val, unmatched = validation_pairs(run.data_root, options, context.log)
        check_image_sizes([*pairs, *train, *val])
        draws: list[dict[str, Any]] = []
        found = ImageFeatures()
        for draw in range(options.noise_draws):  # draw 0: every image; further draws: training images only
            images = pair_images([*pairs, *train, *val] if draw == 0 else train)
            found_draw = image_features(backbone, images, run.selection, gdf.draw_settings(settings, draw),
                                        context.cache, context.progress, keep=keep_half)
            draws.append(found_draw.features)
            found.sizes.update(found_draw.sizes)
            found.selection = found_draw.selection
        extracted = time.perf_counter()
        best, history = gdf.train(train, val, draws, options, settings.seed, backbone.device, context.progress,
                                  checkpoint=context.folder, announce=context.log)
        details: dict[str, Any] = {"training": history, "train_pairs": len(train),
                                   "train_categories": sorted({p.category for p in train}),
                                   "val_pairs": len(val), "val_pairs_unmatched": unmatched}
        if options.report == "gdf":
            predictions = [PairPrediction(pair, points) for pair, points in zip(val, best["predictions"], strict=True)]
            _, categories = score_predictions(predictions)
            metrics = {**gdf.gdf_report(history["validations"]), "pairs": float(len(val)),
                       "keypoints": float(sum(len(pair.trg_kps) for pair in val))}
            details["leaderboard_metrics"] = [PRIMARY, "pck@0.1_img"]
        else:
            out_channels, in_channels = best["state"]["conv.weight"].shape[:2]
            head = gdf.ConvReadout(in_channels, out_channels).to(backbone.device)
            head.load_state_dict(best["state"])
            predicted = gdf.predict(head, pairs, draws[0], backbone.device, context.progress)
            predictions = [PairPrediction(pair, points) for pair, points in zip(pairs, predicted, strict=True)]
            metrics, categories = score_predictions(predictions)
            history.update({"best_step": best["step"], "best_val_pck@0.1_bbox": best["pck_bbox"]})
        return TaskOutput(metrics, categories, predictions, details, selection=found.selection, split=run.split,
                          timings={"extract_s": extracted - started, "match_s": time.perf_counter() - extracted,
                                   "images": float(len(found.sizes))})

    def score(self, task: Any, run: ResolvedRun, folder: Path) -> TaskOutput:
        return score_saved(run, folder, inside=True)


def validation_pairs(data_root: str | Path, options: GdfConvOptions,
                      log: Callable[[str], None]) -> tuple[list[SpairPair], list[str]]:
    """``val``, or the pairs of ``val_pairs_file`` in it (ids or GDF's JSON list) and those not found."""
    if options.val_pairs_file is None:
        if options.report == "gdf":
            raise DfbenchInputError(
                "spair/gdf-conv report=gdf validates on GDF's 360-pair list: pass --option "
                "val_pairs_file=spair_71k_val-360.json (correspondence/dataset/ of "
                "Darkbblue/generic-diffusion-feature)")
        return load_spair(data_root, "val"), []
    val, unmatched = read_pair_list(data_root, "val", options.val_pairs_file)
    if unmatched:
        log(f"spair/gdf-conv: {len(unmatched)} pairs of {options.val_pairs_file} not found in SPair val, "
            f"left out: {'; '.join(unmatched[:5])}{' …' if len(unmatched) > 5 else ''}")
    if not val:
        raise DfbenchInputError(f"spair/gdf-conv val_pairs_file {options.val_pairs_file}: none of its "
                                f"{len(unmatched)} pairs is in SPair val ({data_root})")
    return val, unmatched

