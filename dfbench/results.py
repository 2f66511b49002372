"""Run records and leaderboards.

One folder per run, ``results/runs/<run id>/``, made before the run starts: ``record.json`` (written
atomically: task, protocol and version, backbone, selection, resolved settings, the data and subset,
protocol options, metrics with their specs, per-category table, timings, environment), figures,
saved predictions, checkpoints and logs. Version-1 records (``results/runs/<run id>.json``) still load.

A run's **identity** is every value that changes its numbers and nothing else (not the cache, not
progress bars): protocol and version, backbone and weights, selection, resolved settings (all but
``batch_size``), split, data root, the ``--limit`` and the protocol options, the reporting variant, and the
backbone options where there are any (a fusion's input sizes, weights, PCA).
``dfbench leaderboard`` shows the latest record of every identity (rows: backbone + selection, the
data and subset, the settings, a short identity hash), and ``compare`` matches baseline rows by it,
so runs of different experiments never merge. Directions come from the metric specs in the record.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dfbench.atomic import atomic_write_text
from dfbench.errors import DfbenchInputError
from dfbench.migrations import flat_record_files, metric_direction, record_limit, record_subset_fields
from dfbench.settings import SPEED_FIELDS, settings_label

RECORD_VERSION = 2
RECORD_FILE = "record.json"


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
    #: metric → {"higher_is_better", "primary", "unit"} (the task's MetricSpec), for compare and leaderboards
    metric_specs: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def row_label(self) -> str:
        """The leaderboard row: backbone + (preset or selection), and the reporting variant if any
        (e.g. ``[report=gdf]``: a number that is not comparable with the protocol's default)."""
        variant = self.details.get("variant")
        return f"{self.backbone} / {self.preset or ', '.join(self.selection)}" + (f" [{variant}]" if variant else "")

    @property
    def data_name(self) -> str:
        """Which data the run read: ``mini:<set>`` for an embedded mini set (``mini:spair-v2``), else
        ``<task>:<the data root's folder name>`` (``spair:SPair-71k``); empty for records that do not say."""
        root = str(self.details.get("data_root") or "")
        if not root:
            return ""
        if root.startswith("mini:"):
            name = Path(root[len("mini:"):]).parts[0]        # the mini set's folder under $DFBENCH_HOME
            return f"mini:{name[len('mini-'):] if name.startswith('mini-') else name}"
        if ":" in root.split("/")[0]:                    # a hub source such as hf:scene_parse_150
            return root
        return f"{self.task}:{Path(root).name or root}"

    @property
    def data_label(self) -> str:
        """The data, split, ``--limit`` and the protocol options that differ from their defaults."""
        parts = [self.data_name, str(self.details.get("split", ""))]
        limit = record_limit(self.details)
        if limit:
            parts.append(f"limit={limit}")
        for key, value in record_subset_fields(self.details).items():  # version-1 SPair records
            if value:
                parts.append(f"{key}={Path(str(value)).name}")
        for key, value in sorted((self.details.get("options_changed") or {}).items()):
            parts.append(f"{key}={Path(value).name if isinstance(value, str) and '/' in value else value}")
        return " ".join(part for part in parts if part)

    def identity(self) -> dict[str, Any]:
        """Every value that changes this run's numbers (see the module docstring)."""
        settings = {key: value for key, value in self.settings.items() if key not in SPEED_FIELDS}
        details = self.details
        return {"protocol": self.protocol, "protocol_version": self.protocol_version, "backbone": self.backbone,
                "weights": self.weights, "selection": list(self.selection), "preset": self.preset,
                "settings": settings, "split": details.get("split"), "data_root": details.get("data_root"),
                "limit": record_limit(details), **record_subset_fields(details),
                "options": details.get("options") or {}, "variant": details.get("variant"),
                # backbone options (a fusion's weights, PCA, input sizes) join the identity only when there are any
                **({"backbone_options": details["backbone_options"]} if details.get("backbone_options") else {})}

    @property
    def identity_hash(self) -> str:
        """A short hash of :meth:`identity`."""
        text = json.dumps(self.identity(), sort_keys=True, default=str)
        return hashlib.sha1(text.encode()).hexdigest()[:8]

    def higher_is_better(self, metric: str) -> bool:
        """The direction of ``metric``: from the record's spec, else (version-1 records) the task's."""
        spec = self.metric_specs.get(metric)
        if spec is None:
            return metric_direction(self.task, metric, self.run_id)
        return bool(spec["higher_is_better"])

    def new_run_id(self) -> str:
        """A readable, unique file stem: time, task, backbone and a short content hash."""
        digest = hashlib.sha1(json.dumps(asdict(self), sort_keys=True, default=str).encode()).hexdigest()[:8]
        return run_id(self.created, self.protocol, self.backbone, digest)


def run_id(created: str, protocol: str, backbone: str, digest: str) -> str:
    """``<UTC time>-<protocol>-<backbone>-<digest>``, the name of a run's folder."""
    stamp = created.replace(":", "").replace("-", "")[:15]
    return f"{stamp}-{protocol.replace('/', '_')}-{backbone}-{digest}"


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def save_result(result: Result, results_dir: str | Path = "results") -> Path:
    """Write the record as ``<results_dir>/runs/<run id>/record.json`` (atomically); returns the path."""
    if not result.created:
        result.created = now()
    if not result.run_id:
        result.run_id = result.new_run_id()
    path = Path(results_dir) / "runs" / result.run_id / RECORD_FILE
    atomic_write_text(path, json.dumps(asdict(result), indent=1, sort_keys=True, default=str) + "\n")
    return path


def load_results(results_dir: str | Path = "results") -> list[Result]:
    """Every record under ``<results_dir>/runs`` (run folders, and version-1 flat files), oldest first;
    a broken record is a one-line error."""
    runs = Path(results_dir) / "runs"
    if not runs.is_dir():
        raise DfbenchInputError(f"no run records in {runs}; run `dfbench run …` first")
    records = []
    for path in sorted([*flat_record_files(runs), *runs.glob(f"*/{RECORD_FILE}")]):
        try:
            data = json.loads(path.read_text())
            records.append(Result(**data))
        except (json.JSONDecodeError, TypeError) as error:
            raise DfbenchInputError(f"run record {path}: unreadable ({error}); delete or fix it") from None
    return sorted(records, key=lambda record: record.created)


def latest_records(records: list[Result]) -> dict[str, Result]:
    """The latest record of every run identity (hash → record)."""
    latest: dict[str, Result] = {}
    for record in sorted(records, key=lambda r: r.created):
        latest[record.identity_hash] = record
    return latest


def leaderboard_rows(records: list[Result], metrics: tuple[str, ...] | None = None,
                     prefix: bool = True) -> list[dict[str, Any]]:
    """One row per run identity (its latest record): the labels, then per metric the value under
    ``"<protocol> <metric>"`` (``prefix``) or ``"<metric>"``; a paper-suite row adds ``<metric> (published)``
    and, on real data (not a mini set), ``<metric> Δ`` (measured − published)."""
    rows = []
    for identity, record in latest_records(records).items():
        chosen = metrics or tuple(record.details.get("leaderboard_metrics") or record.metrics)
        detail = record.details.get("backbone_detail")
        head = f"{record.protocol} " if prefix else ""
        row: dict[str, Any] = {"backbone / selection": record.row_label, "data": record.data_label,
                               "settings": settings_label(record.settings) + (f" | {detail}" if detail else ""),
                               "id": identity}
        row.update({f"{head}{metric}": record.metrics[metric] for metric in chosen if metric in record.metrics})
        mini = record.data_name.startswith("mini:")
        for metric, published in (record.details.get("published") or {}).items():
            measured = record.metrics.get(metric)
            row[f"{head}{metric}"] = measured
            row[f"{head}{metric} (published)"] = published
            if not mini:            # a mini set's number is no measurement of the paper's: no difference shown
                row[f"{head}{metric} Δ"] = None if measured is None else measured - published
        rows.append(row)
    return rows


LABEL_COLUMNS = ["backbone / selection", "data", "settings", "id"]


def _frame(rows: list[dict[str, Any]]):
    import pandas as pd

    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    frame = frame.sort_values(LABEL_COLUMNS).reset_index(drop=True)
    return frame[[*LABEL_COLUMNS, *sorted(column for column in frame.columns if column not in LABEL_COLUMNS)]]


def leaderboard_table(records: list[Result], metrics: tuple[str, ...] | None = None):
    """A pandas DataFrame of every run identity (the latest record of each), one column per
    ``"<protocol> <metric>"``: the form ``leaderboard.csv`` keeps. ``metrics`` keeps only those metric keys
    (default: every record's ``details['leaderboard_metrics']``, else all metrics); see :func:`leaderboard_rows`."""
    return _frame(leaderboard_rows(records, metrics))


def leaderboard_tables(records: list[Result]) -> dict[str, Any]:
    """One DataFrame per protocol (``spair/dift-nn``, ``ade20k/linear``, …), in protocol order, each with only
    its own metric columns (no protocol prefix): the tables of ``leaderboard.md``."""
    by_protocol: dict[str, list[Result]] = {}
    for record in records:
        by_protocol.setdefault(record.protocol, []).append(record)
    return {protocol: _frame(leaderboard_rows(by_protocol[protocol], prefix=False)) for protocol in sorted(by_protocol)}


def markdown_cell(value: Any) -> Any:
    """A value safe inside a Markdown table cell: ``|`` escaped, line breaks as spaces."""
    if isinstance(value, str):
        return value.replace("|", "\\|").replace("\n", " ")
    return value


def markdown_table(frame) -> str:
    """A DataFrame as a pipe table: numbers to 2 decimals, empty cells blank, ``|`` in cells escaped."""
    shown = frame.round(2).astype(object).where(frame.notna(), None)
    shown = shown.map(markdown_cell)
    return shown.to_markdown(index=False, missingval="")


def write_leaderboard(results_dir: str | Path = "results") -> tuple[Path, Path, str]:
    """Render ``leaderboard.md`` (one table per protocol) and ``leaderboard.csv`` (every run, one column per
    protocol and metric) in ``results_dir``; returns the paths and the Markdown."""
    results_dir = Path(results_dir)
    records = load_results(results_dir)
    sections = [f"## {protocol}\n\n{markdown_table(frame)}\n"
                for protocol, frame in leaderboard_tables(records).items()]
    markdown = "# dfbench leaderboard\n\n" + ("\n".join(sections) if sections else "(no runs)\n")
    md_path, csv_path = results_dir / "leaderboard.md", results_dir / "leaderboard.csv"
    atomic_write_text(md_path, markdown)
    atomic_write_text(csv_path, leaderboard_table(records).to_csv(index=False))
    return md_path, csv_path, markdown
