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
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dfbench.atomic import atomic_write_text
from dfbench.errors import DfbenchInputError

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
        limit = self.details.get("limit", self.details.get("limit_pairs"))
        if limit:
            parts.append(f"limit={limit}")
        for key in ("per_category", "pairs_file"):  # version-1 SPair records kept these in details
            if self.details.get(key):
                parts.append(f"{key}={Path(str(self.details[key])).name}")
        for key, value in sorted((self.details.get("options_changed") or {}).items()):
            parts.append(f"{key}={Path(value).name if isinstance(value, str) and '/' in value else value}")
        return " ".join(part for part in parts if part)

    def identity(self) -> dict[str, Any]:
        """Every value that changes this run's numbers (see the module docstring)."""
        settings = {key: value for key, value in self.settings.items() if key != "batch_size"}
        details = self.details
        return {"protocol": self.protocol, "protocol_version": self.protocol_version, "backbone": self.backbone,
                "weights": self.weights, "selection": list(self.selection), "preset": self.preset,
                "settings": settings, "split": details.get("split"), "data_root": details.get("data_root"),
                "limit": details.get("limit", details.get("limit_pairs")),
                "per_category": details.get("per_category"), "pairs_file": details.get("pairs_file"),
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
            from dfbench.registry import TASKS

            try:
                return TASKS.get(self.task)().metric_spec(metric).higher_is_better
            except DfbenchInputError:
                raise DfbenchInputError(f"run {self.run_id}: no spec for metric {metric!r} and task {self.task!r} "
                                        "is not installed; cannot tell which direction is better") from None
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


#: packages whose versions a record and a baseline keep (what a moved number may come from)
STACK_PACKAGES = ("torch", "diffusers", "transformers", "numpy", "scipy", "mmengine", "mmsegmentation", "mmcv-lite",
                  "safetensors", "pillow", "scikit-image")
#: environment variables that set the CPU's thread pools
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def environment(device: str = "") -> dict[str, Any]:
    """Versions of the stack, the Python, platform, CPU, thread setup, device and git revision."""
    import importlib.metadata

    import torch

    from dfbench import __version__

    packages = {}
    for name in STACK_PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return {
        "dfbench": __version__, "torch": torch.__version__, "diffusers": packages.get("diffusers", ""),
        "transformers": packages.get("transformers", ""), "packages": packages,
        "python": platform.python_version(), "platform": platform.platform(), "cpu": cpu_name(),
        "threads": thread_setup(), "device": device, "git_revision": git_revision(),
    }


def thread_setup() -> dict[str, Any]:
    """torch's intra-op thread count and the thread variables that are set."""
    import os

    import torch

    return {"torch": torch.get_num_threads(), **{name: os.environ[name] for name in THREAD_VARIABLES
                                                 if name in os.environ}}


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment_differences(reference: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between two :func:`environment` dicts, as ``name: old → new`` (versions of every
    stack package, Python, CPU, thread setup); keys absent from either side are left out."""
    def flat(env: dict[str, Any]) -> dict[str, str]:
        values = {name: str(version) for name, version in (env.get("packages") or {}).items()}
        for key in ("torch", "diffusers", "transformers"):
            if env.get(key):
                values.setdefault(key, str(env[key]))
        values.update({key: str(env[key]) for key in ("python", "cpu") if env.get(key)})
        values.update({f"threads {key}": str(value) for key, value in (env.get("threads") or {}).items()})
        return values

    old, new = flat(reference), flat(current)
    differences = [f"{key}: {old.get(key, 'unset')} → {new.get(key, 'unset')}" for key in sorted(set(old) | set(new))
                   if old.get(key) != new.get(key) and (key in old and key in new or key.startswith("threads"))]
    return differences


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
    for path in sorted([*runs.glob("*.json"), *runs.glob(f"*/{RECORD_FILE}")]):
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


def settings_label(settings: dict[str, Any]) -> str:
    """Resolution and t (for backbones that use one), then every value-changing setting that differs
    from ExtractSettings' defaults."""
    from dfbench.settings import ExtractSettings

    defaults = ExtractSettings().to_dict()
    parts = [f"{settings.get('resolution') or 'default'}px"]
    if "timestep" in settings:
        parts.append(f"t={settings['timestep']}")
    for key in ("resize_mode", "latent_mode", "dtype"):
        if settings.get(key, defaults[key]) != defaults[key]:
            parts.append(str(settings[key]))
    for key in ("pad_color", "resample"):
        if settings.get(key, defaults[key]) != defaults[key]:
            parts.append(f"{key}={settings[key]}")
    if not settings.get("add_noise", True):
        parts.append("clean")
    if settings.get("ensemble_size", 1) != 1:
        parts.append(f"ens={settings['ensemble_size']}")
    if settings.get("seed", 0):
        parts.append(f"seed={settings['seed']}")
    prompt = settings.get("prompt") or ""
    if prompt:
        parts.append(f'"{prompt[:24]}…"' if len(prompt) > 25 else f'"{prompt}"')
    return " ".join(parts)


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
    import math

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
