"""A run's evidence, read back from what the monitor recorded.

The monitor keeps the contract's signals (:mod:`mlflow_audiodiag.signals`) in three artifacts
of the run: the step table ``monitor/steps.parquet`` (every optimizer step), the epoch table
``monitor/epochs.parquet`` and ``monitor/summary.json``. :func:`load_evidence` reads them, and
fills what they lack from the run's MLflow metrics under the same names or a common alias
(``val_acc``, ``eval_loss``, ...), so runs of other loggers are diagnosed as far as they go.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mlflow_audiodiag import schema, signals

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

logger = logging.getLogger(__name__)

BUNDLED = "bundled"


@dataclass
class Table:
    """Columns of float values over an ascending index (steps or epochs)."""

    index: np.ndarray = field(default_factory=lambda: np.zeros(0))
    columns: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, index: str) -> Table:
        if index not in frame or frame.empty:
            return cls()
        frame = frame.sort_values(index).drop_duplicates(index, keep="last")
        columns = {}
        for name in frame.columns:
            if name == index:
                continue
            values = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=np.float64)
            columns[str(name)] = values
        return cls(frame[index].to_numpy(dtype=np.float64), columns)

    def series(self, name: str) -> np.ndarray | None:
        """``[n, 2]`` rows ``(index, value)`` where the value is not NaN, or ``None``."""
        values = self.columns.get(name)
        if values is None:
            return None
        kept = ~np.isnan(values)
        if not kept.any():
            return None
        return np.stack([self.index[kept], values[kept]], axis=1)

    def add(self, name: str, rows: np.ndarray) -> None:
        """A column from ``(index, value)`` rows, aligned on (and extending) the index."""
        if not len(rows):
            return
        index = np.union1d(self.index, rows[:, 0])
        if len(index) != len(self.index):
            positions = np.searchsorted(index, self.index)
            for key, values in self.columns.items():
                grown = np.full(len(index), np.nan)
                grown[positions] = values
                self.columns[key] = grown
            self.index = index
        column = np.full(len(self.index), np.nan)
        column[np.searchsorted(self.index, rows[:, 0])] = rows[:, 1]
        self.columns[name] = column


@dataclass
class RunEvidence:
    """One run's signals: the step table, the epoch table and the once-values, with the run's
    params, tags, status and its parameter groups in forward order."""

    steps: Table = field(default_factory=Table)
    epochs: Table = field(default_factory=Table)
    summary: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    status: str = "FINISHED"
    run_id: str = ""
    group_order: list[str] = field(default_factory=list)

    def series(self, name: str) -> np.ndarray | None:
        """``[n, 2]`` rows ``(step or epoch, value)`` of a time series, or ``None``."""
        found = self.epochs.series(name)
        return found if found is not None else self.steps.series(name)

    def values(self, name: str) -> np.ndarray | None:
        """The values of a time series in order, or ``None``."""
        data = self.series(name)
        return None if data is None else data[:, 1]

    def latest(self, name: str) -> float | None:
        """A once-value, else the last value of a time series, else ``None``."""
        if name in self.summary and self.summary[name] is not None:
            return float(self.summary[name])
        data = self.series(name)
        return None if data is None else float(data[-1, 1])

    def groups(self, signal: signals.Signal) -> list[str]:
        """The placeholder values of every recorded name of a one-placeholder ``signal``;
        parameter groups in forward order (input end first)."""
        names = []
        for key in dict.fromkeys([*self.steps.columns, *self.epochs.columns, *self.summary]):
            parts = signal.match(key)
            if parts is not None and len(parts) == 1 and signals.declared(key) is signal:
                names.append(next(iter(parts.values())))
        order = {g: i for i, g in enumerate(self.group_order)}
        return sorted(names, key=lambda n: (order.get(n, len(order)), _natural(n)))

    @property
    def n_epochs(self) -> int:
        """Number of validation epochs recorded."""
        data = self.series(signals.VAL_ACCURACY.name)
        return 0 if data is None else len(data)

    @property
    def front_end(self) -> str:
        return self.tags.get(schema.TAG_FRONT_END, "")

    @property
    def bundled(self) -> bool:
        """Whether the bundled trainer recorded the run (its fix texts may name -P flags)."""
        return self.front_end == BUNDLED

    @classmethod
    def from_values(
        cls,
        epochs: Mapping[str, Sequence[float]] | None = None,
        steps: Mapping[str, Sequence[float]] | None = None,
        summary: Mapping[str, float] | None = None,
        params: Mapping[str, str] | None = None,
        status: str = "FINISHED",
        tags: Mapping[str, str] | None = None,
        group_order: Sequence[str] = (),
    ) -> RunEvidence:
        """Evidence from plain value lists; the i-th value of each series gets step ``i + 1``."""

        def table(values: Mapping[str, Sequence[float]] | None) -> Table:
            out = Table()
            for name, series in (values or {}).items():
                rows = np.array([(i + 1, v) for i, v in enumerate(series)], dtype=np.float64)
                out.add(name, rows.reshape(-1, 2))
            return out

        return cls(
            steps=table(steps),
            epochs=table(epochs),
            summary={k: float(v) for k, v in (summary or {}).items()},
            params={k: str(v) for k, v in (params or {}).items()},
            tags=dict(tags or {}),
            status=status,
            group_order=list(group_order),
        )


def load_evidence(client: MlflowClient, run_id: str, status: str | None = None) -> RunEvidence:
    """Reads a run's evidence (whatever it has, in any status: FINISHED, FAILED, KILLED or still
    RUNNING). ``status`` overrides the run's status (a run diagnosed at the end of its own
    training is finishing, not running)."""
    run = client.get_run(run_id)
    artifacts = _monitor_artifacts(client, run_id)
    evidence = RunEvidence(
        steps=Table.from_frame(artifacts.get("steps", pd.DataFrame()), "step"),
        epochs=Table.from_frame(artifacts.get("epochs", pd.DataFrame()), "epoch"),
        summary={k: float(v) for k, v in artifacts.get("summary", {}).items() if v is not None},
        params=dict(run.data.params),
        tags=dict(run.data.tags),
        status=status or run.info.status,
        run_id=run_id,
        group_order=list(artifacts.get("parameter_groups", {}).get("order", [])),
    )
    _fill_from_metrics(client, run_id, run.data.metrics, evidence)
    return evidence


def _monitor_artifacts(client: MlflowClient, run_id: str) -> dict[str, Any]:
    names = {
        "steps": schema.ARTIFACT_STEPS,
        "epochs": schema.ARTIFACT_EPOCHS,
        "summary": schema.ARTIFACT_SUMMARY,
        "parameter_groups": schema.ARTIFACT_PARAMETER_GROUPS,
    }
    try:
        present = {a.path for a in client.list_artifacts(run_id, schema.ARTIFACT_DIR_MONITOR)}
    except Exception as error:  # no artifact store reachable: metrics only
        logger.warning("cannot list the monitor artifacts of run %s: %s", run_id, error)
        return {}
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in names.items():
            if path not in present:
                continue
            local = Path(client.download_artifacts(run_id, path, tmp))
            out[name] = (
                pd.read_parquet(local)
                if local.suffix == ".parquet"
                else json.loads(local.read_text(encoding="utf-8"))
            )
    return out


def _fill_from_metrics(
    client: MlflowClient, run_id: str, latest: Mapping[str, float], evidence: RunEvidence
) -> None:
    """Contract signals the tables lack, from the run's metrics (own names, then aliases)."""
    has_step_table = len(evidence.steps.index) > 0  # complete; its metrics are downsampled
    for key, value in latest.items():
        signal = signals.declared(key)
        if signal is None or signal.cadence != signals.ONCE or key in evidence.summary:
            continue
        evidence.summary[key] = float(value)
    for key in latest:
        signal = signals.declared(key)
        if signal is None or signal.cadence == signals.ONCE:
            continue
        table = evidence.epochs if signal.cadence == signals.EPOCH else evidence.steps
        if key in table.columns or (signal.cadence == signals.STEP and has_step_table):
            continue
        table.add(key, _history(client.get_metric_history(run_id, key)))
    for name, aliases in signals.ALIASES.items():
        if evidence.epochs.series(name) is not None:
            continue
        alias = next((a for a in aliases if a in latest), None)
        if alias is not None:
            rows = _history(client.get_metric_history(run_id, alias))
            if len(rows):  # logged at global steps: the i-th value belongs to epoch i
                rows[:, 0] = np.arange(1, len(rows) + 1)
                evidence.epochs.add(name, rows)


def _history(points: Iterable[Metric]) -> np.ndarray:
    """``(step, value)`` rows sorted by step; of several points at one step the last logged."""
    by_step: dict[int, float] = {}
    for point in sorted(points, key=lambda p: (p.step, p.timestamp)):
        by_step[point.step] = point.value
    return np.array(list(by_step.items()), dtype=np.float64).reshape(-1, 2)


def _natural(name: str) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]
