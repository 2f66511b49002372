"""The regression gate: a baseline of the latest metrics of every run identity (with the tolerances and the
environment it was made in), and the comparison of new runs with it (``dfbench compare``)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from dfbench.atomic import atomic_write_text
from dfbench.environment import environment_differences
from dfbench.errors import DfbenchInputError
from dfbench.results import Result, latest_records
from dfbench.settings import settings_label

BASELINE_VERSION = 3
#: versions of the baseline file this code reads (2: no per-metric tolerances)
READABLE_BASELINES = (2, 3)


def read_baseline(path: str | Path) -> dict[str, Any]:
    """A baseline document (entries, tolerance, per-metric tolerances); one line if missing or broken."""
    path = Path(path)
    if not path.is_file():
        raise DfbenchInputError(f"baseline {path}: no such file; create it from the current runs with "
                                f"`dfbench compare RESULTS --baseline {path} --update`")
    try:
        document = json.loads(path.read_text())
        document["entries"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        raise DfbenchInputError(f"baseline {path}: not a dfbench baseline (create one with --update)") from None
    if document.get("baseline_version") not in READABLE_BASELINES:
        raise DfbenchInputError(f"baseline {path}: version {document.get('baseline_version')}, expected "
                                f"{BASELINE_VERSION}; regenerate it with --update")
    return document


def write_baseline(records: list[Result], path: str | Path, tolerance: float | None = None,
                   metric_tolerances: dict[str, float] | None = None) -> Path:
    """Store the latest metrics of every run identity as a regression baseline (JSON, atomic).

    The tolerances of an existing baseline at ``path`` are kept unless given again: ``--update``
    rewrites the numbers, not the policy."""
    previous = read_baseline(path) if Path(path).is_file() else {}
    tolerance = float(previous.get("tolerance", 0.5) if tolerance is None else tolerance)
    tolerances = {**previous.get("metric_tolerances", {}), **(metric_tolerances or {})}
    entries = []
    for identity, record in sorted(latest_records(records).items()):
        keys = list(record.details.get("leaderboard_metrics") or record.metrics)
        keys += [key for key in tolerances if key in record.metrics and key not in keys]
        entries.append({"id": identity, "protocol": record.protocol, "row": record.row_label,
                        "data": record.data_label, "settings": settings_label(record.settings),
                        "metrics": {key: record.metrics[key] for key in keys if key in record.metrics},
                        "higher_is_better": {key: record.higher_is_better(key) for key in keys
                                             if key in record.metrics}})
    made_with = max(records, key=lambda record: record.created).environment if records else {}
    document = {"baseline_version": BASELINE_VERSION, "tolerance": tolerance, "metric_tolerances": tolerances,
                "environment": {key: value for key, value in made_with.items()
                                if key not in ("device", "git_revision")},
                "entries": entries}
    return atomic_write_text(path, json.dumps(document, indent=1, sort_keys=True) + "\n")


def check_tolerance(name: str, value: float) -> float:
    """A tolerance must be a finite number ≥ 0 (a negative one would flag every metric); else one line."""
    if not math.isfinite(value) or value < 0:
        raise DfbenchInputError(f"{name} {value}: a tolerance is a number ≥ 0 in the metric's own units "
                                "(e.g. 0.5 PCK points)")
    return value


def baseline_environment_note(records: list[Result], baseline_path: str | Path) -> str:
    """One line on what differs between the environment the baseline was made in and that of the latest
    run: the versions, CPU and thread setup a moved metric may come from."""
    document = read_baseline(baseline_path)
    made_with = document.get("environment")
    if not made_with:
        return "the baseline does not record its environment (rewrite it with --update to keep one)"
    if not records:
        return "no runs to compare environments with"
    current = max(records, key=lambda record: record.created).environment
    differences = environment_differences(made_with, current)
    if not differences:
        return ("the runs' versions, CPU and thread setup equal the baseline's: the change comes from the code, "
                "the data or the settings")
    return "the runs' environment differs from the baseline's: " + "; ".join(differences)


def compare_to_baseline(records: list[Result], baseline_path: str | Path, tolerance: float | None = None,
                        metric_tolerances: dict[str, float] | None = None, two_sided: bool = False
                        ) -> tuple[list[list[Any]], bool]:
    """Rows [protocol, row, data, settings, metric, baseline, current, change, ±stderr, tolerance, status]
    and whether all pass.

    Baseline rows match current runs by run identity. A metric's tolerance is, first found:
    ``metric_tolerances`` (the command line), the baseline's per-metric tolerances, ``tolerance``,
    the baseline's tolerance. A metric fails when it is worse than the baseline by more than its
    tolerance (in its own units; the direction is the metric spec's), when no current run of that
    identity has it, or — ``two_sided``, for deterministic CI baselines — when it is better by more
    than its tolerance (the numbers changed: update the baseline deliberately)."""
    document = read_baseline(baseline_path)
    default = float(document.get("tolerance", 0.5) if tolerance is None else tolerance)
    tolerances = {**document.get("metric_tolerances", {}), **(metric_tolerances or {})}
    current = latest_records(records)
    rows, passed = [], True
    for entry in document["entries"]:
        label = [entry["protocol"], entry["row"], entry["data"], entry["settings"]]
        record = current.get(entry["id"])
        for metric, reference in entry["metrics"].items():
            allowed = float(tolerances.get(metric, default))
            value = record.metrics.get(metric) if record else None
            if record is None or value is None:
                rows.append([*label, metric, reference, None, None, None, allowed, "MISSING"])
                passed = False
                continue
            stderr = record.metrics.get(f"{metric}_stderr")
            change = value - reference
            worse = -change if entry["higher_is_better"][metric] else change
            if worse > allowed:
                status = "REGRESSION"
            elif -worse > allowed:
                status = "CHANGED" if two_sided else "improved"
            else:
                status = "ok"
            passed &= status in ("ok", "improved")
            rows.append([*label, metric, reference, value, change, stderr, allowed, status])
    return rows, passed
