"""Protocol ``spair/gdf-conv`` (v1): Meng et al.'s trained 3×3-conv readout on SPair-71k.

Training follows GDF's ``correspondence/task-corres.py``: one pair per step; each epoch a seeded
random permutation of the training pairs cut to ``steps_per_epoch`` (5,000; lines 152-153);
AdamW (lr 5e-4, weight decay 0.01); the symmetric CLIP loss at 128² (τ = 0.07); 10,000 steps.
Steps are counted from 0 as GDF counts them, and the head is validated after the update of every
step ``s > 0`` with ``s % eval_every == 0`` (line 177: steps 500, 1000, …, 9500). The untrained
head is never validated, so it can never be selected.

Two reporting modes (option ``report``):

* ``select`` (default, honest): the head of best validation PCK@0.1 (bbox) on ``val`` (or the pairs
  of ``val_pairs_file``) — also validated after the last step — is reported on the evaluated split
  (``test``), which training and selection never see.
* ``gdf``: exactly what GDF logs (lines 185-188): the maximum PCK_img and, separately, the maximum
  PCK_bbox over those validations on its 360-pair list (``val_pairs_file``, GDF's
  ``spair_71k_val-360.json``); the test split is never used. A selection-set number, named so in
  the record (``details['variant'] = 'report=gdf'``) and in its leaderboard row.

Noise augmentation (option ``noise_draws``): GDF extracts the features again at every training step,
with fresh noise and a fresh posterior sample (float16). Here each training image is extracted
``noise_draws`` times with independent draws (extracted once, cached), and every step picks one of
the K realisations at random for the source and for the target; validation and test use the first.
K=1 (default) trains on one frozen realisation; any K is still a finite set of realisations, where
GDF sees a new one at each of its 20,000 image visits.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from dfbench.atomic import atomic_write, atomic_write_text
from dfbench.cache import file_sha256
from dfbench.errors import DfbenchInputError
from dfbench.heads.nn_matcher import match_points
from dfbench.options import require_at_least_one
from dfbench.settings import ExtractSettings
from dfbench.tasks.spair.conv_readout import (
    MATCH_GRID,
    ConvReadout,
    grid_features,
    grid_index_to_points,
    points_to_grid_index,
    readout_channels,
    symmetric_clip_loss,
)
from dfbench.tasks.spair.dataset import SpairPair
from dfbench.tasks.spair.pck import bbox_reference, correct_keypoints, image_reference

REPORT_MODES = ("select", "gdf")


@dataclass(frozen=True)
class SpairSubsetOptions:
    """Which pairs of the split are evaluated (``spair/dift-nn``'s options; also ``spair/gdf-conv``'s).

    per_category: N pairs per category, a seeded sample. pairs_file: a list of pairs — ids one per
    line, or GDF's JSON list. The generic ``--limit N`` draws N pairs spread over the categories."""

    per_category: int | None = None
    pairs_file: str | None = None

    def validate(self, where: str) -> None:
        if self.per_category is not None and self.per_category < 1:
            raise DfbenchInputError(f"{where} option per_category={self.per_category}: must be ≥ 1")


@dataclass(frozen=True)
class GdfConvOptions(SpairSubsetOptions):
    """Training and reporting options of ``spair/gdf-conv`` (``--option key=value``)."""

    max_steps: int = 10000
    eval_every: int = 500
    steps_per_epoch: int = 5000
    lr: float = 5e-4
    weight_decay: float = 0.01
    val_pairs_file: str | None = None
    train_limit: int | None = None
    report: str = "select"
    noise_draws: int = 1

    def validate(self, where: str) -> None:
        super().validate(where)
        require_at_least_one(self, ("max_steps", "eval_every", "steps_per_epoch", "noise_draws", "train_limit"),
                             where)
        if self.report not in REPORT_MODES:
            raise DfbenchInputError(f"{where} option report={self.report!r}: choose one of {', '.join(REPORT_MODES)}")
        if self.report == "gdf" and not validation_steps(self):
            raise DfbenchInputError(f"{where} report=gdf validates after steps eval_every, 2·eval_every, … "
                                    f"< max_steps: max_steps={self.max_steps} must exceed eval_every={self.eval_every}")


