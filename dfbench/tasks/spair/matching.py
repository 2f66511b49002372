"""SPair-71k matching: each image's descriptor, and the zero-shot matchers of ``spair/dift-nn`` (DIFT's nearest
neighbour on features upsampled to the images' sizes, :mod:`dfbench.heads.nn_matcher`) and ``spair/patch-nn``
(Tale of Two Features' nearest patch on the whole, letterboxed model input)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from dfbench.backbones.protocol import Backbone, DescriptorBackbone, PairFittedBackbone
from dfbench.features import ImageFeatures, combine_activations
from dfbench.heads.nn_matcher import match_patch_grid, match_points, upsampled_norm
from dfbench.images import content_box
from dfbench.tasks.spair.dataset import SpairPair
from dfbench.tasks.spair.scoring import PairPrediction


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


def match_pairs(pairs: Sequence[SpairPair], features: dict[str, Any], sizes: dict[str, tuple[int, int]],
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


def pair_maps(features: dict[str, Any], pair: SpairPair, device: torch.device | str,
              combine_pair: Callable[[dict, dict], tuple[torch.Tensor, torch.Tensor]] | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The source and target descriptor maps of ``pair`` on ``device``: as kept, or made by ``combine_pair``
    from the two images' activations."""
    return key_maps(features, pair.src_key, pair.trg_key, device, combine_pair)


def key_maps(features: dict[str, Any], source: str, target: str, device: torch.device | str,
             combine_pair: Callable[[dict, dict], tuple[torch.Tensor, torch.Tensor]] | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """The descriptor maps of images ``source`` and ``target`` (feature keys) as a pair, on ``device``."""
    if combine_pair is None:
        return features[source].to(device), features[target].to(device)
    return combine_pair(*({name: value.to(device) for name, value in features[key].items()}
                          for key in (source, target)))


def input_placement(size: tuple[int, int], resolution: int, resize_mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """How an image of ``size`` (H, W) sits in the res×res model input: (scale, offset) as (x, y) tensors,
    input = original × scale + offset. ``pad``: Tale's ``preprocess_kps_pad`` (× res / max(W, H), the
    letterbox offset of :func:`~dfbench.images.content_box`); ``squash``: res / W and res / H, no offset."""

    height, width = size
    if resize_mode == "squash":
        scale, offset = [resolution / width, resolution / height], [0.0, 0.0]
    else:
        left, top, _, _ = content_box(width, height, resolution, resize_mode)
        scale, offset = [resolution / max(width, height)] * 2, [float(left), float(top)]
    return torch.tensor(scale, dtype=torch.float64), torch.tensor(offset, dtype=torch.float64)
