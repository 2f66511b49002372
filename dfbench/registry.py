"""The plugin registry: named factories for backbones, tasks and presets.

A :class:`Registry` maps a name to an object. An entry is added in one of three ways:

* by decorator: ``@BACKBONES.register("my-model")`` on a factory function;
* lazily by string: ``BACKBONES.register("sd15", "dfbench.backbones.stable_diffusion:sd15")`` —
  nothing is imported until the entry is first used;
* from a third-party package, through the entry-point group ``dfbench.plugins``: each entry point
  names a module or a callable; loading it (and calling it, if callable) registers its entries;
* for a family of composed names, by pattern: ``BACKBONES.register_pattern("*+*", "module:attr")`` —
  a name that matches and is not registered itself is handed to ``attr(name)``, which returns the
  entry (fusions such as ``sd15+dinov2-base``).

The built-in entries are listed in :mod:`dfbench.builtins` (backbones, tasks) and
:mod:`dfbench.presets`; both are imported on the first look-up, with the plugins.

Unknown names fail with :class:`~dfbench.errors.UnknownNameError` naming the closest valid names.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import inspect
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from dfbench.errors import DfbenchInputError, UnknownNameError

PLUGIN_GROUP = "dfbench.plugins"
_plugins_loaded = False


def load_plugins() -> None:
    """Register the built-in entries, then import every installed ``dfbench.plugins`` entry point
    once (it registers its own entries)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    importlib.import_module("dfbench.builtins")
    importlib.import_module("dfbench.presets")
    for entry_point in entry_points(group=PLUGIN_GROUP):
        loaded = entry_point.load()
        if callable(loaded):
            loaded()


def import_object(target: str) -> Any:
    """Import ``"package.module:attribute"`` and return the attribute."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"lazy registry target {target!r} must look like 'package.module:attribute'")
    return getattr(importlib.import_module(module_name), attribute)


def closest_names(name: str, candidates: list[str], n: int = 3) -> list[str]:
    """The ``n`` candidates most similar to ``name`` (difflib ratio), best first."""
    return difflib.get_close_matches(name, candidates, n=n, cutoff=0.4)


def unknown_name_message(kind: str, name: str, candidates: list[str], hint: str = "") -> str:
    """One line: ``unknown KIND 'name'; did you mean: a, b?`` plus an optional hint."""
    message = f"unknown {kind} {name!r}"
    suggestions = closest_names(name, candidates)
    if suggestions:
        message += "; did you mean: " + ", ".join(suggestions) + "?"
    if hint:
        message += f" ({hint})"
    return message


class Registry:
    """A named collection of objects (usually factories), with lazy and plugin entries."""

    def __init__(self, kind: str, list_command: str = "") -> None:
        self.kind = kind
        self.list_command = list_command or f"dfbench list {kind}s"
        self._entries: dict[str, Any] = {}
        self._lazy: dict[str, str] = {}
        self._patterns: dict[str, str] = {}

    def register(self, name: str, obj: Any = None, *, override: bool = False) -> Any:
        """Register ``obj`` (an object or a ``"module:attr"`` string) under ``name``.

        Without ``obj`` this returns a decorator: ``@REGISTRY.register("name")``.
        """
        if obj is None:

            def decorator(target: Callable) -> Callable:
                self.register(name, target, override=override)
                return target

            return decorator
        if not override and name in self:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries.pop(name, None)
        self._lazy.pop(name, None)
        if isinstance(obj, str):
            self._lazy[name] = obj
        else:
            self._entries[name] = obj
        return obj

    def register_pattern(self, pattern: str, target: str) -> None:
        """Names matching the glob ``pattern`` (and not registered themselves) resolve to
        ``import_object(target)(name)``: the entry is made from the name."""
        self._patterns[pattern] = target

    def pattern_for(self, name: str) -> str | None:
        """The registered pattern ``name`` matches, if any."""
        return next((pattern for pattern in self._patterns if fnmatch.fnmatchcase(name, pattern)), None)

    def unregister(self, name: str) -> None:
        """Remove ``name`` (a plugin's or a test's entry); unknown names are ignored."""
        self._entries.pop(name, None)
        self._lazy.pop(name, None)

    def get(self, name: str) -> Any:
        """The object registered under ``name`` (importing it if it was registered lazily)."""
        load_plugins()
        if name in self._entries:
            return self._entries[name]
        if name in self._lazy:
            obj = import_object(self._lazy.pop(name))
            self._entries[name] = obj
            return obj
        pattern = self.pattern_for(name)
        if pattern is not None:
            return import_object(self._patterns[pattern])(name)
        raise UnknownNameError(
            unknown_name_message(self.kind, name, self.names(), f"see `{self.list_command}`")
        )

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching the glob ``pattern``, sorted."""
        load_plugins()
        every = set(self._entries) | set(self._lazy)
        return sorted(name for name in every if fnmatch.fnmatchcase(name, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._lazy

    def __len__(self) -> int:
        return len(self.names())


BACKBONES = Registry("backbone")
TASKS = Registry("task")
PRESETS = Registry("preset")


def create_backbone(name: str, **overrides: Any) -> Any:
    """Create the backbone registered as ``name``; keyword overrides go to its factory."""
    factory = BACKBONES.get(name)
    parameters = inspect.signature(factory).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    unknown = sorted(key for key in overrides if key not in parameters and not takes_any)
    if unknown:
        raise DfbenchInputError(
            f"backbone {name} does not take {', '.join(unknown)}; it takes: "
            + ", ".join(key for key, p in parameters.items() if p.kind is not inspect.Parameter.VAR_KEYWORD)
        )
    if overrides.get("device") is not None:
        check_device(str(overrides["device"]))
    backbone = factory(**overrides)
    from dfbench.backbones.protocol import missing_members  # torch: only once a backbone is made

    missing = missing_members(backbone)
    if missing:
        raise DfbenchInputError(f"backbone {name}: its factory made a {type(backbone).__name__} without "
                                f"{', '.join(missing)} (the Backbone contract: dfbench/backbones/protocol.py)")
    return backbone


def weightless_backbone(name: str, **overrides: Any) -> Any:
    """The backbone ``name`` for its catalog and names only: built on the meta device (no weights, no compute)
    when its factory takes ``init``, else built as usual (a small third-party model)."""
    parameters = inspect.signature(BACKBONES.get(name)).parameters
    takes_init = "init" in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    return create_backbone(name, **({"init": "meta"} if takes_init else {}), **overrides)


def check_device(device: str) -> None:
    """A device torch knows and this machine has; otherwise one line saying what there is."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise DfbenchInputError(f"--device {device!r}: not a device torch knows (use cpu, cuda, cuda:1, mps)") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise DfbenchInputError(f"--device {device}: this machine has no CUDA GPU visible to torch; use "
                                    "--device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise DfbenchInputError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise DfbenchInputError(f"--device {device}: MPS is not available on this machine; use --device cpu")


def get_preset(name: str) -> Any:
    """The :class:`~dfbench.presets.Preset` registered as ``name``."""
    return PRESETS.get(name)