def validation_steps(options: GdfConvOptions) -> list[int]:
    """The 0-based steps after whose update the head is validated (GDF ``task-corres.py:177``:
    ``step > 0 and step % 500 == 0``); ``select`` also validates after the last step."""
    steps = list(range(options.eval_every, options.max_steps, options.eval_every))
    if options.report == "select" and (not steps or steps[-1] != options.max_steps - 1):
        steps.append(options.max_steps - 1)
    return steps


def draw_settings(settings: ExtractSettings, draw: int) -> ExtractSettings:
    """The settings of noise realisation ``draw``: draw 0 is ``settings`` itself; draw k ≥ 1 has the
    seed ``int(sha256(f"{seed}:draw{k}")[:4 bytes])``, so realisations are independent."""
    if draw == 0:
        return settings
    digest = hashlib.sha256(f"{settings.seed}:draw{draw}".encode()).digest()
    return settings.replace(seed=int.from_bytes(digest[:4], "big"))


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


def validation_pck(pairs: Sequence[SpairPair], predictions: Sequence[torch.Tensor]) -> tuple[float, float]:
    """(PCK@0.1 img, PCK@0.1 bbox), pooled over keypoints, in percent — GDF's ``validate``
    (``task-corres.py:116-141``: ``val_pck.sum() / len(val_pck)`` over all keypoints)."""
    img, bbox = [], []
    for pair, predicted in zip(pairs, predictions, strict=True):
        truth = torch.tensor(pair.trg_kps)
        img.append(correct_keypoints(predicted, truth, image_reference(pair.trg_size), 0.1))
        bbox.append(correct_keypoints(predicted, truth, bbox_reference(pair.trg_bbox), 0.1))
    return 100 * torch.cat(img).double().mean().item(), 100 * torch.cat(bbox).double().mean().item()


def gdf_report(history: Sequence[tuple[int, float, float]]) -> dict[str, float]:
    """GDF's logged result from validations ``(step, pck_img, pck_bbox)``: the maximum PCK_img and,
    separately, the maximum PCK_bbox (``task-corres.py:186-188``), with the first step reaching each."""
    if not history:
        raise DfbenchInputError("spair/gdf-conv report=gdf: no validation ran")
    best_img = max(history, key=lambda entry: entry[1])
    best_bbox = max(history, key=lambda entry: entry[2])
    return {"pck@0.1_img": best_img[1], "pck@0.1_bbox": best_bbox[2],
            "best_step_img": float(best_img[0]), "best_step_bbox": float(best_bbox[0])}


#: a pickle an earlier dfbench wrote (torch.save); never loaded: unpickling a copied run folder can run code
LEGACY_CHECKPOINT = "checkpoint.pt"


def random_state_to_json(state: tuple) -> list:
    """``random.Random.getstate()`` as JSON: [version, [625 integers], gauss_next]."""
    version, internal, gauss_next = state
    return [version, list(internal), gauss_next]


def random_state_from_json(value: list) -> tuple:
    version, internal, gauss_next = value
    return (int(version), tuple(int(number) for number in internal), gauss_next)


