"""Protocol ``nyuv2/cleandift-linear``: CleanDIFT's 1×1-conv probe to 256 depth bins on frozen (cacheable) features,
trained with CleanDIFT's SigLoss (see :mod:`dfbench.tasks.nyuv2.task` for the protocol's sources)."""

from __future__ import annotations

import hashlib
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dfbench.backbones.parts import TORCH_DTYPES
from dfbench.errors import DfbenchInputError
from dfbench.features import combine_to_grid, image_features
from dfbench.hub import hub_file
from dfbench.tasks.base import RunContext
from dfbench.tasks.nyuv2.dataset import DepthSample, ground_truth
from dfbench.tasks.nyuv2.options import DepthProbeOptions, LinearBinsOptions
from dfbench.tasks.nyuv2.probes import LinearBinsProbe, cleandift_sig_loss
from dfbench.tasks.nyuv2.scoring import DepthProtocol

if TYPE_CHECKING:
    from dfbench.resolve import ResolvedRun

#: CleanDIFT's published NYUv2 depth probe (``notebooks/depth.ipynb`` loads it into ``model.conv_depth``)
PUBLISHED_PROBE_REPO, PUBLISHED_PROBE_FILE = "CompVis/cleandift", "cleandift_sd21_depth_probe.safetensors"
#: test images whose features are held at once (they are predicted, then dropped)
EVAL_CHUNK = 32


@dataclass(frozen=True)
class CleanDiftLinear(DepthProtocol):
    """CleanDIFT's linear bins probe, scored on the whole image."""

    def probe(self, context: RunContext, run: ResolvedRun, train: list[DepthSample], evaluated: list[DepthSample],
              targets: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, float]]:
        return run_linear(context, run, train, evaluated, targets)


def run_linear(context: RunContext, run: ResolvedRun, train: list[DepthSample], evaluated: list[DepthSample],
               targets: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, float]]:
    """Train the linear-bins probe on cached/extracted features of ``train``; predict ``evaluated`` in chunks.
    With option ``probe`` the given probe is scored instead, untrained (:func:`run_trained_probe`)."""
    if run.options.probe is not None:
        return run_trained_probe(context, run, evaluated, targets)
    started = time.perf_counter()
    backbone, selection, settings, options = run.backbone, run.selection, run.settings, run.options

    def keep(activations: dict[str, torch.Tensor]) -> torch.Tensor:
        return combine_to_grid(activations).half()  # float16 halves what 795 NYU maps hold (SD2.1: 5.9 MB each)

    found = image_features(backbone, {sample.stem: (sample.image, "") for sample in train}, selection, settings,
                           context.cache, context.progress, keep=keep)
    maps = [found.features[sample.stem] for sample in train]
    # the loss is taken at the features' resolution: the ground truth resized bilinearly to each map
    train_targets = [F.interpolate(torch.from_numpy(ground_truth(sample))[None, None],
                                   size=tuple(feature.shape[1:]), mode="bilinear", align_corners=False)[0, 0]
                     for sample, feature in zip(train, maps, strict=True)]
    extracted = time.perf_counter()
    probe, losses = train_linear_bins(maps, train_targets, options, run.seed, backbone.device, context.progress)
    del maps
    trained = time.perf_counter()
    predictions = {}
    for start in range(0, len(evaluated), EVAL_CHUNK):
        chunk = evaluated[start : start + EVAL_CHUNK]
        chunk_found = image_features(backbone, {sample.stem: (sample.image, "") for sample in chunk}, selection,
                                     settings, context.cache, False, keep=keep)
        for sample in chunk:
            with torch.no_grad():
                depth = probe(chunk_found.features[sample.stem][None].to(backbone.device).float())
                depth = F.interpolate(depth, size=targets[sample.stem].shape, mode="bilinear", align_corners=False)
            predictions[sample.stem] = depth[0, 0].cpu().numpy().astype(np.float32)
    details = {"selection": found.selection, "channels": int(probe.conv_depth.in_channels),
               "feature_size": list(found.features[train[0].stem].shape[1:]) if train else [],
               "final_train_loss": losses[-1] if losses else float("nan"), "epochs": options.epochs}
    timings = {"extract_s": extracted - started, "train_s": trained - extracted,
               "eval_s": time.perf_counter() - trained}
    return predictions, details, timings


