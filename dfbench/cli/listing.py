"""dfbench list: the registered backbones, tasks (with protocols and options) and presets."""

from __future__ import annotations

import argparse


def add_parser(commands: argparse._SubParsersAction) -> None:
    listing = commands.add_parser("list", help="list registered backbones, tasks (with protocols and options) or "
                                  "presets")
    listing.add_argument("what", nargs="?", default="all", choices=["all", "backbones", "tasks", "presets"])
    listing.add_argument("--pattern", default="*", help="glob filter on names, e.g. 'tiny-*'")
    listing.set_defaults(handler=cmd_list)


def cmd_list(args: argparse.Namespace) -> int:
    from dfbench import registry

    sections = {"backbones": registry.BACKBONES, "tasks": registry.TASKS, "presets": registry.PRESETS}
    chosen = sections if args.what == "all" else {args.what: sections[args.what]}
    for title, reg in chosen.items():
        names = reg.names(args.pattern)
        print(f"{title}:")
        if not names:
            print("  (none registered)")
        for name in names:
            print(f"  {name:<22} {describe(reg.get(name))}")
            if title == "tasks":
                print_protocols(reg.get(name)())
        if title == "backbones":
            print("  A+B[+…]                fusion of registered backbones (e.g. sd15+dinov2-base): activations "
                  "<source>:<name>, options via --backbone-option (see the README, Backbones)")
    return 0


def print_protocols(task) -> None:
    """Each protocol of a task with its version and options (name, type, default)."""
    for line in protocol_lines(task):
        print(f"    {line}")


def protocol_lines(task) -> list[str]:
    """Two lines per protocol of ``task``, from its metadata: ``task/protocol vN: description`` and its
    options (name: type = default)."""
    import dataclasses
    import typing

    from dfbench.options import type_name

    lines = []
    for protocol in task.protocols.values():
        hints = typing.get_type_hints(protocol.options)
        fields = ", ".join(f"{f.name}: {type_name(hints[f.name])} = {f.default!r}"
                           for f in dataclasses.fields(protocol.options))
        lines += [f"{task.name}/{protocol.name} v{protocol.version}: {protocol.description}",
                  f"  options: {fields or 'none'}"]
    return lines


def tasks_help() -> str:
    """The end of ``run`` / ``score`` / ``sweep`` ``--help``, generated from the registered tasks: each task's
    default split and every protocol with its options."""
    from dfbench import registry

    lines = ["tasks (default split; protocols, the first is the default; --option KEY=VALUE sets their options):"]
    for name in registry.TASKS.names("*"):
        task = registry.TASKS.get(name)()
        sweep = f"; sweep: {task.sweep_protocol}" if task.sweep_protocol else ""
        lines.append(f"  {name} (default split: {task.default_split}{sweep})")
        lines += [f"    {line}" for line in protocol_lines(task)]
    return "\n".join(lines) + "\n"


def describe(entry: object) -> str:
    """One line about a registry entry: a preset's description, else the first docstring line."""
    description = getattr(entry, "description", None)
    if isinstance(description, str) and description:
        backbone = getattr(entry, "backbone", None)
        return description + (f" [default backbone: {backbone}]" if backbone else "")
    doc = (getattr(entry, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""
