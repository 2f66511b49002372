"""The ddpm-segmentation pixel classifier: an ensemble of MLPs trained together, voted by mode.

One member is the release's ``pixel_classifier`` (``src/pixel_classifier.py:14-36``): Linear d→128,
ReLU, BatchNorm1d, Linear 128→32, ReLU, BatchNorm1d, Linear 32→C (256 / 128 hidden for ≥ 30 classes);
Linear weights normal(0, 0.02), biases 0, BatchNorm at PyTorch's defaults (``init_weights``, lines
38-63: only ``BatchNorm2d`` is re-initialised there). Training follows ``train_interpreter.py``
(lines 107-160): cross-entropy, Adam lr 1e-3, batches of 64 pixels reshuffled every epoch with the
last partial batch dropped, at most 100 epochs, and from epoch 4 on (``epoch > 3``) a member stops
once its batch loss has not beaten its best for more than 50 batches.

:class:`PixelClassifierEnsemble` holds M members as stacked weights, so one batched matmul trains
all of them: each member draws its own pixel order, and its loss, gradient, BatchNorm statistics
and Adam update are its own, exactly as M separate trainings. A member that stops is saved to
``member-<m>.safetensors`` (in the release's ``layers.*`` key names) and dropped from the stack;
a resumed training loads the saved members and trains only the others.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dfbench.atomic import atomic_write
from dfbench.heads.pixel_features import PixelFeatureBank

BN_MOMENTUM, BN_EPS = 0.1, 1e-5


def hidden_sizes(num_classes: int) -> tuple[int, int]:
    """The release's hidden widths: (128, 32) below 30 classes, (256, 128) otherwise."""
    return (128, 32) if num_classes < 30 else (256, 128)


def member_generator(seed: int, member: int, purpose: str) -> torch.Generator:
    """A generator of its own for each (seed, member, purpose): ``init`` or ``order``."""
    digest = hashlib.sha256(f"{seed}:{member}:{purpose}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") % 2**63)


