"""Truncated loading: a denoiser loaded only as deep as the selected activations reach.

The forward of a capture stops right after the deepest selected activation, so the blocks after it never run. A
truncated load never materialises them either: the denoiser is built on the meta device from its config, the blocks
past the deepest selected one (in the order the forward runs its block stacks, e.g. FLUX's 19 double blocks, then
its 38 single blocks) are replaced by :class:`TruncatedBlock` placeholders without parameters, and only the other
tensors are read from the safetensors files, one shard at a time. FLUX.1-dev read to ``single_transformer_blocks.9``
loads 7.9 B of its 11.9 B values.

Features are identical to a full load's. The weights' fingerprint covers the tensors loaded, so a truncated model's
features are cached apart from a full model's (never a wrong hit: they depend on those tensors only).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from safetensors import safe_open

from dfbench.errors import DfbenchInputError

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"


class TruncatedBlock(torch.nn.Module):
    """The place of a block a truncated load left out: no parameters; reaching it is one clear error."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.block_name = name

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise DfbenchInputError(f"{self.block_name} was not loaded (the backbone was loaded truncated, for shallower "
                                "activations); build it again without --truncate")


def blocks_to_keep(selection: Sequence[str], stacks: dict[str, int]) -> dict[str, int] | None:
    """How many blocks of each stack (``stacks``: name → size, in the forward's order) the selection needs: every block
    of the stacks before the deepest selected one, that stack's up to the deepest index, none of the later stacks.
    ``None`` (load everything) when a selected name is in no stack."""
    order = list(stacks)
    deepest: tuple[int, int] | None = None
    for name in selection:
        match = re.match(r"^(\w+)\.(-?\d+)(?=\.|$)", name)
        if match is None or match[1] not in stacks:
            return None
        index = int(match[2]) % stacks[match[1]] if int(match[2]) < 0 else int(match[2])
        position = (order.index(match[1]), index)
        deepest = position if deepest is None or position > deepest else deepest
    if deepest is None:
        return None
    stack_position, index = deepest
    return {stack: size if position < stack_position else index + 1 if position == stack_position else 0
            for position, (stack, size) in enumerate(stacks.items())}


def weight_files(folder: Path) -> dict[str, list[str]]:
    """The safetensors files of a diffusers model folder and the tensor names each holds (an index's shards, or the
    one file)."""
    if (folder / INDEX_NAME).is_file():
        files: dict[str, list[str]] = {}
        for tensor, shard in json.loads((folder / INDEX_NAME).read_text())["weight_map"].items():
            files.setdefault(shard, []).append(tensor)
        return files
    if (folder / WEIGHTS_NAME).is_file():
        with safe_open(folder / WEIGHTS_NAME, framework="pt") as handle:
            return {WEIGHTS_NAME: list(handle.keys())}
    raise DfbenchInputError(f"{folder}: no {WEIGHTS_NAME} or {INDEX_NAME} (a truncated load reads safetensors only)")


def local_folder(model_id: str, subfolder: str, local_files_only: bool | None) -> Path:
    """The model's ``subfolder`` on disk: in a local folder, or the hub's files through the local cache."""
    if Path(model_id).is_dir():
        return Path(model_id) / subfolder
    from huggingface_hub import snapshot_download

    root = snapshot_download(model_id, allow_patterns=[f"{subfolder}/*"], local_files_only=bool(local_files_only))
    return Path(root) / subfolder


def load_truncated(model_class: Any, model_id: str, subfolder: str, selection: Sequence[str],
                   stack_names: Sequence[str], dtype: torch.dtype, local_files_only: bool | None = None
                   ) -> tuple[Any, str | None]:
    """The denoiser of ``model_id`` loaded only as deep as ``selection`` needs (see the module docstring), cast to
    ``dtype``, and the name of its deepest loaded block (``None``: nothing was left out, a full load)."""
    folder = local_folder(model_id, subfolder, local_files_only)
    config = model_class.load_config(folder)
    with init_empty_weights():        # parameters on the meta device, buffers (computed, not loaded) as usual
        model = model_class.from_config(config)
    keep = blocks_to_keep(selection, {stack: len(getattr(model, stack)) for stack in stack_names})
    if keep is None:
        return None, None
    deepest = None
    for stack, kept in keep.items():
        blocks = getattr(model, stack)
        if kept:
            deepest = f"{stack}.{kept - 1}"
        for index in range(kept, len(blocks)):
            blocks[index] = TruncatedBlock(f"{stack}.{index}")
    wanted = set(model.state_dict())
    loaded: dict[str, torch.Tensor] = {}
    for shard, names in weight_files(folder).items():
        needed = [name for name in names if name in wanted]
        if not needed:
            continue                                      # a shard of left-out blocks only: never opened
        with safe_open(folder / shard, framework="pt") as handle:
            for name in needed:
                loaded[name] = handle.get_tensor(name).to(dtype)
        model.load_state_dict(loaded, strict=False, assign=True)
        loaded.clear()
    missing = sorted(name for name, tensor in model.state_dict().items() if tensor.is_meta)
    if missing:
        raise DfbenchInputError(f"{folder}: the weight files lack {len(missing)} tensors of the blocks to load "
                                f"(first: {missing[0]}); is it a complete {subfolder}/ folder?")
    return model.eval(), deepest


def load_denoiser(model_class: Any, model_id: str, subfolder: str, dtype: torch.dtype,
                  load_only: Sequence[str] | None, stack_names: Sequence[str], local_files_only: bool | None
                  ) -> tuple[Any, str | None]:
    """The denoiser of ``model_id``: truncated to ``load_only`` where that leaves blocks out (:func:`load_truncated`),
    else with diffusers' ``from_pretrained``; and its deepest loaded block (``None``: all of it)."""
    if load_only:
        model, deepest = load_truncated(model_class, model_id, subfolder, load_only, stack_names, dtype,
                                        local_files_only)
        if model is not None:
            return model, deepest
    common = {"local_files_only": local_files_only} if local_files_only is not None else {}
    return model_class.from_pretrained(model_id, subfolder=subfolder, torch_dtype=dtype, **common), None