def save_checkpoint(folder: Path, state: dict[str, Any]) -> Path:
    """The training state after a validation as safetensors + JSON (no pickle): ``checkpoint-<step>.safetensors``
    holds the tensors (head, optimizer moments, best head, best predictions), ``checkpoint.json`` the rest
    (step, epoch order, history, random states as integers) and the tensor file's name and sha256. Each file
    is written to a temp file and renamed, the JSON last, and the previous tensor file is removed after it, so
    the JSON always names a whole tensor file."""
    from safetensors.torch import save_file


    optimizer = state["optimizer"]
    tensors = {f"head.{name}": value for name, value in state["head"].items()}
    tensors.update({f"optimizer.{index}.{key}": value for index, moments in optimizer["state"].items()
                    for key, value in moments.items()})
    best = state["best"]
    tensors.update({f"best.state.{name}": value for name, value in best.get("state", {}).items()})
    tensors.update({f"best.predictions.{index}": value for index, value in enumerate(best.get("predictions", []))})
    tensor_file = folder / f"checkpoint-{state['step']}.safetensors"
    contiguous = {name: value.detach().cpu().clone().contiguous() for name, value in tensors.items()}   # unshared
    atomic_write(tensor_file, lambda temp: save_file(contiguous, str(temp)))
    document = {"format": 1, "step": state["step"], "epoch": state["epoch"], "history": state["history"],
                "order_rng": random_state_to_json(state["order_rng"]),
                "draw_rng": random_state_to_json(state["draw_rng"]),
                "optimizer_param_groups": optimizer["param_groups"],
                "optimizer_state_keys": {str(index): sorted(moments) for index, moments in optimizer["state"].items()},
                "best": {key: value for key, value in best.items() if key not in ("state", "predictions")},
                "best_predictions": len(best.get("predictions", [])),
                "tensors": tensor_file.name,
                "sha256": file_sha256(tensor_file)}
    atomic_write_text(folder / "checkpoint.json", json.dumps(document) + "\n")
    for old in folder.glob("checkpoint-*.safetensors"):
        if old != tensor_file:
            old.unlink()
    return folder / "checkpoint.json"


def load_checkpoint(folder: Path) -> dict[str, Any] | None:
    """The training state a killed run left in its folder (see :func:`save_checkpoint`), or ``None``. A pickle
    from an earlier dfbench (``checkpoint.pt``) is refused, never unpickled; a damaged checkpoint is one line."""
    from safetensors.torch import load_file


    if (folder / LEGACY_CHECKPOINT).exists():
        raise DfbenchInputError(f"run folder {folder}: {LEGACY_CHECKPOINT} is a pickle (an earlier dfbench's "
                                "checkpoint, or a file copied in); dfbench does not unpickle files from a run "
                                f"folder, since that can run code: delete {folder / LEGACY_CHECKPOINT} to train "
                                "from step 0")
    path = folder / "checkpoint.json"
    if not path.is_file():
        return None
    try:
        document = json.loads(path.read_text())
        tensor_file = folder / document["tensors"]
        if Path(document["tensors"]).name != document["tensors"]:
            raise ValueError("the tensor file must lie in the run folder")
        if file_sha256(tensor_file) != document["sha256"]:
            raise ValueError(f"{tensor_file.name} does not match its sha256")
        tensors = load_file(str(tensor_file))

        def group(prefix: str) -> dict[str, torch.Tensor]:
            return {name[len(prefix):]: value for name, value in tensors.items() if name.startswith(prefix)}

        optimizer_state = {int(index): {key: tensors[f"optimizer.{index}.{key}"] for key in keys}
                           for index, keys in document["optimizer_state_keys"].items()}
        best = dict(document["best"])
        if best:
            best["state"] = group("best.state.")
            best["predictions"] = [tensors[f"best.predictions.{index}"]
                                   for index in range(document["best_predictions"])]
        return {"step": int(document["step"]), "epoch": [int(index) for index in document["epoch"]],
                "history": document["history"], "head": group("head."),
                "optimizer": {"state": optimizer_state, "param_groups": document["optimizer_param_groups"]},
                "order_rng": random_state_from_json(document["order_rng"]),
                "draw_rng": random_state_from_json(document["draw_rng"]), "best": best}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DfbenchInputError(f"run folder {folder}: checkpoint.json cannot be resumed ({error}); delete "
                                "checkpoint.json and checkpoint-*.safetensors there to train from step 0") from None