class PixelClassifierEnsemble(torch.nn.Module):
    """M pixel classifiers as stacked weights: ``forward`` maps M×B×d to M×B×C, member by member."""

    def __init__(self, members: int, dim: int, num_classes: int):
        super().__init__()
        self.sizes = (dim, *hidden_sizes(num_classes), num_classes)
        self.weights = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.zeros(members, fan_in, fan_out)) for fan_in, fan_out in zip(
                self.sizes[:-1], self.sizes[1:], strict=True)])
        self.biases = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.zeros(members, 1, fan_out)) for fan_out in self.sizes[1:]])
        self.norm_weights = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.ones(members, width)) for width in self.sizes[1:3]])
        self.norm_biases = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.zeros(members, width)) for width in self.sizes[1:3]])
        for index, width in enumerate(self.sizes[1:3]):
            self.register_buffer(f"running_mean{index}", torch.zeros(members, width))
            self.register_buffer(f"running_var{index}", torch.ones(members, width))
        self.batches_tracked: torch.Tensor
        self.register_buffer("batches_tracked", torch.zeros((), dtype=torch.long))

    @property
    def members(self) -> int:
        return self.weights[0].shape[0]

    def initialise(self, seed: int, member_ids: list[int]) -> None:
        """Linear weights normal(0, 0.02) from each member's own generator, biases 0 (``init_weights``)."""
        with torch.no_grad():
            for slot, member in enumerate(member_ids):
                generator = member_generator(seed, member, "init")
                for weight in self.weights:
                    # drawn as nn.Linear stores it (out × in), used transposed
                    weight[slot] = torch.empty(weight.shape[2], weight.shape[1]).normal_(
                        0.0, 0.02, generator=generator).T

    def _norm(self, hidden: torch.Tensor, index: int) -> torch.Tensor:
        members, batch, width = hidden.shape
        flat = hidden.transpose(0, 1).reshape(batch, members * width)    # one BatchNorm1d column per (member, unit)
        normed = F.batch_norm(flat, getattr(self, f"running_mean{index}").view(-1),
                              getattr(self, f"running_var{index}").view(-1), self.norm_weights[index].reshape(-1),
                              self.norm_biases[index].reshape(-1), self.training, BN_MOMENTUM, BN_EPS)
        return normed.view(batch, members, width).transpose(0, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        hidden = features
        for index in range(3):
            hidden = torch.baddbmm(self.biases[index], hidden, self.weights[index])
            if index < 2:
                hidden = self._norm(torch.relu(hidden), index)
        return hidden

    def member_state(self, slot: int) -> dict[str, torch.Tensor]:
        """Member ``slot`` as the release's ``pixel_classifier.state_dict()`` (``layers.0.weight``, …)."""
        state = {}
        for index, layer in enumerate((0, 3, 6)):
            state[f"layers.{layer}.weight"] = self.weights[index][slot].T.contiguous()
            state[f"layers.{layer}.bias"] = self.biases[index][slot, 0].clone()
        for index, layer in enumerate((2, 5)):
            state[f"layers.{layer}.weight"] = self.norm_weights[index][slot].clone()
            state[f"layers.{layer}.bias"] = self.norm_biases[index][slot].clone()
            state[f"layers.{layer}.running_mean"] = getattr(self, f"running_mean{index}")[slot].clone()
            state[f"layers.{layer}.running_var"] = getattr(self, f"running_var{index}")[slot].clone()
            state[f"layers.{layer}.num_batches_tracked"] = self.batches_tracked.clone()
        return {key: value.detach() for key, value in state.items()}

    def load_member_state(self, slot: int, state: dict[str, torch.Tensor]) -> None:
        """Put a release-layout member state into slot ``slot``."""
        with torch.no_grad():
            for index, layer in enumerate((0, 3, 6)):
                self.weights[index][slot] = state[f"layers.{layer}.weight"].T
                self.biases[index][slot, 0] = state[f"layers.{layer}.bias"]
            for index, layer in enumerate((2, 5)):
                self.norm_weights[index][slot] = state[f"layers.{layer}.weight"]
                self.norm_biases[index][slot] = state[f"layers.{layer}.bias"]
                getattr(self, f"running_mean{index}")[slot] = state[f"layers.{layer}.running_mean"]
                getattr(self, f"running_var{index}")[slot] = state[f"layers.{layer}.running_var"]

    def keep(self, slots: list[int]) -> PixelClassifierEnsemble:
        """A new ensemble of the members in ``slots`` (copies of their weights and statistics)."""
        kept = PixelClassifierEnsemble(len(slots), self.sizes[0], self.sizes[-1])
        with torch.no_grad():
            for mine, theirs in zip(self.state_dict().values(), kept.state_dict().values(), strict=True):
                theirs.copy_(mine[slots] if mine.dim() else mine)
        return kept.train(self.training)


def keep_adam(optimizer: torch.optim.Adam, old: PixelClassifierEnsemble, new: PixelClassifierEnsemble,
              slots: list[int]) -> torch.optim.Adam:
    """An Adam over ``new`` that carries on the moments of ``old``'s members in ``slots`` (Adam is
    element-wise, so this is each kept member's own optimizer, unchanged)."""
    fresh = torch.optim.Adam(new.parameters(), **{key: optimizer.defaults[key] for key in ("lr", "betas", "eps")})
    for old_param, new_param in zip(old.parameters(), new.parameters(), strict=True):
        state = optimizer.state.get(old_param)
        if state:
            fresh.state[new_param] = {"step": state["step"].clone(), "exp_avg": state["exp_avg"][slots].clone(),
                                      "exp_avg_sq": state["exp_avg_sq"][slots].clone()}
    return fresh


@dataclass(frozen=True)
class EnsembleOptions:
    """The release's training settings (``train_interpreter.py``)."""

    members: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    max_epochs: int = 100
    #: early stopping is checked in epochs after this one (``if epoch > 3``)
    patience_after_epoch: int = 3
    #: a member stops when its batch loss has not improved for more than this many batches
    patience: int = 50


@dataclass
class PixelSet:
    """Labelled training pixels: image index, row, column (of the output grid) and class id."""

    image: torch.Tensor
    row: torch.Tensor
    column: torch.Tensor
    label: torch.Tensor

    def __len__(self) -> int:
        return len(self.label)


def member_path(folder: Path, member: int) -> Path:
    return Path(folder) / f"member-{member}.safetensors"


def save_member(path: Path, state: dict[str, torch.Tensor], info: dict) -> None:
    """One trained member, atomically, with how its training went in the metadata."""
    from safetensors.torch import save_file

    atomic_write(path, lambda temp: save_file(state, str(temp), metadata={"training": json.dumps(info)}))


def load_member(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as handle:
        info = json.loads((handle.metadata() or {}).get("training", "{}"))
    return load_file(str(path)), info


def train_ensemble(bank: PixelFeatureBank, pixels: PixelSet, num_classes: int, seed: int, folder: Path,
                   options: EnsembleOptions = EnsembleOptions(), device: str | torch.device = "cpu",
                   progress: bool = False, on_saved: Callable[[int], None] | None = None
                   ) -> tuple[PixelClassifierEnsemble, list[dict]]:
    """Train (or resume) the ensemble on ``pixels``; members are saved in ``folder`` as they finish.

    Returns the whole ensemble in eval mode and each member's training record (epochs, iterations,
    best batch loss, whether it stopped early). ``on_saved(member)`` is called after each save."""
    folder = Path(folder)
    total = len(pixels)
    batches = total // options.batch_size
    if batches < 1:
        raise ValueError(f"{total} labelled training pixels: fewer than one batch of {options.batch_size}")
    finished: dict[int, tuple[dict[str, torch.Tensor], dict]] = {}
    for member in range(options.members):
        if member_path(folder, member).is_file():
            finished[member] = load_member(member_path(folder, member))
    active = [member for member in range(options.members) if member not in finished]
    if active:
        ensemble = PixelClassifierEnsemble(len(active), bank.dim, num_classes)
        ensemble.initialise(seed, active)
        ensemble = ensemble.to(device).train()
        optimizer = torch.optim.Adam(ensemble.parameters(), lr=options.lr)
        orders = {member: member_generator(seed, member, "order") for member in active}
        best = {member: 10_000_000.0 for member in active}     # the release's initial best_loss
        stale = {member: 0 for member in active}
        iteration = 0
        bar = tqdm(total=options.max_epochs * batches, desc="pixel classifiers", unit="it", disable=not progress)
        for epoch in range(options.max_epochs):
            permutations = {member: torch.randperm(total, generator=orders[member]) for member in active}
            for batch in range(batches):
                chosen = torch.stack([permutations[member][batch * options.batch_size:(batch + 1) *
                                                           options.batch_size] for member in active])
                flat = chosen.reshape(-1)
                features = bank.gather(pixels.image[flat], pixels.row[flat], pixels.column[flat])
                logits = ensemble(features.view(len(active), options.batch_size, -1).to(device))
                targets = pixels.label[chosen].to(device=device, dtype=torch.long)
                losses = F.cross_entropy(logits.reshape(-1, num_classes), targets.reshape(-1),
                                         reduction="none").view(len(active), -1).mean(1)
                optimizer.zero_grad()
                losses.sum().backward()
                optimizer.step()
                ensemble.batches_tracked += 1
                iteration += 1
                bar.update(1)
                if epoch <= options.patience_after_epoch:
                    continue
                stopped = []
                for member, loss in zip(active, losses.tolist(), strict=True):
                    if loss < best[member]:
                        best[member], stale[member] = loss, 0
                    else:
                        stale[member] += 1
                    if stale[member] > options.patience:
                        stopped.append(member)
                if stopped:
                    for member in stopped:
                        info = {"epochs": epoch + 1, "iterations": iteration, "best_loss": best[member],
                                "stopped_early": True}
                        state = ensemble.member_state(active.index(member))
                        save_member(member_path(folder, member), state, info)
                        finished[member] = (state, info)
                        if on_saved:
                            on_saved(member)
                    slots = [slot for slot, member in enumerate(active) if member not in stopped]
                    active = [active[slot] for slot in slots]
                    if not active:
                        break
                    kept = ensemble.keep(slots)
                    optimizer = keep_adam(optimizer, ensemble, kept, slots)
                    ensemble = kept
                    bar.set_postfix(training=len(active))
            if not active:
                break
        bar.close()
        for slot, member in enumerate(active):   # ran all max_epochs
            info = {"epochs": options.max_epochs, "iterations": iteration, "best_loss": best[member],
                    "stopped_early": False}
            state = ensemble.member_state(slot)
            save_member(member_path(folder, member), state, info)
            finished[member] = (state, info)
            if on_saved:
                on_saved(member)
    whole = PixelClassifierEnsemble(options.members, bank.dim, num_classes)
    for member in range(options.members):
        whole.load_member_state(member, finished[member][0])
    return whole.to(device).eval(), [finished[member][1] for member in range(options.members)]


def mode_vote(votes: torch.Tensor) -> torch.Tensor:
    """The most frequent class over dim 0 (M×P → P); ties go to the smallest id, as ``torch.mode``."""
    return torch.mode(votes, dim=0).values


def predict_pixels(ensemble: PixelClassifierEnsemble, features: torch.Tensor) -> torch.Tensor:
    """Class ids (P) of pixels with features P×d: each member's argmax, then the mode over members
    (``predict_labels``, ``src/pixel_classifier.py:69-109``), voted on the CPU as the release does (it moves each
    member's labels to the CPU, line 94, before ``torch.mode``, line 106: ties break as on a CPU on any device)."""
    with torch.no_grad():
        logits = ensemble(features.to(ensemble.weights[0].device).expand(ensemble.members, -1, -1))
    return mode_vote(logits.argmax(2).cpu())
