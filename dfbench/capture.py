"""Capture activations from a stock diffusers UNet with forward hooks, and stop the forward early.

Only public PyTorch mechanisms are used: ``register_forward_hook`` and
``register_forward_pre_hook`` on the UNet's own modules. Nothing in diffusers is patched or
re-implemented, so the captured tensors are exactly those the stock forward computes, whatever
attention processor is installed (SDPA, xformers, …).

Where each signal is read (docs/activations.md):

* a module name (``up_blocks.1``, ``…resnets.2``, ``…attentions.1``, ``…transformer_blocks.0``):
  the module's output (element 0 of a tuple or a ``BaseOutput``);
* ``.increment``: the output of the resnet's ``conv2`` — the residual branch just before the
  skip-add (dropout is the identity in eval mode);
* ``.attn1.q`` / ``.k`` / ``.v``: the outputs of ``attn1.to_q`` / ``to_k`` / ``to_v`` (before the
  head split); ``.attnN.out``: the output of the ``Attention`` module (after ``to_out``);
* ``.ff.inner``: the output of the GEGLU (``ff.net.0``);
* ``.attnN.map``: the head-mean attention probabilities, computed from the ``Attention`` module's own inputs
  (:mod:`dfbench.attention_maps`), one channel per key.

Token sequences (B×HW×C) become maps B×C×H×W: on a grid the backbone gives (a DiT's patch grid), else
with H and W read from the input of the enclosing ``Transformer2DModel`` (a UNet's). When every requested
activation has been captured, the forward is stopped by an exception raised from the last hook (truncation):
later modules never run.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from dfbench.attention_maps import MAP_SUFFIX, map_reader

Features = dict[str, torch.Tensor]
"""Activation name → float tensor B×C×h×w."""

_TRANSFORMER_RE = re.compile(r"^(.*\.attentions\.\d+)\.transformer_blocks\.\d+")


class _StopForward(Exception):
    """Raised by the last needed hook to end the forward pass early."""


def signal_module(name: str) -> str:
    """The module path whose output carries the canonical activation ``name``."""
    if name.endswith(".increment"):
        return name[: -len(".increment")] + ".conv2"
    if match := re.search(r"\.(attn[12]?)\.(q|k|v)$", name):
        return name[: match.start()] + f".{match.group(1)}.to_{match.group(2)}"
    if match := re.search(r"\.(attn[12])\.(out|map)$", name):
        return name[: match.start()] + f".{match.group(1)}"
    if name.endswith(".ff.inner"):
        return name[: -len(".inner")] + ".net.0"
    return name


def _first_tensor(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return _first_tensor(output[0])
    if hasattr(output, "to_tuple"):  # diffusers BaseOutput, e.g. Transformer2DModelOutput
        return _first_tensor(output.to_tuple()[0])
    raise TypeError(f"cannot read a tensor from module output of type {type(output).__name__}")


def tokens_to_map(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """B×(H·W)×C tokens (row-major, as diffusers flattens them) → B×C×H×W."""
    batch, length, channels = tokens.shape
    if length != height * width:
        raise ValueError(f"{length} tokens do not form a {height}×{width} map")
    return tokens.permute(0, 2, 1).reshape(batch, channels, height, width)


class ActivationCapture:
    """Records the requested activations during one UNet forward.

    Usage::

        capture = ActivationCapture(unet, ["up_blocks.1", "up_blocks.1.attentions.0.transformer_blocks.0.attn1.q"])
        features = capture.run(lambda: unet(latents, t, encoder_hidden_states=text))

    ``names`` must be canonical (see :mod:`dfbench.activations`). With ``stop_early`` (default) the
    forward ends as soon as the last requested activation is recorded. ``token_grid``: the (rows, columns) every
    token sequence forms (a DiT's patch grid); without it, a UNet's enclosing ``Transformer2DModel`` gives each.
    ``streams``: for modules whose output is a tuple of streams (SD3's and FLUX's joint blocks return
    ``(text, image)``), the element to read (the image stream). A token sequence longer than the grid is a joint
    one with the image tokens last (FLUX's single blocks: ``[text, image]``): its last rows·columns tokens are
    read. ``readers``: names read from another module or transformed (FLUX's AdaLN modulation vectors), as
    name → (module path, a function of the module's output).
    """

    def __init__(self, unet: nn.Module, names: Sequence[str], stop_early: bool = True,
                 token_grid: tuple[int, int] | None = None, streams: dict[str, int] | None = None,
                 readers: dict[str, tuple[str, Callable[[Any], torch.Tensor]]] | None = None) -> None:
        self.unet = unet
        self.names = list(dict.fromkeys(names))
        self.stop_early = stop_early
        self.token_grid = token_grid
        #: module path → the element of its output tuple that holds the image tokens (default: the first)
        self.streams = streams or {}
        self.readers = readers or {}
        modules = dict(unet.named_modules())
        self._paths = {name: self.readers[name][0] if name in self.readers else signal_module(name)
                       for name in self.names}
        self._targets: dict[str, list[str]] = {}
        for name in self.names:
            path = self._paths[name]
            if path not in modules:
                raise KeyError(f"{name!r}: the model has no module {path!r}")
            self._targets.setdefault(path, []).append(name)
        self._modules = modules
        self._spatial: dict[str, tuple[int, int]] = {}
        self.features: Features = {}

    def run(self, forward: Callable[[], Any]) -> Features:
        """Call ``forward()`` with the hooks installed; return the captured features."""
        self.features = {}
        self._spatial = {}
        handles = []
        try:
            for transformer in sorted({m.group(1) for n in self.names if (m := _TRANSFORMER_RE.match(n))}):
                handles.append(
                    self._modules[transformer].register_forward_pre_hook(self._spatial_hook(transformer))
                )
            for path, names in self._targets.items():
                handles.append(self._modules[path].register_forward_hook(self._capture_hook(names), with_kwargs=True))
            try:
                forward()
            except _StopForward:
                pass
        finally:
            for handle in handles:
                handle.remove()
        missing = [name for name in self.names if name not in self.features]
        if missing:
            raise RuntimeError(f"the forward pass never produced: {', '.join(missing)}")
        return {name: self.features[name] for name in self.names}

    def _spatial_hook(self, transformer: str) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            hidden = args[0] if args else None
            if isinstance(hidden, torch.Tensor) and hidden.dim() == 4:
                self._spatial[transformer] = (hidden.shape[2], hidden.shape[3])

        return hook

    def _capture_hook(self, names: list[str]) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
            index = self.streams.get(self._paths[names[0]], 0)
            tensor = _first_tensor(output[index] if index else output)
            for name in names:
                if name in self.readers:
                    value = self.readers[name][1](output)
                elif MAP_SUFFIX.search(name):
                    value = map_reader(module, args, kwargs)
                else:
                    value = tensor
                if value.dim() == 3 and self.token_grid is not None:
                    height, width = self.token_grid
                    value = tokens_to_map(value[:, -height * width:], height, width)
                elif value.dim() == 3:
                    match = _TRANSFORMER_RE.match(name)
                    if not match or match.group(1) not in self._spatial:
                        raise RuntimeError(f"{name!r}: token output without a known spatial size")
                    value = tokens_to_map(value, *self._spatial[match.group(1)])
                self.features[name] = value
            if self.stop_early and len(self.features) == len(self.names):
                raise _StopForward

        return hook