def train(train_pairs: Sequence[SpairPair], val: Sequence[SpairPair], draws: Sequence[Features],
          options: GdfConvOptions, seed: int, device: torch.device, progress: bool = True,
          log: Callable[[str], None] | None = None, checkpoint: Path | None = None,
          announce: Callable[[str], None] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train the conv head on ``train_pairs`` and validate it on ``val`` at :func:`validation_steps`.

    ``draws[k]`` are the features of noise realisation k (``draws[0]`` also holds the validation
    images). Returns the validation of best PCK@0.1 bbox (the first on ties) — ``step``,
    ``pck_img``, ``pck_bbox``, the head's ``state`` and its ``predictions`` on ``val`` — and the
    history: losses and ``validations`` [(step, pck_img, pck_bbox), …]. With ``checkpoint`` (the run's
    folder), the whole training state is saved there after every validation (:func:`save_checkpoint`), and a
    run killed after one resumes from it with the same result as an uninterrupted run, saying so through
    ``announce``; ``log`` receives each validation."""
    if not train_pairs or not val:
        raise DfbenchInputError("spair/gdf-conv needs training pairs (trn) and validation pairs")
    probe = draws[0][train_pairs[0].src_key]          # one image's activations: the channels and their sources
    channels = grid_features({name: value.to(device) for name, value in probe.items()}).shape[1]
    torch.manual_seed(seed)
    head = ConvReadout(channels, readout_channels(channels, list(probe))).to(device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    order_rng, draw_rng = random.Random(seed), random.Random(f"{seed}:draws")
    checkpoints = set(validation_steps(options))
    best: dict[str, Any] = {}
    history: dict[str, Any] = {"loss": [], "validations": []}
    epoch: list[int] = []
    start = 0
    saved = load_checkpoint(checkpoint) if checkpoint else None
    if saved is not None:
        head.load_state_dict(saved["head"])
        optimizer.load_state_dict(saved["optimizer"])
        order_rng.setstate(saved["order_rng"])
        draw_rng.setstate(saved["draw_rng"])
        best, history, epoch, start = saved["best"], saved["history"], saved["epoch"], saved["step"] + 1
        history["resumed_at_step"] = start
        if announce:
            announce(f"spair/gdf-conv: resumed from the checkpoint in {checkpoint} at step {start} of "
                     f"{options.max_steps} (validated up to step {saved['step']})")
    for step in tqdm(range(start, options.max_steps), desc="gdf-conv train", unit="step", disable=not progress,
                     initial=start, total=options.max_steps):
        if not epoch:  # task-corres.py:153: np.random.permutation(train_anns)[:max_steps_per_epoch]
            epoch = order_rng.sample(range(len(train_pairs)), len(train_pairs))[: options.steps_per_epoch]
            epoch.reverse()
        pair = train_pairs[epoch.pop()]
        src_draw = draws[draw_rng.randrange(len(draws))] if len(draws) > 1 else draws[0]
        trg_draw = draws[draw_rng.randrange(len(draws))] if len(draws) > 1 else draws[0]
        head.train()
        src = head(_grid(src_draw, pair.src_key, device))
        trg = head(_grid(trg_draw, pair.trg_key, device))
        grid = src.shape[-1]
        src_index = points_to_grid_index(torch.tensor(pair.src_kps), pair.src_size, grid).to(device)
        trg_index = points_to_grid_index(torch.tensor(pair.trg_kps), pair.trg_size, grid).to(device)
        loss = symmetric_clip_loss(src, trg, src_index, trg_index)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history["loss"].append(round(loss.item(), 5))
        if step in checkpoints:
            predictions = predict(head, val, draws[0], device)
            pck_img, pck_bbox = validation_pck(val, predictions)
            history["validations"].append([step, pck_img, pck_bbox])
            if not best or pck_bbox > best["pck_bbox"]:
                best = {"step": step, "pck_img": pck_img, "pck_bbox": pck_bbox,
                        "state": copy.deepcopy(head.state_dict()), "predictions": predictions}
            if checkpoint:
                save_checkpoint(checkpoint, {"step": step, "head": head.state_dict(),
                                             "optimizer": optimizer.state_dict(), "order_rng": order_rng.getstate(),
                                             "draw_rng": draw_rng.getstate(), "epoch": epoch, "best": best,
                                             "history": history})
            if log:
                log(f"step {step}: loss {loss.item():.4f}, val PCK@0.1 img {pck_img:.2f} bbox {pck_bbox:.2f}")
    return best, history
