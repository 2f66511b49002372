"""The task contract: what a task adapter declares and does (cf. lm-eval's ``api/task.py``).

A task is one folder of ``dfbench/tasks/`` (its :class:`Task` subclass, protocols, dataset loader, mini set,
metrics, plots) plus one registry line, the same ``TASKS.register`` a third-party plugin calls. The runner,
CLI, results and plots know tasks only through this contract:

* ``name``; ``default_split`` (evaluated when ``--split`` is not given); ``protocols``: named, versioned
  :class:`Protocol` objects, each with its options dataclass and its own ``run`` and ``score`` (``--option K=V``
  and suite ``options:`` are parsed by :func:`dfbench.options.parse_options`); ``default_protocol``;
* ``metrics``: a :class:`MetricSpec` per metric key (direction, primary, unit), copied into every
  record so ``compare`` and the leaderboard never guess from a metric's name;
  ``leaderboard_metrics``: the columns shown;
* ``mini_root()``: the embedded mini set in the native layout (or ``None``);
* ``split_images(data_root, split)``: the distinct images of a split with their categories (for
  ``extract --dataset``, cache filling and sweeps);
* ``run(context, run)`` → :class:`TaskOutput`, ``run`` being the :class:`~dfbench.resolve.ResolvedRun`
  (backbone, canonical selection, complete settings, protocol and options, split, data, limit, seed);
  by default the protocol's ``run``;
* ``figures(output, title, folder)``, ``save_predictions(output, folder)`` and ``score(run, folder)``:
  re-score saved predictions with no backbone loaded, exactly as ``run`` scores them (by default the
  protocol's ``score``).
"""

from __future__ import annotations

import dataclasses
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from dfbench.distributed import Ranks
from dfbench.errors import DfbenchInputError

if TYPE_CHECKING:
    from dfbench.resolve import ResolvedRun


@dataclass(frozen=True)
class MetricSpec:
    """How to read a metric: which direction is better, whether it is the task's primary one, its unit."""

    higher_is_better: bool = True
    primary: bool = False
    unit: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Protocol:
    """A named, versioned way to evaluate a task, with the dataclass of its options (all fields defaulted).
    A task's protocols subclass it and implement :meth:`run` (and :meth:`score` where saved predictions can
    be re-scored)."""

    name: str
    version: int
    options: type
    description: str = ""
    #: runs under torchrun / ``accelerate launch`` with one process per GPU (the others refuse a world size > 1)
    distributed: bool = False

    def run(self, task: Any, context: RunContext, run: ResolvedRun) -> TaskOutput:
        """Evaluate ``run.backbone`` + ``run.selection`` with ``run.settings`` on ``run.split`` of ``task``."""
        raise NotImplementedError(f"protocol {self.name} has no run")

    def score(self, task: Any, run: ResolvedRun, folder: Path) -> TaskOutput:
        """Score predictions saved in ``folder`` against the ground truth of ``run.split`` (no backbone);
        ``run.limit`` and ``run.seed`` select the same subset as the run did."""
        raise DfbenchInputError(f"{task.name}/{self.name} cannot score saved predictions")

    def split(self, options: Any, requested: str) -> str:
        """The split a run with ``options`` reports on (by default the requested one)."""
        return requested

    def variant(self, options: Any) -> str | None:
        """A reporting variant whose numbers are not comparable with the protocol's default, shown in the
        leaderboard row (e.g. ``report=gdf``); ``None`` for the default reporting."""
        return None


#: the name of the protocol contract before protocols had their own ``run`` (kept for plugins written then)
ProtocolSpec = Protocol


@dataclass
class RunContext:
    """Where a run happens (what it evaluates is the :class:`~dfbench.resolve.ResolvedRun`): the run's folder
    (made before the run), the feature cache (or ``None``), progress, a logger for messages a user should see
    (stderr, so ``--format json`` output stays clean), and the ranks of a torchrun launch."""

    folder: Path
    cache: Any = None
    progress: bool = True
    log: Callable[[str], None] = field(default=lambda message: print(message, file=sys.stderr))
    #: this process's rank and the world size under torchrun (protocols declared ``distributed`` only)
    ranks: Ranks = field(default_factory=Ranks)


@dataclass
class TaskOutput:
    """What a run (or a re-scoring) produced; ``predictions`` are the task's own objects."""

    metrics: dict[str, float]
    per_category: dict[str, dict[str, float]] = field(default_factory=dict)
    predictions: Any = None
    details: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    selection: list[str] = field(default_factory=list)
    split: str = ""


