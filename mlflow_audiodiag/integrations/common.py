"""What both framework callbacks share: the end-of-training diagnosis and the user's own
metric values under contract names."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from mlflow_audiodiag import signals
from mlflow_audiodiag.monitoring.monitor import TrainingMonitor
from mlflow_audiodiag.reporting.writeback import diagnose_run

logger = logging.getLogger(__name__)


def diagnose_at_end(monitor: TrainingMonitor) -> None:
    """Diagnoses the run once the monitor delivered everything (a failure is reported, never
    raised: the trained run must not be lost to it)."""
    try:
        diagnosis = diagnose_run(monitor.run_id, monitor.client, status="FINISHED")
    except Exception as error:
        logger.error("audiodiag: could not diagnose run %s: %s", monitor.run_id, error)
        return
    cause = f" (most likely cause: {diagnosis.primary_cause})" if diagnosis.primary_cause else ""
    logger.info("audiodiag: run %s is %s%s", monitor.run_id, diagnosis.verdict, cause)


def user_metrics(values: Mapping[str, Any]) -> dict[str, float]:
    """The scalar values a framework reports (``val_acc``, ``eval_loss``, ...) that name a
    contract signal or a common alias of one."""
    out = {}
    for key, value in values.items():
        if signals.declared(key) is None and signals.alias_of(key) is None:
            continue
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            continue
    return out
