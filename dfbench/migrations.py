"""Reading what earlier dfbench versions wrote, in one place: version-1 suite rows, version-1 run records (flat
``results/runs/<run id>.json`` files, SPair's subset fields kept in ``details``, no metric specs). Records are read
as they are, never rewritten, so each keeps its run identity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dfbench.errors import DfbenchInputError

#: suite / RunSpec fields of version-1 suites, now SPair protocol options (``limit_pairs`` → ``limit``)
LEGACY_OPTION_FIELDS = ("per_category", "pairs_file")


def upgrade_suite_row(values: dict[str, Any], options: dict[str, Any]) -> None:
    """A version-1 suite row's fields in place: ``limit_pairs`` → ``limit``, ``per_category`` and ``pairs_file`` →
    protocol options."""
    if "limit_pairs" in values:
        values["limit"] = values.pop("limit_pairs")
    for key in LEGACY_OPTION_FIELDS:
        if key in values:
            value = values.pop(key)
            if value is not None:
                options[key] = value


def flat_record_files(runs: Path) -> list[Path]:
    """Version-1 records: one ``<run id>.json`` file per run directly in ``runs/`` (now a folder per run)."""
    return sorted(runs.glob("*.json"))


def record_limit(details: dict[str, Any]) -> Any:
    """A record's ``--limit`` (version 1: ``limit_pairs``)."""
    return details.get("limit", details.get("limit_pairs"))


def record_subset_fields(details: dict[str, Any]) -> dict[str, Any]:
    """SPair's subset fields as version-1 records kept them in ``details`` (part of those records' identity;
    ``None`` in later records, which keep them with the protocol options)."""
    return {key: details.get(key) for key in LEGACY_OPTION_FIELDS}


def metric_direction(task: str, metric: str, run_id: str) -> bool:
    """Whether higher is better for a version-1 record's ``metric`` (records since keep the task's metric specs):
    the installed task's spec."""
    from dfbench.registry import TASKS  # version-1 records only: the live registry answers for them

    try:
        return TASKS.get(task)().metric_spec(metric).higher_is_better
    except DfbenchInputError:
        raise DfbenchInputError(f"run {run_id}: no spec for metric {metric!r} and task {task!r} "
                                "is not installed; cannot tell which direction is better") from None
