"""The stagnation check during training: at each epoch end, from what the monitor just
recorded.

Registered on a :class:`~mlflow_audiodiag.monitoring.monitor.TrainingMonitor` as an epoch hook,
it keeps the tag ``audiodiag.live`` current (through the monitor's durable logger, so an
outage never blocks training) and, when ``stop=True``, asks the loop to stop once stagnation
is confirmed, with the reason. The diagnosis at the end of training writes the final state.
"""

from __future__ import annotations

import logging
from typing import Protocol

import numpy as np

from mlflow_audiodiag import schema
from mlflow_audiodiag.diagnosis.evidence import RunEvidence, Table
from mlflow_audiodiag.diagnosis.findings import Severity
from mlflow_audiodiag.diagnosis.rules import REGISTRY, STAGNANT_VALIDATION, Context, MissingSignal
from mlflow_audiodiag.diagnosis.thresholds import DEFAULT_THRESHOLDS, Thresholds

logger = logging.getLogger(__name__)


class _Monitor(Protocol):
    """What the check needs of the monitor: its once-values and a way to set tags."""

    run_id: str

    @property
    def summary(self) -> dict[str, float]: ...

    def set_tag(self, key: str, value: str) -> None: ...


class LiveStagnationCheck:
    """Epoch hook ``(epoch, row) -> None`` running the ``stagnant_validation`` rule."""

    def __init__(
        self, monitor: _Monitor, thresholds: Thresholds = DEFAULT_THRESHOLDS, stop: bool = False
    ) -> None:
        self.monitor = monitor
        self.thresholds = thresholds
        self.stop = stop
        self.rows: list[dict[str, float]] = []
        self.state = ""
        self.should_stop = False
        self.reason = ""

    def __call__(self, epoch: int, row: dict[str, float]) -> None:
        self.rows.append(dict(row))
        epochs = Table()
        for name in {key for r in self.rows for key in r} - {"epoch"}:
            points = [(r["epoch"], r[name]) for r in self.rows if name in r]
            epochs.add(name, np.array(points, dtype=np.float64))
        evidence = RunEvidence(
            epochs=epochs,
            summary=dict(self.monitor.summary),
            run_id=self.monitor.run_id,
            status="RUNNING",
        )
        try:
            finding = REGISTRY[STAGNANT_VALIDATION](evidence, self.thresholds, Context())
        except MissingSignal:
            self._set_state(f"watching: epoch {epoch}, not enough epochs yet")
            return
        if finding is None:
            self._set_state(f"progressing at epoch {epoch}")
            return
        if finding.severity is Severity.INFO:
            self._set_state(f"settled at epoch {epoch}: {finding.title}")
            return
        self._set_state(f"stagnant at epoch {epoch}: {finding.title}")
        if self.stop and not self.should_stop:
            self.should_stop = True
            self.reason = f"stopped at epoch {epoch}: {finding.title}"
            logger.warning("audiodiag: %s", self.reason)
            self.monitor.set_tag(schema.TAG_STOP_REASON, self.reason)

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.monitor.set_tag(schema.TAG_LIVE, state)