class Task:
    """Base class of task adapters; see the module docstring for the contract."""

    name: str = ""
    protocols: dict[str, Protocol] = {}
    default_protocol: str = ""
    #: the split ``run`` and ``score`` evaluate when none is given
    default_split: str = "test"
    metrics: dict[str, MetricSpec] = {}
    leaderboard_metrics: tuple[str, ...] = ()
    #: where to get the dataset (shown when a suite row's data_root is missing)
    download_hint: str = ""
    #: the cheapest protocol, used by ``dfbench sweep`` to score each candidate activation; its options
    #: there; and the split it trains on (its images are extracted with the evaluated ones), if any
    sweep_protocol: str = ""
    sweep_options: dict[str, Any] = {}
    sweep_train_split: str | None = None

    def protocol(self, name: str | None) -> Protocol:
        """The protocol ``name`` (default: ``default_protocol``); unknown → one line with the valid ones."""
        name = name or self.default_protocol
        if name not in self.protocols:
            raise DfbenchInputError(f"{self.name} protocol {name!r}: available: {', '.join(self.protocols)}")
        return self.protocols[name]

    def metric_spec(self, metric: str) -> MetricSpec:
        """The spec of ``metric`` (metrics not declared are counts or diagnostics: higher is better)."""
        return self.metrics.get(metric, MetricSpec())

    def mini_root(self) -> Path | None:
        """The embedded mini set's folder (built on first use), or ``None`` if the task has none."""
        return None

    def data_folder(self, data_root: str) -> Path:
        """The dataset folder that ``--data-root`` names (``mini`` is handled before): by default the
        path itself; a task may accept other sources (ADE20K: Hugging Face ``datasets``)."""
        return Path(data_root)

    def split_images(self, data_root: str | Path, split: str) -> list[tuple[Path, str]]:
        """The distinct images of ``split`` with their categories, in a fixed order."""
        raise NotImplementedError

    def check_layout(self, folder: Path, split: str) -> None:
        """Check a freshly downloaded copy in ``folder`` (``dfbench data``): by default, the loader lists
        ``split``'s images; one :class:`~dfbench.errors.DfbenchInputError` line on anything wrong."""
        self.split_images(self.data_folder(str(folder)), split)

    def run(self, context: RunContext, run: ResolvedRun) -> TaskOutput:
        """Evaluate the resolved run (by default: its protocol's ``run``)."""
        return run.protocol.run(self, context, run)

    def figures(self, output: TaskOutput, title: str, folder: Path) -> list[Path]:
        """Write the run's figures into ``folder``; returns their paths."""
        return []

    def save_predictions(self, output: TaskOutput, folder: Path) -> Path:
        """Write ``output.predictions`` into ``folder`` in the task's documented format; returns what it wrote."""
        raise DfbenchInputError(f"task {self.name} cannot save predictions")

    def score(self, run: ResolvedRun, folder: Path) -> TaskOutput:
        """Score predictions saved in ``folder`` (by default: the protocol's ``score``)."""
        return run.protocol.score(self, run, folder)


#: resamples of the bootstrap standard error records carry for their primary metric
BOOTSTRAP_DRAWS = 1000


def bootstrap_stderr(count: int, statistic: Callable[[Any], float], seed: int = 0,
                     draws: int = BOOTSTRAP_DRAWS) -> float:
    """The bootstrap standard error of a metric: the standard deviation (ddof 1) of ``statistic(indices)``
    over ``draws`` resamples, with replacement, of the ``count`` evaluated items (pairs or images),
    drawn by ``numpy.random.default_rng(seed)`` — as lm-evaluation-harness reports ``stderr``."""
    import numpy as np

    if count < 2:
        return float("nan")
    rng = np.random.default_rng(seed)
    values = [statistic(rng.integers(0, count, count)) for _ in range(draws)]
    return float(np.std(values, ddof=1))


def stderr_spec(spec: MetricSpec) -> MetricSpec:
    """The spec of ``<metric>_stderr``: the metric's unit, smaller is tighter, never primary."""
    return MetricSpec(higher_is_better=False, primary=False, unit=spec.unit)


Item = TypeVar("Item")


def seeded_subset(items: list[Item], limit: int | None, seed: int) -> list[Item]:
    """``limit`` items drawn with ``random.Random(seed)``, kept in their listed order (all when ``limit`` is None)."""
    if limit is None or limit >= len(items):
        return items
    return [items[index] for index in sorted(random.Random(seed).sample(range(len(items)), limit))]
