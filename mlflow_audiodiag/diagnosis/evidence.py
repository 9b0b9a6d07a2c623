"""The signals of one MLflow run as plain Python and numpy values."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

from mlflow_audiodiag import schema

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

SeriesKind = Literal["epoch", "step"]

# Time series logged once per epoch (step = epoch) and once per optimizer step.
EPOCH_SERIES_PREFIXES: tuple[str, ...] = (
    schema.split_metric(schema.SPLIT_TRAIN, ""),
    schema.split_metric(schema.SPLIT_VAL, ""),
    schema.VAL_PRED_PREFIX,
    schema.VAL_RECALL_PREFIX,
    schema.ATTENTION_ENTROPY_PREFIX,
)
STEP_SERIES_PREFIXES: tuple[str, ...] = (
    schema.GRAD_NORM_PREFIX,
    schema.UPDATE_RATIO_PREFIX,
    schema.LR_PREFIX,
)
STEP_SERIES_NAMES: tuple[str, ...] = (
    schema.METRIC_STEP_LOSS,
    schema.METRIC_NONFINITE_GRADS,
    schema.METRIC_NONFINITE_LOSS,
)
# Aggregates that share a prefix with per-group metrics but are not groups.
AGGREGATE_NAMES = frozenset({"total"})


def series_kind(key: str) -> SeriesKind | None:
    """``"step"`` or ``"epoch"`` for time-series metric keys; ``None`` for once-logged ones."""
    if key in STEP_SERIES_NAMES or key.startswith(STEP_SERIES_PREFIXES):
        return "step"
    if key.startswith(EPOCH_SERIES_PREFIXES):
        return "epoch"
    return None


def _as_series(points: Iterable[tuple[float, float]]) -> np.ndarray:
    return np.asarray(list(points), dtype=np.float64).reshape(-1, 2)


@dataclass
class RunEvidence:
    """One run's signals.

    ``epoch_metrics`` and ``step_metrics`` map metric names to ``[n, 2]`` float arrays of
    ``(step, value)`` rows sorted by step (one row per step); ``summary`` holds the latest
    value of each once-logged metric; ``params`` the run's params; ``status`` its MLflow status.
    """

    epoch_metrics: dict[str, np.ndarray] = field(default_factory=dict)
    step_metrics: dict[str, np.ndarray] = field(default_factory=dict)
    summary: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    status: str = "FINISHED"
    run_id: str = ""

    def series(self, name: str) -> np.ndarray | None:
        """``[n, 2]`` rows ``(step, value)`` of a time series, or ``None`` if absent/empty."""
        data = self.epoch_metrics.get(name)
        if data is None:
            data = self.step_metrics.get(name)
        return data if data is not None and len(data) else None

    def values(self, name: str) -> np.ndarray | None:
        """The values of a time series in step order, or ``None``."""
        data = self.series(name)
        return None if data is None else data[:, 1]

    def latest(self, name: str) -> float | None:
        """A once-logged metric's value, else the last value of a time series, else ``None``."""
        if name in self.summary:
            return float(self.summary[name])
        data = self.series(name)
        return None if data is None else float(data[-1, 1])

    def groups(self, prefix: str) -> list[str]:
        """Names after ``prefix`` of every metric that starts with it (aggregates such as
        ``total`` left out), ordered ``embedding``, ``encoder.<i>`` (numerically), ``head``,
        then the rest in natural order, ``other`` last."""
        keys = [*self.epoch_metrics, *self.step_metrics, *self.summary]
        names = {k[len(prefix) :] for k in keys if k.startswith(prefix) and len(k) > len(prefix)}
        return sorted(names - AGGREGATE_NAMES, key=group_sort_key)

    @property
    def n_epochs(self) -> int:
        """Number of validation epochs recorded (``val/accuracy`` points)."""
        data = self.series(schema.split_metric(schema.SPLIT_VAL, "accuracy"))
        return 0 if data is None else len(data)

    @classmethod
    def from_values(
        cls,
        epochs: Mapping[str, Sequence[float]] | None = None,
        steps: Mapping[str, Sequence[float]] | None = None,
        summary: Mapping[str, float] | None = None,
        params: Mapping[str, str] | None = None,
        status: str = "FINISHED",
    ) -> RunEvidence:
        """Evidence from plain value lists; the i-th value of each series gets step ``i + 1``."""

        def numbered(values: Sequence[float]) -> np.ndarray:
            return _as_series((i + 1, v) for i, v in enumerate(values))

        return cls(
            epoch_metrics={k: numbered(v) for k, v in (epochs or {}).items()},
            step_metrics={k: numbered(v) for k, v in (steps or {}).items()},
            summary={k: float(v) for k, v in (summary or {}).items()},
            params={k: str(v) for k, v in (params or {}).items()},
            status=status,
        )


def load_evidence(client: MlflowClient, run_id: str) -> RunEvidence:
    """Reads a run's params, once-logged metrics and time series (whatever it has, in any
    status: FINISHED, FAILED, KILLED or still RUNNING)."""
    run = client.get_run(run_id)
    epoch_metrics: dict[str, np.ndarray] = {}
    step_metrics: dict[str, np.ndarray] = {}
    summary: dict[str, float] = {}
    for key, value in run.data.metrics.items():
        kind = series_kind(key)
        if kind is None:
            summary[key] = float(value)
            continue
        target = epoch_metrics if kind == "epoch" else step_metrics
        target[key] = _history(client.get_metric_history(run_id, key))
    return RunEvidence(
        epoch_metrics=epoch_metrics,
        step_metrics=step_metrics,
        summary=summary,
        params=dict(run.data.params),
        status=run.info.status,
        run_id=run_id,
    )


def _history(points: Iterable[Metric]) -> np.ndarray:
    """``(step, value)`` rows sorted by step; of several points at one step the last logged."""
    by_step: dict[int, float] = {}
    for point in sorted(points, key=lambda p: (p.step, p.timestamp)):
        by_step[point.step] = point.value
    return _as_series(by_step.items())


def group_sort_key(name: str) -> tuple[int, list[int | str]]:
    """Sort key: ``embedding``, ``encoder*`` (numbers numerically), ``head``, others, ``other``."""
    if name == "embedding":
        rank = 0
    elif name.startswith("encoder"):
        rank = 1
    elif name == "head":
        rank = 2
    elif name == "other":
        rank = 4
    else:
        rank = 3
    parts = re.split(r"(\d+)", name)
    return rank, [int(p) if p.isdigit() else p for p in parts]
