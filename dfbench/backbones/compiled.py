"""``--compile``: ``torch.compile`` (inductor) of the denoiser's blocks the run passes through and of the VAE
encoder, with static shapes per resolution.

Activations are read by forward hooks and the forward is stopped early after the last one
(:mod:`dfbench.capture`), so the denoiser is not compiled whole: each of its top-level blocks (``conv_in``,
``time_embedding``, ``down_blocks.i``, ``mid_block``, ``up_blocks.i``, a DiT's ``transformer_blocks.i`` …)
that holds no hook of the run is compiled in place with ``nn.Module.compile`` (the module keeps its name, its
weights and the model's call order); a block holding a hook, and everything after it, runs eager. For
``up_blocks.1`` of SD that compiles everything the truncated pass runs before it. The encoder of the VAE is
compiled the same way. Compiled blocks run in ``channels_last`` where the block has convolutions (oneDNN's and
cuDNN's preferred layout).

Compiling changes the floating-point order, not the recipe: ``compile`` is a setting outside the feature cache's
key and the run's identity, and compiled features equal eager ones within 1e-4 (relative) on the CPU
(``tests/test_compile.py``). A CPU without a C++ compiler cannot compile: that is said in one line and the
run goes on eager.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from dfbench.capture import signal_module


def top_level_blocks(denoiser: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(path, module) of the denoiser's top-level blocks, a ``ModuleList``'s elements one by one."""
    for name, child in denoiser.named_children():
        if isinstance(child, nn.ModuleList):
            for index, element in enumerate(child):
                yield f"{name}.{index}", element
        else:
            yield name, child


def can_compile(device: torch.device) -> str | None:
    """Why ``torch.compile`` cannot run here (inductor on the CPU needs a C++ compiler), or None."""
    if device.type == "cpu" and not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")):
        return "torch.compile on the CPU needs a C++ compiler (g++ or clang++), and none is on PATH"
    return None


def _has_convolutions(module: nn.Module) -> bool:
    return any(isinstance(layer, nn.Conv2d) for layer in module.modules())


def compile_blocks(backbone: Any, names: list[str]) -> None:
    """Compile the blocks of ``backbone``'s denoiser that hold no hook for the canonical ``names``, and its VAE
    encoder; each only once (a later run with other names compiles what it can, and never a block it hooks)."""
    compiled: set[str] = backbone.__dict__.setdefault("compiled_blocks", set())
    if "unavailable" in compiled:
        return
    reason = can_compile(backbone.device)
    if reason is not None:
        print(f"dfbench: {reason}; running eager", file=sys.stderr)
        compiled.add("unavailable")
        return
    hooked = [signal_module(name) for name in names]
    for path, block in top_level_blocks(backbone.denoiser):
        if path in compiled or not any(parameter.numel() for parameter in block.parameters()):
            continue
        if any(target == path or target.startswith(path + ".") for target in hooked):
            break            # this block is hooked: it and every later block stay eager
        module: Any = block          # nn.Module.to takes memory_format; its type stub does not say so
        if _has_convolutions(block):
            module.to(memory_format=torch.channels_last)
        block.compile(dynamic=False)
        compiled.add(path)
    encoder = backbone.vae.encoder
    if "vae.encoder" not in compiled:
        encoder.to(memory_format=torch.channels_last)
        encoder.compile(dynamic=False)
        compiled.add("vae.encoder")
