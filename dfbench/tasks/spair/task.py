"""SPair-71k semantic correspondence: protocols ``spair/dift-nn`` (v1), ``spair/patch-nn`` (v1) and
``spair/gdf-conv`` (v1, see :mod:`dfbench.tasks.spair.gdf_conv`).

Each image's features are extracted once (not once per pair), with the prompt filled by the
image's category. For every pair, each source keypoint is matched to the target pixel of highest
cosine similarity between the features bilinearly upsampled to the images' original sizes
(:mod:`dfbench.heads.nn_matcher`). A prediction is correct when its distance to the true target
keypoint is ≤ α·max(bbox w, h) of the target object (``bbox``) or ≤ α·max(W, H) of the target
image (``img``), in original pixels.

Reported (in percent): PCK@{0.05, 0.1, 0.15} × {bbox, img}, pooled over all keypoints (primary:
``pck@0.1_bbox``), averaged per image pair (``…_per_image``), per category, and the mean over
categories; and ``aepe``, the average end-point error (px, lower is better) over all keypoints — a
continuous diagnostic that moves with any change of the predictions (the CI gate uses it).
With several activations selected, each is resized to the largest map, L2-normalised
per location, and concatenated along channels; a single activation is used as it is (DIFT). A backbone
that defines its own descriptor (``combine``: a fusion, :mod:`dfbench.backbones.fusion`) gets it
instead, and one whose descriptor depends on the pair (``pair_fitted``: Tale of Two Features' PCA fitted
on each pair's tokens) is combined pair by pair at matching time (``combine_pair``; not cached).

``spair/patch-nn`` is Tale of Two Features' matching (Junyi42/sd-dino ``pck_spair_pascal.py``): the
descriptor maps of the whole model input (the letterbox included: nothing is cropped, and a pair-fitted
PCA sees every token), a source keypoint mapped into the input as Tale maps it (``preprocess_kps_pad``,
lines 23-45: × res / max(W, H) plus the letterbox offset; ``squash``: per axis) takes the vector of the
grid cell it falls in (lines 184-187), the target cell of highest cosine wins, and the prediction is that
cell's centre less half a pixel (``(i - 1)·stride + stride + patch // 2 - 0.5``, line 377; option
``cell_offset=0``: the centre, as CleanDIFT's GeoAware-SC evaluation), mapped back to the original
pixels. It may lie in the letterbox, as in Tale. Scored like dift-nn.

Saved predictions (``run --save-predictions``, ``dfbench score``): ``predictions.json`` maps each
pair's annotation file stem (``000001-2008_006481-2008_007698:aeroplane``) to its predicted target
keypoints ``[[x, y], …]`` in original target-image pixels, in the order of the source keypoints.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from dfbench.atomic import atomic_write_text
from dfbench.backbones.protocol import Backbone, DescriptorBackbone, PairFittedBackbone
from dfbench.errors import DfbenchInputError
from dfbench.features import ImageFeatures, combine_activations, image_features
from dfbench.heads.nn_matcher import match_patch_grid, match_points, upsampled_norm
from dfbench.tasks.base import (
    MetricSpec,
    ProtocolSpec,
    RunContext,
    Task,
    TaskOutput,
    bootstrap_stderr,
    stderr_spec,
)
from dfbench.tasks.spair.dataset import (
    DOWNLOAD_HINT,
    SpairPair,
    check_image_sizes,
    load_spair,
    read_pair_list,
    spair_images,
)
from dfbench.tasks.spair.gdf_conv import GdfConvOptions, SpairSubsetOptions
from dfbench.tasks.spair.pck import bbox_reference, correct_keypoints, image_reference

ALPHAS = (0.05, 0.1, 0.15)
PRIMARY = "pck@0.1_bbox"
PREDICTIONS_FILE = "predictions.json"


@dataclass(frozen=True)
class PatchNnOptions(SpairSubsetOptions):
    """``spair/patch-nn``'s options: the subset ones, and ``cell_offset``, where a matched cell's point lies
    (input pixels from the cell's centre): -0.5 in Tale of Two Features (``pck_spair_pascal.py:377``), 0 in
    GeoAware-SC / CleanDIFT's evaluation (``utils/utils_correspondence.py:376``, ``i·stride + stride // 2``)."""

    cell_offset: float = -0.5


def _metric_specs() -> dict[str, MetricSpec]:
    specs = {}
    for alpha in ALPHAS:
        for kind in ("bbox", "img"):
            for suffix in ("", "_per_image", "_category_mean"):
                key = f"pck@{alpha:g}_{kind}{suffix}"
                specs[key] = MetricSpec(higher_is_better=True, primary=key == PRIMARY, unit="%")
    specs["aepe"] = MetricSpec(higher_is_better=False, primary=False, unit="px")
    specs[f"{PRIMARY}_stderr"] = stderr_spec(specs[PRIMARY])
    specs.update({"pairs": MetricSpec(unit="pairs"), "keypoints": MetricSpec(unit="keypoints"),
                  "best_step_img": MetricSpec(unit="step"), "best_step_bbox": MetricSpec(unit="step")})
    return specs


@dataclass
class PairPrediction:
    """Predicted target keypoints of one pair, in original pixels."""

    pair: SpairPair
    predicted: torch.Tensor  # K×2 (x, y)


def score_predictions(predictions: Sequence[PairPrediction], alphas: Sequence[float] = ALPHAS
                      ) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """PCK metrics (percent): pooled per keypoint, per image pair, per category, category mean."""
    pooled: dict[str, list[torch.Tensor]] = defaultdict(list)
    per_pair: dict[str, list[float]] = defaultdict(list)
    per_category: dict[str, dict[str, list[torch.Tensor]]] = defaultdict(lambda: defaultdict(list))
    errors = []
    for prediction in predictions:
        pair = prediction.pair
        truth = torch.tensor(pair.trg_kps)
        errors.append((prediction.predicted.double() - truth.double()).norm(dim=1))
        references = {"bbox": bbox_reference(pair.trg_bbox), "img": image_reference(pair.trg_size)}
        for alpha in alphas:
            for kind, reference in references.items():
                key = f"pck@{alpha:g}_{kind}"
                correct = correct_keypoints(prediction.predicted, truth, reference, alpha)
                pooled[key].append(correct)
                per_pair[key].append(correct.double().mean().item())
                per_category[pair.category][key].append(correct)
    metrics: dict[str, float] = {}
    for key, flags in pooled.items():
        metrics[key] = 100 * torch.cat(flags).double().mean().item()
        metrics[f"{key}_per_image"] = 100 * sum(per_pair[key]) / len(per_pair[key])
    categories = {
        category: {key: 100 * torch.cat(flags).double().mean().item() for key, flags in table.items()}
        for category, table in sorted(per_category.items())
    }
    for key in pooled:
        metrics[f"{key}_category_mean"] = sum(c[key] for c in categories.values()) / len(categories)
    metrics["aepe"] = torch.cat(errors).mean().item() if errors else float("nan")
    if PRIMARY in pooled:   # resampling pairs: the pooled PCK of each resample
        hits = np.array([int(flags.sum()) for flags in pooled[PRIMARY]])
        sizes = np.array([len(flags) for flags in pooled[PRIMARY]])
        metrics[f"{PRIMARY}_stderr"] = bootstrap_stderr(
            len(hits), lambda chosen: 100 * hits[chosen].sum() / max(sizes[chosen].sum(), 1))
    metrics["pairs"] = float(len(predictions))
    metrics["keypoints"] = float(sum(len(p.pair.trg_kps) for p in predictions))
    return metrics, categories


def pair_images(pairs: Sequence[SpairPair]) -> dict[str, tuple[Path, str]]:
    """The distinct images of ``pairs``: {``<category>/<name>``: (path, category)}."""
    images: dict[str, tuple[Path, str]] = {}
    for pair in pairs:
        images.setdefault(pair.src_key, (pair.src_image, pair.category))
        images.setdefault(pair.trg_key, (pair.trg_image, pair.category))
    return images


def descriptor_keeper(backbone: Backbone) -> Callable[[dict[str, torch.Tensor]], Any]:
    """What dift-nn and patch-nn keep of one image: one float32 C×h×w map on the CPU, the backbone's own
    descriptor (a :class:`DescriptorBackbone`'s ``combine``) or else
    :func:`~dfbench.features.combine_activations`'s; the activations themselves (float16) when the descriptor
    is fitted per pair."""
    if pair_combiner(backbone) is not None:
        return keep_half
    combine = backbone.combine if isinstance(backbone, DescriptorBackbone) else combine_activations
    return lambda activations: combine({name: value[None] for name, value in activations.items()})[0].cpu()


def pair_combiner(backbone: Backbone) -> Callable[[dict, dict], tuple[torch.Tensor, torch.Tensor]] | None:
    """``combine_pair`` of a backbone whose descriptor is fitted on each pair with its current options, else
    None."""
    if isinstance(backbone, PairFittedBackbone) and backbone.pair_fitted:
        return backbone.combine_pair
    return None


def keep_half(activations: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One image's activations as float16 CPU copies (half the memory; gdf-conv resizes them itself)."""
    return {name: value.to("cpu", torch.float16) for name, value in activations.items()}


class SpairTask(Task):
    """SPair-71k semantic correspondence (18 categories, 12,234 test pairs): PCK@α of transferred keypoints."""

    name = "spair"
    download_hint = DOWNLOAD_HINT
    sweep_protocol = "dift-nn"
    protocols = {
        "dift-nn": ProtocolSpec("dift-nn", 1, SpairSubsetOptions, "DIFT's zero-shot nearest neighbour, PCK"),
        "patch-nn": ProtocolSpec("patch-nn", 1, PatchNnOptions,
                                 "Tale of Two Features' zero-shot nearest patch on the whole (letterboxed) grid"),
        "gdf-conv": ProtocolSpec("gdf-conv", 1, GdfConvOptions, "Meng et al.'s trained 3×3-conv readout"),
    }
    default_protocol = "dift-nn"
    metrics = _metric_specs()
    leaderboard_metrics = (PRIMARY, "pck@0.1_img", "pck@0.1_bbox_per_image")

    def mini_root(self) -> Path:
        from dfbench.tasks.spair.mini import mini_spair_root

        return mini_spair_root()

    def split_images(self, data_root: str | Path, split: str) -> list[tuple[Path, str]]:
        return spair_images(data_root, split)

    def run(self, context: RunContext, backbone: Any, selection: list[str], settings: Any, data_root: Path,
            split: str, protocol: str, options: Any) -> TaskOutput:
        started = time.perf_counter()
        if protocol == "gdf-conv":
            return self._train_gdf_conv(context, backbone, selection, settings, data_root, split, options, started)
        pairs = self.evaluated_pairs(data_root, split, context.limit, options, context.seed)
        check_image_sizes(pairs)
        found = image_features(backbone, pair_images(pairs), selection, settings, context.cache, context.progress,
                               keep=descriptor_keeper(backbone), crop=protocol == "dift-nn")
        extracted = time.perf_counter()
        combine_pair = pair_combiner(backbone)
        if protocol == "patch-nn":
            predictions = self.match_patches(pairs, found, settings, context.progress, backbone.device, combine_pair,
                                             options.cell_offset)
        else:
            predictions = self.match(pairs, found.features, found.sizes, context.progress, device=backbone.device,
                                     combine_pair=combine_pair)
        metrics, categories = score_predictions(predictions)
        return TaskOutput(metrics, categories, predictions, selection=found.selection, split=split,
                          timings={"extract_s": extracted - started, "match_s": time.perf_counter() - extracted,
                                   "images": float(len(found.sizes))})

    @staticmethod
    def evaluated_pairs(data_root: str | Path, split: str, limit: int | None, options: Any,
                        seed: int) -> list[SpairPair]:
        """The pairs a run scores: ``split`` with the subset options and ``limit`` applied (never empty)."""
        pairs = load_spair(data_root, split, limit, options.per_category, pairs_file=options.pairs_file, seed=seed)
        if not pairs:
            raise DfbenchInputError(f"SPair {split}: no pairs left after the filters")
        return pairs

    def _train_gdf_conv(self, context: RunContext, backbone: Any, selection: list[str], settings: Any,
                        data_root: Path, split: str, options: GdfConvOptions, started: float) -> TaskOutput:
        """``spair/gdf-conv``: extract, train, then report on ``split`` (``select``) or GDF's way (``gdf``)."""
        from dfbench.tasks.spair import gdf_conv as gdf

        if options.report == "gdf":
            if context.limit or options.per_category or options.pairs_file:
                raise DfbenchInputError("spair/gdf-conv report=gdf reports GDF's validation list "
                                        "(val_pairs_file); --limit, per_category and pairs_file do not apply "
                                        "(use --option train_limit=N / max_steps=N for a short run)")
            pairs: list[SpairPair] = []
        else:
            pairs = self.evaluated_pairs(data_root, split, context.limit, options, context.seed)
        if options.noise_draws > 1 and not settings.add_noise and settings.latent_mode == "mode":
            raise DfbenchInputError(f"spair/gdf-conv noise_draws={options.noise_draws}: these settings draw no "
                                    "noise (no noise, posterior mean), so every realisation is the same; use "
                                    "noise_draws=1, or --latent-mode sample / noise on")
        train = load_spair(data_root, "trn", options.train_limit, seed=settings.seed)
        val, unmatched = self._validation_pairs(data_root, options, context.log)
        check_image_sizes([*pairs, *train, *val])
        draws: list[dict[str, Any]] = []
        found = ImageFeatures()
        for draw in range(options.noise_draws):  # draw 0: every image; further draws: training images only
            images = pair_images([*pairs, *train, *val] if draw == 0 else train)
            found_draw = image_features(backbone, images, selection, gdf.draw_settings(settings, draw),
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
            details.update({"variant": "report=gdf", "leaderboard_metrics": [PRIMARY, "pck@0.1_img"]})
            split = "val"
        else:
            head = gdf.ConvReadout(best["state"]["conv.weight"].shape[0]).to(backbone.device)
            head.load_state_dict(best["state"])
            predicted = gdf.predict(head, pairs, draws[0], backbone.device, context.progress)
            predictions = [PairPrediction(pair, points) for pair, points in zip(pairs, predicted, strict=True)]
            metrics, categories = score_predictions(predictions)
            history.update({"best_step": best["step"], "best_val_pck@0.1_bbox": best["pck_bbox"]})
        return TaskOutput(metrics, categories, predictions, details, selection=found.selection, split=split,
                          timings={"extract_s": extracted - started, "match_s": time.perf_counter() - extracted,
                                   "images": float(len(found.sizes))})

    @staticmethod
    def _validation_pairs(data_root: str | Path, options: GdfConvOptions,
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

    def match(self, pairs: Sequence[SpairPair], features: dict[str, Any], sizes: dict[str, tuple[int, int]],
              progress: bool, device: torch.device | str = "cpu",
              combine_pair: Callable[[dict, dict], tuple[torch.Tensor, torch.Tensor]] | None = None
              ) -> list[PairPrediction]:
        """Nearest-neighbour predictions for every pair, target norms computed once per target image;
        on ``device`` (the backbone's GPU when there is one), one pair's maps at a time. With
        ``combine_pair``, ``features`` hold each image's activations and the pair's two descriptor maps
        are made from them first (the target norm is then the pair's own)."""
        order = sorted(range(len(pairs)), key=lambda i: pairs[i].trg_key)
        predictions: list[PairPrediction | None] = [None] * len(pairs)
        norm_key: str | None = None
        norm: torch.Tensor | None = None
        target = torch.empty(0)
        for index in tqdm(order, desc="match", unit="pair", disable=not progress):
            pair = pairs[index]
            if combine_pair is not None:
                source, target = pair_maps(features, pair, device, combine_pair)
                norm_key, norm = None, upsampled_norm(target, sizes[pair.trg_key])
            else:
                source = features[pair.src_key].to(device)
                if pair.trg_key != norm_key:
                    target = features[pair.trg_key].to(device)
                    norm_key, norm = pair.trg_key, upsampled_norm(target, sizes[pair.trg_key])
            predicted = match_points(source, target, torch.tensor(pair.src_kps),
                                     sizes[pair.src_key], sizes[pair.trg_key], trg_norm=norm)
            predictions[index] = PairPrediction(pair, predicted.cpu())
        return [prediction for prediction in predictions if prediction is not None]

    @staticmethod
    def match_patches(pairs: Sequence[SpairPair], found: ImageFeatures, settings: Any, progress: bool,
                      device: torch.device | str = "cpu",
                      combine_pair: Callable[[dict, dict], tuple[torch.Tensor, torch.Tensor]] | None = None,
                      cell_offset: float = -0.5) -> list[PairPrediction]:
        """``spair/patch-nn`` predictions (see the module docstring) from descriptor maps of the whole input
        (or, with ``combine_pair``, each image's activations); a matched cell stands for its centre +
        ``cell_offset`` input pixels."""
        resolution = settings.resolution
        predictions = []
        for pair in tqdm(pairs, desc="match", unit="pair", disable=not progress):
            source, target = pair_maps(found.features, pair, device, combine_pair)
            src_scale, src_offset = input_placement(found.sizes[pair.src_key], resolution, settings.resize_mode)
            trg_scale, trg_offset = input_placement(found.sizes[pair.trg_key], resolution, settings.resize_mode)
            points = torch.tensor(pair.src_kps, dtype=torch.float64) * src_scale + src_offset   # input pixels
            grid = torch.tensor([source.shape[2], source.shape[1]], dtype=torch.float64)
            cells = match_patch_grid(source, target, (points * grid / resolution).to(device)).cpu().double()
            target_grid = torch.tensor([target.shape[2], target.shape[1]], dtype=torch.float64)
            centres = (cells + 0.5) * resolution / target_grid + cell_offset                    # input pixels
            predictions.append(PairPrediction(pair, (centres - trg_offset) / trg_scale))
        return predictions

    # ------------------------------------------------------------------ figures, saved predictions, scoring
    def figures(self, output: TaskOutput, title: str, folder: Path) -> list[Path]:
        from dfbench.plots import plot_per_category
        from dfbench.tasks.spair.plots import plot_matches

        return [plot_per_category(output.per_category, PRIMARY, title, folder / "per-category.png",
                                  pooled=output.metrics.get(PRIMARY)),
                plot_matches(output.predictions, folder / "matches.png")]

    def save_predictions(self, output: TaskOutput, folder: Path) -> Path:
        table = {prediction.pair.pair_id: prediction.predicted.tolist() for prediction in output.predictions}
        return atomic_write_text(Path(folder) / PREDICTIONS_FILE, json.dumps(table, indent=0) + "\n")

    def score(self, data_root: Path, split: str, protocol: str, options: Any, folder: Path,
              limit: int | None = None, seed: int = 0) -> TaskOutput:
        pairs = self.evaluated_pairs(data_root, split, limit, options, seed)
        table = load_predictions(Path(folder))
        missing = [pair.pair_id for pair in pairs if pair.pair_id not in table]
        if missing:
            raise DfbenchInputError(f"predictions {Path(folder) / PREDICTIONS_FILE}: no prediction for "
                                    f"{len(missing)} of {len(pairs)} pairs of SPair {split} (first: {missing[0]})")
        inside = protocol != "patch-nn"        # Tale's nearest patch may lie in the letterbox
        predictions = [PairPrediction(pair, checked_points(table[pair.pair_id], pair, folder, inside))
                       for pair in pairs]
        metrics, categories = score_predictions(predictions)
        return TaskOutput(metrics, categories, predictions, split=split)


def load_predictions(folder: Path) -> dict[str, Any]:
    """``folder/predictions.json`` as {pair id: points}; a missing, unreadable or foreign file is one line."""
    path = folder / PREDICTIONS_FILE
    if not folder.is_dir():
        raise DfbenchInputError(f"predictions {folder}: no such folder")
    if not path.is_file():
        others = sorted({entry.suffix for entry in folder.iterdir() if entry.is_file()})
        hint = f" (it holds {', '.join(others)} files: made for a dense task?)" if others else ""
        raise DfbenchInputError(f"predictions {folder}: no {PREDICTIONS_FILE}{hint}; SPair predictions are one JSON "
                                "file mapping pair ids to [[x, y], …]")
    try:
        table = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DfbenchInputError(f"predictions {path}: not readable JSON ({error})") from None
    if not isinstance(table, dict):
        raise DfbenchInputError(f"predictions {path}: expected an object {{pair id: [[x, y], …]}}")
    return table


def pair_maps(features: dict[str, Any], pair: SpairPair, device: torch.device | str,
              combine_pair: Callable[[dict, dict], tuple[torch.Tensor, torch.Tensor]] | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The source and target descriptor maps of ``pair`` on ``device``: as kept, or made by ``combine_pair``
    from the two images' activations."""
    if combine_pair is None:
        return features[pair.src_key].to(device), features[pair.trg_key].to(device)
    return combine_pair(*({name: value.to(device) for name, value in features[key].items()}
                          for key in (pair.src_key, pair.trg_key)))


def input_placement(size: tuple[int, int], resolution: int, resize_mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """How an image of ``size`` (H, W) sits in the res×res model input: (scale, offset) as (x, y) tensors,
    input = original × scale + offset. ``pad``: Tale's ``preprocess_kps_pad`` (× res / max(W, H), the
    letterbox offset of :func:`~dfbench.images.content_box`); ``squash``: res / W and res / H, no offset."""
    from dfbench.images import content_box

    height, width = size
    if resize_mode == "squash":
        scale, offset = [resolution / width, resolution / height], [0.0, 0.0]
    else:
        left, top, _, _ = content_box(width, height, resolution, resize_mode)
        scale, offset = [resolution / max(width, height)] * 2, [float(left), float(top)]
    return torch.tensor(scale, dtype=torch.float64), torch.tensor(offset, dtype=torch.float64)


def checked_points(value: Any, pair: SpairPair, folder: Path, inside: bool = True) -> torch.Tensor:
    """A pair's predicted points as K×2, checked: K = the pair's keypoint count, finite, inside the image
    (``inside=False``: anywhere, e.g. ``spair/patch-nn``'s predictions in the letterbox)."""
    where = f"predictions {Path(folder) / PREDICTIONS_FILE}: pair {pair.pair_id}"
    count = len(pair.src_kps)
    if not isinstance(value, list):
        raise DfbenchInputError(f"{where}: expected a list of {count} points [[x, y], …], found {value!r:.60}")
    if len(value) != count:
        raise DfbenchInputError(f"{where}: {len(value)} points, expected {count} (one per source keypoint)")
    width, height = pair.trg_size
    points = []
    for index, point in enumerate(value):
        if not isinstance(point, list) or len(point) != 2:
            raise DfbenchInputError(f"{where}: point {index} is {point!r:.60}, expected [x, y]")
        for coordinate in point:
            if isinstance(coordinate, bool) or not isinstance(coordinate, (int, float)):
                raise DfbenchInputError(f"{where}: point {index} {point!r:.60} has {coordinate!r:.30}, not a number "
                                        "(write coordinates as JSON numbers, without quotes)")
            if not math.isfinite(coordinate):
                raise DfbenchInputError(f"{where}: point {index} {point!r:.60} is not finite (NaN or Infinity); every "
                                        "keypoint needs a predicted position")
        x, y = float(point[0]), float(point[1])
        if inside and not (0 <= x <= width and 0 <= y <= height):
            raise DfbenchInputError(f"{where}: point {index} ({x}, {y}) is outside the {width}×{height} target image")
        points.append((x, y))
    return torch.tensor(points, dtype=torch.float64)

