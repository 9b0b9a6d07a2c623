"""The stagnation check during training: at each epoch end, from what the loop just reported.

Registered on a :class:`~mlflow_audiodiag.monitoring.monitor.TrainingMonitor` as an epoch hook,
it keeps the tag ``audiodiag.live`` current (changed only when the state changes) and, when
``stop=True``, asks the loop to stop once stagnation is confirmed, with the reason.
"""

from __future__ import annotations

import logging

import mlflow
import numpy as np
from mlflow.tracking import MlflowClient

from mlflow_audiodiag import schema
from mlflow_audiodiag.diagnosis.evidence import RunEvidence
from mlflow_audiodiag.diagnosis.rules import MissingSignal, stagnant_validation
from mlflow_audiodiag.diagnosis.thresholds import DEFAULT_THRESHOLDS, Thresholds
from mlflow_audiodiag.monitoring.delivery import check_health, is_http_uri

logger = logging.getLogger(__name__)

_TRACKED = (
    schema.split_metric(schema.SPLIT_VAL, "accuracy"),
    schema.split_metric(schema.SPLIT_VAL, "loss"),
    schema.split_metric(schema.SPLIT_TRAIN, "accuracy"),
    schema.split_metric(schema.SPLIT_TRAIN, "loss"),
    schema.METRIC_LR,
    schema.METRIC_MAJORITY_BASELINE,
)


class LiveStagnationCheck:
    """Epoch hook ``(epoch, metrics) -> None`` running the ``stagnant_validation`` rule."""

    def __init__(
        self,
        run_id: str,
        client: MlflowClient | None = None,
        thresholds: Thresholds = DEFAULT_THRESHOLDS,
        stop: bool = False,
    ) -> None:
        self.run_id = run_id
        self.client = client or MlflowClient()
        self.thresholds = thresholds
        self.stop = stop
        self.history: dict[str, list[tuple[float, float]]] = {}
        self.state = ""
        self.should_stop = False
        self.reason = ""

    def __call__(self, epoch: int, metrics: dict[str, float]) -> None:
        for key in _TRACKED:
            if key in metrics:
                self.history.setdefault(key, []).append((float(epoch), float(metrics[key])))
        evidence = RunEvidence(
            epoch_metrics={k: np.array(v) for k, v in self.history.items()},
            run_id=self.run_id,
            status="RUNNING",
        )
        try:
            finding = stagnant_validation(evidence, self.thresholds)
        except MissingSignal:
            self._set_state(f"watching: epoch {epoch}, not enough epochs yet")
            return
        if finding is None:
            self._set_state(f"progressing at epoch {epoch}")
            return
        self._set_state(f"stagnant at epoch {epoch}: {finding.title}")
        if self.stop and not self.should_stop:
            self.should_stop = True
            self.reason = f"stopped at epoch {epoch}: {finding.title}"
            logger.warning("audiodiag: %s", self.reason)
            self._tag(schema.TAG_STOP_REASON, self.reason)

    def _set_state(self, state: str) -> None:
        kind = state.split(" ", 1)[0]
        if kind != self.state.split(" ", 1)[0]:  # one tracking call per change of state
            self.state = state
            self._tag(schema.TAG_LIVE, state)

    def _tag(self, key: str, value: str) -> None:
        uri = mlflow.get_tracking_uri()
        if is_http_uri(uri) and check_health(uri, timeout_s=2.0) is not None:
            logger.warning("audiodiag: tracking server unreachable; tag %s not updated", key)
            return
        try:
            self.client.set_tag(self.run_id, key, value)
        except Exception as error:  # the live tag must never stop training
            logger.warning("audiodiag: could not set tag %s: %s", key, error)