def train_linear_bins(maps: list[torch.Tensor], targets: list[torch.Tensor], options: DepthProbeOptions, seed: int,
                      device: Any, progress: bool = False) -> tuple[LinearBinsProbe, list[float]]:
    """A :class:`LinearBinsProbe` trained with AdamW on CleanDIFT's SigLoss: ``maps`` C×h×w, ``targets``
    h×w metres (0 = invalid) at the maps' size; each step pools the valid pixels of ``batch_size`` images
    (a seeded shuffle per epoch). Returns the probe and the mean loss of each epoch."""

    torch.manual_seed(seed)
    probe = LinearBinsProbe(maps[0].shape[0], options.min_depth, options.max_depth, options.bins,
                            options.normalisation).to(device)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    order_rng, losses = random.Random(seed), []
    steps = options.epochs * math.ceil(len(maps) / options.batch_size)
    bar = tqdm(total=steps, desc="depth probe", unit="step", disable=not progress)
    for _ in range(options.epochs):
        order, epoch_losses = order_rng.sample(range(len(maps)), len(maps)), []
        for start in range(0, len(order), options.batch_size):
            batch = order[start : start + options.batch_size]
            predicted = [probe(maps[index][None].to(device).float())[0, 0] for index in batch]
            truth = [targets[index].to(device) for index in batch]
            bar.update()
            if sum(int((target > 0).sum()) for target in truth) < 2:
                continue                                   # no valid pixels to fit (the variance needs two)
            loss = cleandift_sig_loss(torch.cat([p.flatten() for p in predicted]),
                                      torch.cat([t.flatten() for t in truth]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            epoch_losses.append(float(loss.detach()))
        losses.append(float(np.mean(epoch_losses)) if epoch_losses else float("nan"))
    bar.close()
    return probe.eval(), losses


def read_probe_state(path: Path, where: str) -> dict[str, torch.Tensor]:
    """A linear probe's ``conv_depth`` state dict from a safetensors file, in CleanDIFT's key names (``weight``,
    ``bias``: their notebook loads the file with ``model.conv_depth.load_state_dict``; ``conv_depth.weight`` /
    ``conv_depth.bias``, a whole ``DepthPred`` head, are taken too). One line on anything else."""
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except Exception as error:  # safetensors raises its own SafetensorError for damaged files
        raise DfbenchInputError(f"{where}: not a readable safetensors file ({error})") from None
    if state and all(key.startswith("conv_depth.") for key in state):
        state = {key.removeprefix("conv_depth."): value for key, value in state.items()}
    if set(state) != {"weight", "bias"}:
        raise DfbenchInputError(f"{where}: keys {sorted(state)[:4]} do not match CleanDIFT's conv_depth (expected "
                                "exactly weight [bins, C, 1, 1] and bias [bins])")
    weight, bias = state["weight"], state["bias"]
    if weight.dim() != 4 or tuple(weight.shape[2:]) != (1, 1) or tuple(bias.shape) != (weight.shape[0],):
        raise DfbenchInputError(f"{where}: weight {tuple(weight.shape)} and bias {tuple(bias.shape)} are not a 1×1 "
                                "convolution's (expected [bins, C, 1, 1] and [bins])")
    return state


def trained_probe(options: LinearBinsOptions, channels: int, device: Any) -> tuple[LinearBinsProbe, dict[str, Any]]:
    """The probe named by option ``probe`` (``hub``: CleanDIFT's published one) for features of ``channels``, in
    ``probe_dtype`` on ``device``, and what the record keeps of it (its label and the file's SHA-256)."""
    assert options.probe is not None
    label = options.probe
    if options.probe == "hub":
        path = hub_file(PUBLISHED_PROBE_REPO, PUBLISHED_PROBE_FILE, None, "pass probe=FILE")
        label = f"{PUBLISHED_PROBE_REPO}/{PUBLISHED_PROBE_FILE}"
    else:
        path = Path(options.probe)
    where = f"probe {label}"
    state = read_probe_state(path, where)
    bins, probe_channels = state["weight"].shape[:2]
    if probe_channels != channels:
        raise DfbenchInputError(f"{where}: it takes {probe_channels} channels, the selected features have "
                                f"{channels} (CleanDIFT's probe reads up_blocks.1 = us6 of SD2.1: 1280)")
    if bins != options.bins:
        raise DfbenchInputError(f"{where}: it predicts {bins} bins; pass --option bins={bins}")
    probe = LinearBinsProbe(channels, options.min_depth, options.max_depth, bins, options.normalisation)
    probe.conv_depth.load_state_dict(state, strict=True)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return probe.to(device, TORCH_DTYPES[options.probe_dtype]).eval(), {"probe": label, "probe_sha256": digest}


def run_trained_probe(context: RunContext, run: ResolvedRun, evaluated: list[DepthSample],
                      targets: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, float]]:
    """Score a trained probe (option ``probe``) as CleanDIFT's ``notebooks/depth.ipynb`` runs theirs: the features
    and the probe in ``probe_dtype`` (bins and normalisation included: ``DepthPred.depth_pred`` builds the bins in
    the features' dtype), the depth map resized bilinearly to the image in that dtype, then float32."""
    started = time.perf_counter()
    backbone, options = run.backbone, run.options
    dtype = TORCH_DTYPES[options.probe_dtype]
    predictions: dict[str, np.ndarray] = {}
    probe: LinearBinsProbe | None = None
    details: dict[str, Any] = {}
    for start in range(0, len(evaluated), EVAL_CHUNK):
        chunk = evaluated[start : start + EVAL_CHUNK]
        found = image_features(backbone, {sample.stem: (sample.image, "") for sample in chunk}, run.selection,
                               run.settings, context.cache, context.progress and start == 0, keep=combine_to_grid)
        if probe is None:
            probe, details = trained_probe(options, int(found.features[chunk[0].stem].shape[0]), backbone.device)
            details.update(selection=found.selection, channels=int(probe.conv_depth.in_channels),
                           feature_size=list(found.features[chunk[0].stem].shape[1:]), probe_dtype=options.probe_dtype,
                           train_images=0, epochs=0)
        for sample in chunk:
            with torch.no_grad():
                depth = probe(found.features[sample.stem][None].to(backbone.device, dtype))
                depth = F.interpolate(depth, size=targets[sample.stem].shape, mode="bilinear", align_corners=False)
            predictions[sample.stem] = depth[0, 0].float().cpu().numpy()
    if probe is None:
        raise DfbenchInputError(f"{run.protocol_label}: no images to score")
    return predictions, details, {"extract_s": 0.0, "train_s": 0.0, "eval_s": time.perf_counter() - started}
