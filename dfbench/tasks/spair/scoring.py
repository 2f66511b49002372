"""SPair-71k scoring: PCK@α of predicted keypoints (pooled, per image pair, per category), the average end-point
error, and the saved-predictions file (``predictions.json``: pair id → ``[[x, y], …]`` in target-image pixels)."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dfbench.errors import DfbenchInputError
from dfbench.tasks.base import MetricSpec, bootstrap_stderr, stderr_spec
from dfbench.tasks.spair.dataset import SpairPair
from dfbench.tasks.spair.pck import bbox_reference, correct_keypoints, image_reference

ALPHAS = (0.05, 0.1, 0.15)
PRIMARY = "pck@0.1_bbox"
PREDICTIONS_FILE = "predictions.json"


def metric_specs() -> dict[str, MetricSpec]:
    """The spec of every SPair metric (PCK in percent, higher is better; ``aepe`` in pixels, lower is better)."""
    specs = {}
    for alpha in ALPHAS:
        for kind in ("bbox", "img"):
            for suffix in ("", "_per_image", "_category_mean", "_pair_weighted"):
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
    """PCK metrics (percent): pooled per keypoint, per image pair, per category, and over the categories two ways,
    as Tale of Two Features reports them (Junyi42/sd-dino ``pck_spair_pascal.py`` 531-537): ``_category_mean``, the
    mean of the categories' PCKs ("Average"), and ``_pair_weighted``, their mean weighted by each category's pair count
    ("Weighted": its constants are SPair's test pairs per category, or equal weights when it samples N per
    category — the pairs evaluated, either way)."""
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
    pairs_per_category = {category: len(table[next(iter(table))]) for category, table in per_category.items()}
    for key in pooled:
        metrics[f"{key}_category_mean"] = sum(c[key] for c in categories.values()) / len(categories)
        metrics[f"{key}_pair_weighted"] = (sum(pairs_per_category[name] * c[key] for name, c in categories.items())
                                           / sum(pairs_per_category.values()))
    metrics["aepe"] = torch.cat(errors).mean().item() if errors else float("nan")
    if PRIMARY in pooled:   # resampling pairs: the pooled PCK of each resample
        hits = np.array([int(flags.sum()) for flags in pooled[PRIMARY]])
        sizes = np.array([len(flags) for flags in pooled[PRIMARY]])
        metrics[f"{PRIMARY}_stderr"] = bootstrap_stderr(
            len(hits), lambda chosen: 100 * hits[chosen].sum() / max(sizes[chosen].sum(), 1))
    metrics["pairs"] = float(len(predictions))
    metrics["keypoints"] = float(sum(len(p.pair.trg_kps) for p in predictions))
    return metrics, categories


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

