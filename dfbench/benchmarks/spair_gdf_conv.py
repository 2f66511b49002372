"""Protocol ``spair/gdf-conv`` (v1): Meng et al.'s trained 3×3-conv readout on SPair-71k.

Training follows GDF's ``task-corres.py``: one pair per step, pairs in a seeded random order per
epoch, AdamW (lr 5e-4, weight decay 0.01), the symmetric CLIP loss at 128² (τ = 0.07), a
validation every 500 steps, 10,000 steps (2 epochs × 5,000). GDF reports the best validation
score seen during training; here the head with the best validation PCK@0.1 (bbox) is selected on
``val`` (or on the pairs of ``val_pairs_file``, e.g. the authors' 360-pair list) and the reported
numbers are that head's on the evaluated split (``test``), which the training never sees.
"""

from __future__ import annotations

import copy
import dataclasses
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from dfbench.benchmarks.pck import bbox_reference, correct_keypoints
from dfbench.datasets.spair import SpairPair
from dfbench.errors import DfbenchInputError
from dfbench.heads.conv_readout import (
    MATCH_GRID,
    ConvReadout,
    grid_features,
    grid_index_to_points,
    points_to_grid_index,
    symmetric_clip_loss,
)
from dfbench.heads.nn_matcher import match_points

OPTION_TYPES: dict[str, type] = {"max_steps": int, "eval_every": int, "train_limit": int, "lr": float,
                                  "weight_decay": float}


@dataclass(frozen=True)
class GdfConvOptions:
    """Training options of ``spair/gdf-conv`` (``--option key=value``)."""

    max_steps: int = 10000
    eval_every: int = 500
    lr: float = 5e-4
    weight_decay: float = 0.01
    val_pairs_file: str | None = None
    train_limit: int | None = None

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> GdfConvOptions:
        """Typed options from strings or values; unknown keys are a one-line error naming the valid ones."""
        fields = {field.name: field for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise DfbenchInputError(f"spair/gdf-conv: unknown option(s) {', '.join(unknown)}; "
                                    f"valid: {', '.join(fields)}")
        typed: dict[str, Any] = {}
        for key, value in values.items():
            kind = OPTION_TYPES.get(key, str)
            try:
                typed[key] = None if value in (None, "", "none") else kind(value)
            except ValueError:
                raise DfbenchInputError(f"spair/gdf-conv option {key}={value!r}: expected {kind.__name__}") from None
        options = cls(**typed)
        if options.max_steps < 1 or options.eval_every < 1:
            raise DfbenchInputError("spair/gdf-conv: max_steps and eval_every must be ≥ 1")
        return options


Features = dict[str, dict[str, torch.Tensor]]


def _grid(features: Features, key: str, device: torch.device) -> torch.Tensor:
    return grid_features({name: value.to(device) for name, value in features[key].items()})


def predict(head: ConvReadout, pairs: Sequence[SpairPair], features: Features, device: torch.device,
            progress: bool = False) -> list[torch.Tensor]:
    """Predicted target keypoints (x, y) in original pixels for every pair (GDF's 512-grid NN)."""
    predictions = []
    head.eval()
    with torch.no_grad():
        for pair in tqdm(pairs, desc="gdf-conv eval", unit="pair", disable=not progress):
            src = head(_grid(features, pair.src_key, device))[0]
            trg = head(_grid(features, pair.trg_key, device))[0]
            index = points_to_grid_index(torch.tensor(pair.src_kps), pair.src_size, MATCH_GRID)
            grid_points = torch.stack([index % MATCH_GRID, index // MATCH_GRID], dim=1)
            grid_size = (MATCH_GRID, MATCH_GRID)
            matched = match_points(src.cpu(), trg.cpu(), grid_points, grid_size, grid_size)
            flat = matched[:, 1] * MATCH_GRID + matched[:, 0]
            predictions.append(grid_index_to_points(flat, pair.trg_size, MATCH_GRID))
    return predictions


def validation_pck(head: ConvReadout, pairs: Sequence[SpairPair], features: Features, device: torch.device) -> float:
    """PCK@0.1 (bbox, pooled over keypoints, percent) of ``head`` on ``pairs``."""
    flags = [correct_keypoints(predicted, torch.tensor(pair.trg_kps), bbox_reference(pair.trg_bbox), 0.1)
             for pair, predicted in zip(pairs, predict(head, pairs, features, device), strict=True)]
    return 100 * torch.cat(flags).double().mean().item()


def train_and_select(train: Sequence[SpairPair], val: Sequence[SpairPair], features: Features,
                     options: GdfConvOptions, seed: int, device: torch.device, progress: bool = True,
                     log: Callable[[str], None] | None = None) -> tuple[ConvReadout, dict[str, Any]]:
    """Train the conv head on ``train``; return the head of best validation PCK and the history."""
    if not train or not val:
        raise DfbenchInputError("spair/gdf-conv needs pairs in both the trn and val splits")
    channels = _grid(features, train[0].src_key, device).shape[1]
    torch.manual_seed(seed)
    head = ConvReadout(channels).to(device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    order_rng = random.Random(seed)
    history: dict[str, Any] = {"loss": [], "val_pck@0.1_bbox": [], "best_step": 0}
    best_state, best_score = copy.deepcopy(head.state_dict()), validation_pck(head, val, features, device)
    history["val_pck@0.1_bbox"].append([0, best_score])
    order: list[int] = []
    for step in tqdm(range(1, options.max_steps + 1), desc="gdf-conv train", unit="step", disable=not progress):
        if not order:
            order = list(range(len(train)))
            order_rng.shuffle(order)
        pair = train[order.pop()]
        head.train()
        src = head(_grid(features, pair.src_key, device))
        trg = head(_grid(features, pair.trg_key, device))
        grid = src.shape[-1]
        src_index = points_to_grid_index(torch.tensor(pair.src_kps), pair.src_size, grid).to(device)
        trg_index = points_to_grid_index(torch.tensor(pair.trg_kps), pair.trg_size, grid).to(device)
        loss = symmetric_clip_loss(src, trg, src_index, trg_index)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history["loss"].append(round(loss.item(), 5))
        if step % options.eval_every == 0 or step == options.max_steps:
            score = validation_pck(head, val, features, device)
            history["val_pck@0.1_bbox"].append([step, score])
            if log:
                log(f"step {step}: loss {loss.item():.4f}, val PCK@0.1 bbox {score:.2f}")
            if score > best_score:
                best_score, best_state, history["best_step"] = score, copy.deepcopy(head.state_dict()), step
    head.load_state_dict(best_state)
    history["best_val_pck@0.1_bbox"] = best_score
    return head, history
