"""SPair-71k semantic correspondence: protocols ``spair/dift-nn`` (v1) and ``spair/gdf-conv`` (v1,
see :mod:`dfbench.benchmarks.spair_gdf_conv`).

Each image's features are extracted once (not once per pair), with the prompt filled by the
image's category. For every pair, each source keypoint is matched to the target pixel of highest
cosine similarity between the features bilinearly upsampled to the images' original sizes
(:mod:`dfbench.heads.nn_matcher`). A prediction is correct when its distance to the true target
keypoint is ≤ α·max(bbox w, h) of the target object (``bbox``) or ≤ α·max(W, H) of the target
image (``img``), in original pixels.

Reported (in percent): PCK@{0.05, 0.1, 0.15} × {bbox, img}, pooled over all keypoints (primary:
``pck@0.1_bbox``), averaged per image pair (``…_per_image``), per category, and the mean over
categories. With several activations selected, each is resized to the largest map, L2-normalised
per location, and concatenated along channels; a single activation is used as it is (DIFT).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from dfbench.backbones.base import DiffusionBackbone
from dfbench.benchmarks.pck import bbox_reference, correct_keypoints, image_reference
from dfbench.cache import CacheItem, ConfigStore, image_key, load_features
from dfbench.datasets.spair import SpairPair, load_spair, read_pair_list
from dfbench.errors import DfbenchInputError
from dfbench.heads.nn_matcher import match_points, upsampled_norm
from dfbench.images import load_image
from dfbench.results import Result, environment
from dfbench.settings import ExtractSettings

ALPHAS = (0.05, 0.1, 0.15)
PRIMARY = "pck@0.1_bbox"
PROTOCOLS = {"dift-nn": 1, "gdf-conv": 1}


def combine_activations(features: dict[str, torch.Tensor]) -> torch.Tensor:
    """One map N×C×h×w from the selected activations (see the module docstring)."""
    maps = list(features.values())
    if len(maps) == 1:
        return maps[0]
    height = max(m.shape[2] for m in maps)
    width = max(m.shape[3] for m in maps)
    resized = [F.interpolate(m, size=(height, width), mode="bilinear", align_corners=False)
               if m.shape[2:] != (height, width) else m for m in maps]
    return torch.cat([F.normalize(m, dim=1) for m in resized], dim=1)


def _keep(activations: dict[str, torch.Tensor], combine: bool) -> Any:
    """What the task keeps of one image's activations (C×h×w each): one combined float32 map, or
    the activations as float16 (half the memory; the trained readout resizes them itself)."""
    if combine:
        return combine_activations({name: value[None] for name, value in activations.items()})[0].cpu()
    return {name: value.to("cpu", torch.float16) for name, value in activations.items()}


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
    for prediction in predictions:
        pair = prediction.pair
        truth = torch.tensor(pair.trg_kps)
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
    metrics["pairs"] = float(len(predictions))
    metrics["keypoints"] = float(sum(len(p.pair.trg_kps) for p in predictions))
    return metrics, categories


class SpairTask:
    """SPair-71k correspondence. ``run`` returns a :class:`~dfbench.results.Result`."""

    name = "spair"
    protocols = PROTOCOLS
    default_protocol = "dift-nn"

    def run(
        self,
        backbone: DiffusionBackbone,
        selection: Sequence[str],
        settings: ExtractSettings,
        data_root: str | Path,
        split: str = "test",
        protocol: str = "dift-nn",
        limit_pairs: int | None = None,
        per_category: int | None = None,
        pairs_file: str | Path | None = None,
        progress: bool = True,
        preset: str | None = None,
        options: dict[str, Any] | None = None,
        cache: ConfigStore | None = None,
    ) -> tuple[Result, list[PairPrediction]]:
        """Evaluate ``backbone`` + ``selection`` on the pairs of ``split``.

        ``options`` are protocol options (``spair/gdf-conv``: see ``GdfConvOptions``); with a
        ``cache`` store, features are read from it and only missing ones are extracted."""
        if protocol not in PROTOCOLS:
            raise DfbenchInputError(f"spair protocol {protocol!r}: available: {', '.join(PROTOCOLS)}")
        started = time.perf_counter()
        details: dict[str, Any] = {"split": split, "data_root": str(data_root), "limit_pairs": limit_pairs,
                                   "per_category": per_category, "pairs_file": str(pairs_file) if pairs_file else None,
                                   "recipe_version": backbone.recipe_version,
                                   "leaderboard_metrics": [PRIMARY, "pck@0.1_img", "pck@0.1_bbox_per_image"]}
        if protocol == "dift-nn":
            if options:
                raise DfbenchInputError(f"spair/dift-nn takes no options (got {', '.join(options)})")
            pairs = self.evaluated_pairs(data_root, split, limit_pairs, per_category, pairs_file, settings.seed)
            features, sizes, canonical = self.extract_images(backbone, selection, settings, pairs, progress,
                                                             cache=cache)
            extracted = time.perf_counter()
            predictions = self.match(pairs, features, sizes, progress, device=backbone.device)
            metrics, categories = score_predictions(predictions)
        else:
            from dfbench.benchmarks.spair_gdf_conv import GdfConvOptions

            gdf_options = GdfConvOptions.from_dict(options or {})
            if gdf_options.report == "gdf":
                if limit_pairs or per_category or pairs_file:
                    raise DfbenchInputError("spair/gdf-conv report=gdf reports GDF's validation list "
                                            "(val_pairs_file); --limit-pairs, --per-category and --pairs-file "
                                            "do not apply (use --option train_limit=N / max_steps=N for a short run)")
                pairs = []
            else:
                pairs = self.evaluated_pairs(data_root, split, limit_pairs, per_category, pairs_file, settings.seed)
            outcome = self._train_gdf_conv(backbone, selection, settings, data_root, pairs, gdf_options, progress,
                                           cache)
            predictions, metrics, categories, sizes, canonical, extracted, extra = outcome
            details.update(extra)
        matched = time.perf_counter()
        result = Result(
            task=self.name, protocol=f"{self.name}/{protocol}", protocol_version=PROTOCOLS[protocol],
            backbone=backbone.name, selection=canonical, settings=settings.to_dict(),
            metrics=metrics, per_category=categories, preset=preset, weights=str(backbone.source),
            timings={"extract_s": extracted - started, "match_s": matched - extracted,
                     "images": float(len(sizes))},
            details=details, environment=environment(str(backbone.device)),
        )
        return result, predictions

    @staticmethod
    def evaluated_pairs(data_root: str | Path, split: str, limit_pairs: int | None, per_category: int | None,
                        pairs_file: str | Path | None, seed: int) -> list[SpairPair]:
        """The pairs a run scores: ``split`` with the filters applied (never empty)."""
        pairs = load_spair(data_root, split, limit_pairs, per_category, pairs_file=pairs_file, seed=seed)
        if not pairs:
            raise DfbenchInputError(f"SPair {split}: no pairs left after the filters")
        return pairs

    def _train_gdf_conv(self, backbone: DiffusionBackbone, selection: Sequence[str], settings: ExtractSettings,
                        data_root: str | Path, pairs: list[SpairPair], options: Any, progress: bool,
                        cache: ConfigStore | None) -> tuple[list[PairPrediction], dict[str, float], dict[str, Any],
                                                            dict[str, tuple[int, int]], list[str], float,
                                                            dict[str, Any]]:
        """``spair/gdf-conv``: extract, train, then report on ``pairs`` (``select``) or GDF's way (``gdf``).

        Returns predictions, metrics, the per-category table, image sizes, the canonical selection,
        the time extraction ended and the record's extra details."""
        from dfbench.benchmarks import spair_gdf_conv as gdf

        if options.noise_draws > 1 and not settings.add_noise and settings.latent_mode == "mode":
            raise DfbenchInputError(f"spair/gdf-conv noise_draws={options.noise_draws}: these settings draw no "
                                    "noise (no noise, posterior mean), so every realisation is the same; use "
                                    "noise_draws=1, or --latent-mode sample / noise on")
        train = load_spair(data_root, "trn", options.train_limit, seed=settings.seed)
        val, unmatched = self._validation_pairs(data_root, options)
        draws, sizes, canonical = [], {}, []
        for draw in range(options.noise_draws):  # draw 0: every image; further draws: training images only
            images = [*pairs, *train, *val] if draw == 0 else train
            draw_settings = gdf.draw_settings(settings, draw)
            draw_cache = cache.for_settings(backbone, draw_settings) if cache else None
            features, draw_sizes, canonical = self.extract_images(backbone, selection, draw_settings, images,
                                                                  progress, combine=False, cache=draw_cache)
            draws.append(features)
            sizes.update(draw_sizes)
        extracted = time.perf_counter()
        best, history = gdf.train(train, val, draws, options, settings.seed, backbone.device, progress)
        extra: dict[str, Any] = {"options": dataclasses.asdict(options), "training": history,
                                 "train_pairs": len(train), "train_categories": sorted({p.category for p in train}),
                                 "val_pairs": len(val), "val_pairs_unmatched": unmatched}
        if options.report == "gdf":
            predictions = [PairPrediction(pair, points) for pair, points in zip(val, best["predictions"], strict=True)]
            _, categories = score_predictions(predictions)
            metrics = {**gdf.gdf_report(history["validations"]), "pairs": float(len(val)),
                       "keypoints": float(sum(len(pair.trg_kps) for pair in val))}
            extra.update({"split": "val", "variant": "report=gdf",
                          "leaderboard_metrics": [PRIMARY, "pck@0.1_img"]})
        else:
            head = gdf.ConvReadout(best["state"]["conv.weight"].shape[0]).to(backbone.device)
            head.load_state_dict(best["state"])
            predicted = gdf.predict(head, pairs, draws[0], backbone.device, progress)
            predictions = [PairPrediction(pair, points) for pair, points in zip(pairs, predicted, strict=True)]
            metrics, categories = score_predictions(predictions)
            history.update({"best_step": best["step"], "best_val_pck@0.1_bbox": best["pck_bbox"]})
        return predictions, metrics, categories, sizes, canonical, extracted, extra

    @staticmethod
    def _validation_pairs(data_root: str | Path, options: Any) -> tuple[list[SpairPair], list[str]]:
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
            print(f"spair/gdf-conv: {len(unmatched)} pairs of {options.val_pairs_file} not found in SPair val, "
                  f"left out: {'; '.join(unmatched[:5])}{' …' if len(unmatched) > 5 else ''}", file=sys.stderr)
        if not val:
            raise DfbenchInputError(f"spair/gdf-conv val_pairs_file {options.val_pairs_file}: none of its "
                                    f"{len(unmatched)} pairs is in SPair val ({data_root})")
        return val, unmatched

    def extract_images(self, backbone: DiffusionBackbone, selection: Sequence[str], settings: ExtractSettings,
                       pairs: Sequence[SpairPair], progress: bool, combine: bool = True,
                       cache: ConfigStore | None = None
                       ) -> tuple[dict[str, Any], dict[str, tuple[int, int]], list[str]]:
        """Features and original size (H, W) of every distinct image, extracted once each, and the
        canonical selection. ``combine``: one C×h×w float32 map per image (:func:`combine_activations`);
        otherwise the activations as they are ({name: C×h×w}, stored as float16 to halve memory)."""
        images: dict[str, tuple[Path, str]] = {}
        for pair in pairs:
            images.setdefault(pair.src_key, (pair.src_image, pair.category))
            images.setdefault(pair.trg_key, (pair.trg_image, pair.category))
        keys = sorted(images)
        if cache is not None:
            return self._from_cache(backbone, selection, settings, images, keys, combine, cache, progress)
        features: dict[str, Any] = {}
        canonical: list[str] = []
        sizes: dict[str, tuple[int, int]] = {}
        chunk = max(1, settings.batch_size // settings.ensemble_size)
        bar = tqdm(total=len(keys), desc=f"extract {backbone.name}", unit="img", disable=not progress)
        for start in range(0, len(keys), chunk):
            batch = keys[start : start + chunk]
            loaded = [load_image(images[key][0]) for key in batch]
            extracted = backbone.extract(loaded, selection, settings, categories=[images[k][1] for k in batch])
            canonical = list(extracted)
            for index, (key, image) in enumerate(zip(batch, loaded, strict=True)):
                features[key] = _keep({name: value[index] for name, value in extracted.items()}, combine)
                sizes[key] = (image.height, image.width)
            bar.update(len(batch))
        bar.close()
        return features, sizes, canonical

    def _from_cache(self, backbone: DiffusionBackbone, selection: Sequence[str], settings: ExtractSettings,
                    images: dict[str, tuple[Path, str]], keys: list[str], combine: bool, cache: ConfigStore,
                    progress: bool) -> tuple[dict[str, Any], dict[str, tuple[int, int]], list[str]]:
        items = [CacheItem(image_key(images[key][0]), images[key][0], images[key][1]) for key in keys]
        loaded = load_features(backbone, items, selection, settings, cache, progress)
        features: dict[str, Any] = {}
        sizes: dict[str, tuple[int, int]] = {}
        canonical: list[str] = []
        for key, item in zip(keys, items, strict=True):
            canonical = list(loaded[item.key])
            features[key] = _keep(loaded[item.key], combine)
            with Image.open(item.path) as image:
                sizes[key] = (image.height, image.width)
        return features, sizes, canonical

    def match(self, pairs: Sequence[SpairPair], features: dict[str, torch.Tensor], sizes: dict[str, tuple[int, int]],
              progress: bool, device: torch.device | str = "cpu") -> list[PairPrediction]:
        """Nearest-neighbour predictions for every pair, target norms computed once per target image;
        on ``device`` (the backbone's GPU when there is one), one pair's maps at a time."""
        order = sorted(range(len(pairs)), key=lambda i: pairs[i].trg_key)
        predictions: list[PairPrediction | None] = [None] * len(pairs)
        norm_key, norm, target = None, None, None
        for index in tqdm(order, desc="match", unit="pair", disable=not progress):
            pair = pairs[index]
            if pair.trg_key != norm_key:
                target = features[pair.trg_key].to(device)
                norm_key, norm = pair.trg_key, upsampled_norm(target, sizes[pair.trg_key])
            predicted = match_points(features[pair.src_key].to(device), target, torch.tensor(pair.src_kps),
                                     sizes[pair.src_key], sizes[pair.trg_key], trg_norm=norm)
            predictions[index] = PairPrediction(pair, predicted.cpu())
        return [prediction for prediction in predictions if prediction is not None]

