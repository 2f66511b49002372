"""Run records and leaderboards.

One JSON record per run under ``results/runs/`` (written atomically) carrying the task, protocol
and its version, backbone, selection, settings, metrics, per-category table, timings and the
environment. ``dfbench leaderboard`` renders the latest record of every (backbone, selection,
settings) row × task into ``results/leaderboard.md`` and ``.csv`` (pandas + tabulate), laid out
like the papers' tables.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dfbench.atomic import atomic_write_text
from dfbench.errors import DfbenchInputError

RECORD_VERSION = 1


@dataclass
class Result:
    """What one run of a task on a backbone produced."""

    task: str
    protocol: str
    protocol_version: int
    backbone: str
    selection: list[str]
    settings: dict[str, Any]
    metrics: dict[str, float]
    per_category: dict[str, dict[str, float]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    preset: str | None = None
    weights: str = ""
    environment: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    run_id: str = ""
    record_version: int = RECORD_VERSION

    @property
    def row_label(self) -> str:
        """The leaderboard row: backbone + (preset or selection), and the reporting variant if any
        (e.g. ``[report=gdf]``: a number that is not comparable with the protocol's default)."""
        variant = self.details.get("variant")
        return f"{self.backbone} / {self.preset or ', '.join(self.selection)}" + (f" [{variant}]" if variant else "")

    def new_run_id(self) -> str:
        """A readable, unique file stem: time, task, backbone and a short content hash."""
        digest = hashlib.sha1(json.dumps(asdict(self), sort_keys=True, default=str).encode()).hexdigest()[:8]
        stamp = self.created.replace(":", "").replace("-", "")[:15]
        return f"{stamp}-{self.protocol.replace('/', '_')}-{self.backbone}-{digest}"


def environment(device: str = "") -> dict[str, Any]:
    """Versions of the stack, the device and the git revision of the working tree."""
    import diffusers
    import torch
    import transformers

    from dfbench import __version__

    return {
        "dfbench": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
        "transformers": transformers.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "device": device, "git_revision": git_revision(),
    }


def git_revision() -> str:
    """``git rev-parse HEAD`` of the package's checkout (``+dirty`` if modified), or ``unknown``."""
    here = Path(__file__).resolve().parent
    try:
        revision = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                  timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return revision + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def save_result(result: Result, results_dir: str | Path = "results") -> Path:
    """Write the record as ``<results_dir>/runs/<run id>.json``; returns the path."""
    if not result.created:
        result.created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    if not result.run_id:
        result.run_id = result.new_run_id()
    path = Path(results_dir) / "runs" / f"{result.run_id}.json"
    atomic_write_text(path, json.dumps(asdict(result), indent=1, sort_keys=True, default=str) + "\n")
    return path


def load_results(results_dir: str | Path = "results") -> list[Result]:
    """Every record under ``<results_dir>/runs``, oldest first; a broken record is a one-line error."""
    runs = Path(results_dir) / "runs"
    if not runs.is_dir():
        raise DfbenchInputError(f"no run records in {runs}; run `dfbench run …` first")
    records = []
    for path in sorted(runs.glob("*.json")):
        try:
            data = json.loads(path.read_text())
            records.append(Result(**data))
        except (json.JSONDecodeError, TypeError) as error:
            raise DfbenchInputError(f"run record {path}: unreadable ({error}); delete or fix it") from None
    return sorted(records, key=lambda record: record.created)


def leaderboard_table(records: list[Result], metrics: tuple[str, ...] | None = None):
    """A pandas DataFrame: one row per (backbone, selection, settings), one column per task metric.

    The latest record of each (row, protocol) wins. ``metrics`` keeps only those metric keys
    (default: every record's ``details['leaderboard_metrics']``, else all metrics).
    """
    import pandas as pd

    cells: dict[tuple[str, str], dict[str, float]] = {}
    for record in records:
        settings = record.settings
        key = (record.row_label, _settings_label(settings))
        chosen = metrics or tuple(record.details.get("leaderboard_metrics") or record.metrics)
        row = cells.setdefault(key, {})
        for metric in chosen:
            if metric in record.metrics:
                row[f"{record.protocol} {metric}"] = record.metrics[metric]
    rows = [{"backbone / selection": row, "settings": settings, **values}
            for (row, settings), values in sorted(cells.items())]
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    metric_columns = sorted(column for column in frame.columns if column not in ("backbone / selection", "settings"))
    return frame[["backbone / selection", "settings", *metric_columns]]


def _settings_label(settings: dict[str, Any]) -> str:
    parts = [f"{settings.get('resolution') or 'default'}px", f"t={settings.get('timestep')}"]
    if not settings.get("add_noise", True):
        parts.append("clean")
    if settings.get("ensemble_size", 1) != 1:
        parts.append(f"ens={settings['ensemble_size']}")
    if settings.get("seed", 0):
        parts.append(f"seed={settings['seed']}")
    return " ".join(parts)


def write_leaderboard(results_dir: str | Path = "results") -> tuple[Path, Path, str]:
    """Render ``leaderboard.md`` and ``leaderboard.csv`` in ``results_dir``; returns paths and markdown."""
    results_dir = Path(results_dir)
    frame = leaderboard_table(load_results(results_dir))
    table = frame.round(2).to_markdown(index=False) if not frame.empty else "(no runs)"
    markdown = "# dfbench leaderboard\n\n" + table + "\n"
    md_path, csv_path = results_dir / "leaderboard.md", results_dir / "leaderboard.csv"
    atomic_write_text(md_path, markdown)
    atomic_write_text(csv_path, frame.to_csv(index=False))
    return md_path, csv_path, markdown


LOWER_IS_BETTER = ("rmse", "absrel", "abs_rel", "loss", "error")
BASELINE_VERSION = 1


def higher_is_better(metric: str) -> bool:
    """PCK, mIoU, δ accuracies: higher is better; RMSE, AbsRel, losses, errors: lower."""
    return not any(word in metric.lower() for word in LOWER_IS_BETTER)


def latest_metrics(records: list[Result]) -> dict[tuple[str, str, str], dict[str, float]]:
    """(protocol, row, settings label) → the leaderboard metrics of the latest record of each."""
    latest: dict[tuple[str, str, str], dict[str, float]] = {}
    for record in sorted(records, key=lambda r: r.created):
        keys = record.details.get("leaderboard_metrics") or list(record.metrics)
        latest[(record.protocol, record.row_label, _settings_label(record.settings))] = {
            key: record.metrics[key] for key in keys if key in record.metrics}
    return latest


def write_baseline(records: list[Result], path: str | Path, tolerance: float) -> Path:
    """Store the latest metrics of every row as a regression baseline (JSON, atomic)."""
    entries = [{"protocol": protocol, "row": row, "settings": settings, "metrics": metrics}
               for (protocol, row, settings), metrics in sorted(latest_metrics(records).items())]
    document = {"baseline_version": BASELINE_VERSION, "tolerance": tolerance, "entries": entries}
    return atomic_write_text(path, json.dumps(document, indent=1, sort_keys=True) + "\n")


def compare_to_baseline(records: list[Result], baseline_path: str | Path, tolerance: float | None = None
                        ) -> tuple[list[list[Any]], bool]:
    """Rows [protocol, row, settings, metric, baseline, current, change, status] and whether all pass.

    A metric fails when it is worse than the baseline by more than ``tolerance`` (in its own
    units, e.g. PCK points), or when no current run has it.
    """
    path = Path(baseline_path)
    try:
        document = json.loads(path.read_text())
        entries = document["entries"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        raise DfbenchInputError(f"baseline {path}: not a dfbench baseline (create one with --update)") from None
    if document.get("baseline_version") != BASELINE_VERSION:
        raise DfbenchInputError(f"baseline {path}: version {document.get('baseline_version')}, expected "
                                f"{BASELINE_VERSION}; regenerate it with --update")
    tolerance = float(document.get("tolerance", 0.5) if tolerance is None else tolerance)
    current = latest_metrics(records)
    rows, passed = [], True
    for entry in entries:
        key = (entry["protocol"], entry["row"], entry["settings"])
        for metric, reference in entry["metrics"].items():
            value = current.get(key, {}).get(metric)
            if value is None:
                rows.append([*key, metric, reference, None, None, "MISSING"])
                passed = False
                continue
            change = value - reference
            worse = -change if higher_is_better(metric) else change
            status = "REGRESSION" if worse > tolerance else "ok"
            passed &= status == "ok"
            rows.append([*key, metric, reference, value, change, status])
    return rows, passed
