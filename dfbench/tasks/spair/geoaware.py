"""Protocol ``spair/geoaware``: GeoAware-SC's zero-shot evaluation ("Telling Left from Right", Zhang et al., CVPR
2024), as CleanDIFT runs it for its fused rows (CompVis/cleandift branch ``geoaware-sc-eval``,
``configs/eval_zero_shot_spair.yaml``: ``ADAPT_FLIP``, ``SOFT_EVAL`` with ``SOFT_EVAL_WINDOW: 5``, ``KPT_RESULT``).

On the whole (letterboxed) model input's grid, like ``spair/patch-nn``:

* **transfer** (``utils/utils_correspondence.py`` 345-389): a source keypoint takes the cell it falls in
  (``int(grid / size · y)``), its cosine similarity to every target cell is taken; with ``soft_eval`` off, the
  best cell; with it on, ``get_flow`` (297-337): the similarities outside the (2w + 1)² window around the best
  cell set to 0 (window clamped at the edges), a softmax at temperature β = 0.02 over all target cells
  (``softmax_with_temperature``, 226-232), the expected column and row (``soft_argmax`` 234-256 on
  ``linspace(−1, 1, n)``, back to cells by (v + 1)(n − 1)/2), clamped to [0, n − 1]. A matched cell stands for
  its centre: ``cell · stride + stride // 2`` (376-377).
* **adaptive flip** (``pck_train.py`` 104-148, ``utils/utils_geoware.py`` 137-204, 269-279): the source image is
  also mirrored and extracted; its keypoints mirrored (x → size − x) and relabelled by the category's left/right
  table (``SPAIR_FLIP``; a pair swapped only when both are visible, ``permute_indices``), then transferred the
  same way. Each source's agreement with the target is ``get_distance`` (22-52): both descriptor maps resized
  bilinearly to 64×64, masked (SAM masks in the reference; here ``masks=DIR`` or the whole image), masked-out
  values set to −100000, the mean over the source's foreground cells of the Euclidean distance to the nearest
  target cell. When the mirrored source is closer, its transfers replace the original ones for the keypoints
  whose left/right partner is visible too (``optimized_kps_1_to_2``).

Scored per keypoint at the bbox threshold like the other protocols (``KPT_RESULT: true``).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from dfbench.errors import DfbenchInputError
from dfbench.features import image_features
from dfbench.images import load_image
from dfbench.tasks.base import RunContext, TaskOutput
from dfbench.tasks.spair.dataset import SpairPair, check_image_sizes
from dfbench.tasks.spair.matching import descriptor_keeper, input_placement, key_maps, pair_combiner, pair_images
from dfbench.tasks.spair.protocols import PatchNn, PatchNnOptions, evaluated_pairs
from dfbench.tasks.spair.scoring import PairPrediction, score_predictions

if TYPE_CHECKING:
    from dfbench.resolve import ResolvedRun

#: SPair-71k's left/right keypoint partners per category (the groups of GeoAware-SC's ``SPAIR_FLIP``,
#: ``utils/utils_geoware.py`` 55-75; a keypoint in no group is its own mirror image)
SPAIR_FLIP_GROUPS: dict[str, tuple[tuple[int, ...], ...]] = {
    "aeroplane": ((4, 5), (6, 7), (8, 9), (10, 11), (12, 13), (14, 15), (16, 17), (18, 19), (20, 21)),
    "bicycle": ((2, 3), (6, 7), (9, 10)),
    "bird": ((1, 2), (4, 5), (7, 8), (10, 11), (12, 13), (14, 15)),
    "boat": ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12)),
    "bottle": ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9)),
    "bus": ((0, 1), (2, 3), (5, 6), (8, 18), (11, 21), (9, 19), (12, 22), (10, 20), (13, 23), (14, 15), (24, 25),
            (16, 17), (26, 27)),
    "car": ((0, 1), (2, 3), (6, 7), (10, 20), (13, 23), (11, 21), (14, 24), (12, 22), (15, 25), (16, 17), (26, 27),
            (18, 19), (28, 29)),
    "cat": ((0, 1), (2, 3), (4, 5), (6, 7), (9, 10), (11, 12)),
    "chair": ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (10, 11), (12, 13)),
    "cow": ((0, 1), (2, 3), (4, 5), (6, 7), (9, 10), (11, 12), (15, 16), (17, 18), (19, 20)),
    "dog": ((0, 1), (2, 3), (4, 5), (9, 10), (11, 12)),
    "horse": ((0, 1), (2, 3), (4, 5), (6, 7), (10, 11), (12, 13), (16, 17), (18, 19)),
    "motorbike": ((0, 1), (2, 3)),
    "person": ((0, 1), (2, 3), (8, 9), (10, 11), (12, 13), (14, 15), (16, 17), (18, 19)),
    "pottedplant": ((0, 2), (4, 5), (6, 8)),
    "sheep": ((0, 1), (2, 3), (4, 5), (6, 7), (9, 10), (11, 12), (15, 16), (17, 18), (19, 20)),
    "train": ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (10, 11), (12, 13), (14, 15), (16, 17)),
    "tvmonitor": ((0, 2), (4, 6), (3, 7), (8, 10), (12, 14), (11, 15)),
}
#: get_distance's grid (its ``RESOLUTION=64``)
DISTANCE_GRID = 64
#: the value get_distance gives masked-out descriptor entries
MASKED_VALUE = -100000.0
FLIP_SUFFIX = "#flip"


@dataclass(frozen=True)
class GeoAwareOptions(PatchNnOptions):
    """``spair/geoaware``'s options (defaults: ``eval_zero_shot_spair.yaml``): ``adapt_flip``, ``soft_eval``,
    ``soft_window`` (w: a (2w + 1)² window; 0 = the softmax over every cell), ``soft_beta`` (the softmax's
    temperature), ``masks`` (a folder of GeoAware-SC's SAM masks, ``<category>/<image stem>_mask.png`` and
    ``_mask_flip.png``; none: the whole image is foreground), ``cell_offset`` 0 (GeoAware's cell centres)."""

    cell_offset: float = 0.0
    adapt_flip: bool = True
    soft_eval: bool = True
    soft_window: int = 5
    soft_beta: float = 0.02
    masks: str | None = None

    def validate(self, where: str) -> None:
        super().validate(where)
        if self.soft_window < 0 or self.soft_beta <= 0:
            raise DfbenchInputError(f"{where} options soft_window={self.soft_window}, soft_beta={self.soft_beta}: "
                                    "soft_window ≥ 0 (0: no window) and soft_beta > 0")
        if self.masks is not None and not Path(self.masks).is_dir():
            raise DfbenchInputError(f"{where} option masks={self.masks}: no such folder (GeoAware-SC's SAM masks, "
                                    "<category>/<image stem>_mask.png)")


def flip_permutation(groups: tuple[tuple[int, ...], ...], count: int, visible: set[int] | None = None) -> list[int]:
    """GeoAware-SC's ``permute_indices``: index i of the mirrored keypoints reads keypoint ``perm[i]`` — each
    group's members take the next member's place, only when all of them are ``visible`` (None: always)."""
    permutation = list(range(max([count - 1, *(i for group in groups for i in group)]) + 1))
    for group in groups:
        if visible is None or all(i in visible for i in group):
            for position, index in enumerate(group):
                permutation[index] = group[(position + 1) % len(group)]
    return permutation


def soft_argmax_cells(similarity: torch.Tensor, rows: int, cols: int, window: int, beta: float) -> torch.Tensor:
    """GeoAware-SC's windowed soft-argmax of similarity rows K×(rows·cols) → K×2 (column, row) float cells
    (see the module docstring), clamped to the grid."""
    similarity = similarity.float()
    if window > 0:
        best = similarity.argmax(dim=1)
        offsets = torch.arange(-window, window + 1, device=similarity.device)
        ys = (best // cols)[:, None, None] + offsets[None, :, None]
        xs = (best % cols)[:, None, None] + offsets[None, None, :]
        ys, xs = ys.clamp(0, rows - 1).expand(-1, -1, len(offsets)), xs.clamp(0, cols - 1).expand(-1, len(offsets), -1)
        mask = torch.zeros_like(similarity)
        mask.scatter_(1, (ys * cols + xs).flatten(1), 1.0)
        similarity = similarity * mask
    weights = torch.softmax((similarity - similarity.max(dim=1, keepdim=True).values) / beta, dim=1)
    weights = weights.view(-1, rows, cols)
    x_axis = torch.linspace(-1, 1, cols, dtype=torch.float64).float().to(similarity.device)
    y_axis = torch.linspace(-1, 1, rows, dtype=torch.float64).float().to(similarity.device)
    x = (weights.sum(dim=1) * x_axis).sum(dim=1)
    y = (weights.sum(dim=2) * y_axis).sum(dim=1)
    cells = torch.stack([(x + 1) * (cols - 1) / 2, (y + 1) * (rows - 1) / 2], dim=1)
    return torch.stack([cells[:, 0].clamp(0, cols - 1), cells[:, 1].clamp(0, rows - 1)], dim=1)


def transfer(source: torch.Tensor, target: torch.Tensor, points: torch.Tensor, resolution: int,
             options: GeoAwareOptions) -> torch.Tensor:
    """Source ``points`` (K×2 input pixels, x y) → K×2 float (column, row) cells of ``target``: the hard best cell
    or the windowed soft-argmax (``soft_eval``). ``source``/``target``: C×n×n descriptor maps."""
    rows, cols = target.shape[1:]
    x = (points[:, 0] * source.shape[2] / resolution).floor().long().clamp(0, source.shape[2] - 1)
    y = (points[:, 1] * source.shape[1] / resolution).floor().long().clamp(0, source.shape[1] - 1)
    vectors = unit(source)[:, y, x].T                                                  # K×C
    similarity = vectors @ unit(target).flatten(1)                                     # K×(rows·cols)
    if options.soft_eval:
        return soft_argmax_cells(similarity, rows, cols, options.soft_window, options.soft_beta)
    flat = similarity.argmax(dim=1)
    return torch.stack([flat % cols, flat // cols], dim=1).double()


def unit(descriptor: torch.Tensor) -> torch.Tensor:
    """Each cell's vector divided by its norm + 1e-10 (GeoAware-SC's ``normalize_feats``, its last step)."""
    descriptor = descriptor.float()
    return descriptor / (torch.linalg.norm(descriptor, dim=0, keepdim=True) + 1e-10)


def mean_nearest_distance(source: torch.Tensor, target: torch.Tensor, source_mask: torch.Tensor | None = None,
                          target_mask: torch.Tensor | None = None, grid: int = DISTANCE_GRID) -> float:
    """GeoAware-SC's ``get_distance``: both C×h×w maps (normalised) resized bilinearly to ``grid``², multiplied by
    their masks (nearest to ``grid``; None: all foreground), every zero set to −100000; the mean over the source's
    foreground cells of the Euclidean distance to the nearest target cell."""
    def prepared(descriptor: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        resized = F.interpolate(unit(descriptor)[None], size=(grid, grid), mode="bilinear", align_corners=False)[0]
        if mask is None:
            keep = torch.ones(grid, grid, device=resized.device)
        else:
            keep = F.interpolate(mask.float()[None, None], size=(grid, grid), mode="nearest")[0, 0].to(resized.device)
        masked = resized * keep
        masked[masked == 0] = MASKED_VALUE
        return masked.flatten(1).T, keep.flatten() == 1

    source_cells, source_keep = prepared(source, source_mask)
    target_cells, _ = prepared(target, target_mask)
    distances = torch.cdist(source_cells[source_keep], target_cells)
    return float(distances.min(dim=1).values.mean())


def read_mask(folder: Path, key: str, flipped: bool) -> torch.Tensor:
    """GeoAware-SC's SAM mask of image ``key`` (``<category>/<name>``): ``<stem>_mask[_flip].png`` > 127."""
    category, name = key.split("/", 1)
    path = folder / category / f"{Path(name).stem}_mask{'_flip' if flipped else ''}.png"
    if not path.is_file():
        raise DfbenchInputError(f"spair/geoaware masks: no {path} (GeoAware-SC's preprocess_mask_sam.py writes one "
                                "per image and one mirrored); drop masks= to use the whole image")
    return torch.from_numpy(np.asarray(Image.open(path).convert("L")) > 127)


def mirrored_sources(pairs: list[SpairPair], folder: Path) -> dict[str, tuple[Path, str]]:
    """Each distinct source image mirrored left-right, saved losslessly under ``folder``: {``<key>#flip``:
    (path, category)} (the feature cache keys an image by its bytes, so a mirror is cached like any image)."""
    mirrored: dict[str, tuple[Path, str]] = {}
    for pair in pairs:
        key = pair.src_key + FLIP_SUFFIX
        if key not in mirrored:
            path = folder / f"{len(mirrored):06d}.png"
            load_image(pair.src_image).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(path)
            mirrored[key] = (path, pair.category)
    return mirrored


def keypoint_ids(pair: SpairPair) -> list[int]:
    """The SPair ids of the pair's keypoints (its ``kps_ids``; by position when a pair file has none)."""
    ids = pair.raw.get("kps_ids")
    return [int(i) for i in ids] if ids is not None else list(range(len(pair.src_kps)))


def predict_pair(pair: SpairPair, maps: dict[str, torch.Tensor], size: tuple[int, int], target_size: tuple[int, int],
                 resolution: int, resize_mode: str, options: GeoAwareOptions,
                 masks: dict[str, torch.Tensor | None]) -> tuple[torch.Tensor, bool]:
    """One pair's predicted target points (original pixels) and whether the mirrored source was kept."""
    scale, offset = input_placement(size, resolution, resize_mode)
    trg_scale, trg_offset = input_placement(target_size, resolution, resize_mode)
    points = torch.tensor(pair.src_kps, dtype=torch.float64) * scale + offset          # input pixels
    cells = transfer(maps["source"], maps["target"], points, resolution, options).cpu().double()
    flipped = False
    if options.adapt_flip:
        ids = keypoint_ids(pair)
        groups = SPAIR_FLIP_GROUPS.get(pair.category, ())
        position = {index: k for k, index in enumerate(ids)}
        visible = set(ids)
        swapped = flip_permutation(groups, max(ids) + 1, visible)
        mirrored = points.clone()
        mirrored[:, 0] = resolution - mirrored[:, 0]
        starts = mirrored[[position[swapped[i]] for i in ids]]
        flip_cells = transfer(maps["flipped"], maps["target"], starts, resolution, options).cpu().double()
        original = mean_nearest_distance(maps["source"], maps["target"], masks["source"], masks["target"])
        mirror = mean_nearest_distance(maps["flipped"], maps["target"], masks["flipped"], masks["target"])
        if mirror < original:
            flipped = True
            partner = flip_permutation(groups, max(ids) + 1)
            keep = torch.tensor([partner[i] in visible for i in ids])
            cells[keep] = flip_cells[keep]
    grid = torch.tensor([maps["target"].shape[2], maps["target"].shape[1]], dtype=torch.float64)
    centres = (cells + 0.5) * resolution / grid + options.cell_offset                  # input pixels
    return (centres - trg_offset) / trg_scale, flipped


@dataclass(frozen=True)
class GeoAware(PatchNn):
    """GeoAware-SC's zero-shot evaluation: patch matching with the windowed soft-argmax and the adaptive flip."""

    def run(self, task: Any, context: RunContext, run: ResolvedRun) -> TaskOutput:
        started = time.perf_counter()
        backbone, settings, options = run.backbone, run.settings, run.options
        pairs = evaluated_pairs(run.data_root, run.split, run.limit, options, run.seed)
        check_image_sizes(pairs)
        with tempfile.TemporaryDirectory(prefix="dfbench-mirrored-") as folder:
            images = pair_images(pairs)
            if options.adapt_flip:
                images.update(mirrored_sources(pairs, Path(folder)))
            found = image_features(backbone, images, run.selection, settings, context.cache, context.progress,
                                   keep=descriptor_keeper(backbone), crop=False)
        extracted = time.perf_counter()
        combine_pair = pair_combiner(backbone)
        mask_folder = Path(options.masks) if options.masks else None
        predictions, flipped = [], 0
        for pair in tqdm(pairs, desc="match", unit="pair", disable=not context.progress):
            maps = dict(zip(("source", "target"), key_maps(found.features, pair.src_key, pair.trg_key,
                                                           backbone.device, combine_pair), strict=True))
            if options.adapt_flip:
                maps["flipped"] = key_maps(found.features, pair.src_key + FLIP_SUFFIX, pair.trg_key,
                                           backbone.device, combine_pair)[0]
            masks: dict[str, torch.Tensor | None] = {"source": None, "target": None, "flipped": None}
            if mask_folder is not None:
                masks = {"source": read_mask(mask_folder, pair.src_key, False),
                         "target": read_mask(mask_folder, pair.trg_key, False),
                         "flipped": read_mask(mask_folder, pair.src_key, True)}
            points, was_flipped = predict_pair(pair, maps, found.sizes[pair.src_key], found.sizes[pair.trg_key],
                                               run.resolution, settings.resize_mode, options, masks)
            predictions.append(PairPrediction(pair, points))
            flipped += was_flipped
        metrics, categories = score_predictions(predictions)
        return TaskOutput(metrics, categories, predictions, {"flipped_pairs": flipped}, selection=found.selection,
                          split=run.split, timings={"extract_s": extracted - started,
                                                    "match_s": time.perf_counter() - extracted,
                                                    "images": float(len(found.sizes))})
