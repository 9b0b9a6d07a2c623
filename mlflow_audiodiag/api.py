"""The one-line enable for plain loops, and the diagnosis of any run.

>>> from mlflow_audiodiag import watch, diagnose  # doctest: +SKIP
>>> monitor = watch(model, optimizer, loss_fn=criterion, classes=names)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient
from torch import nn
from torch.optim import Optimizer

from mlflow_audiodiag.diagnosis.findings import Diagnosis
from mlflow_audiodiag.diagnosis.rules.registry import Rule
from mlflow_audiodiag.diagnosis.thresholds import DEFAULT_THRESHOLDS, Thresholds
from mlflow_audiodiag.monitoring.groups import ParameterGroups
from mlflow_audiodiag.monitoring.monitor import MonitorConfig, TrainingMonitor
from mlflow_audiodiag.reporting.writeback import diagnose_run

logger = logging.getLogger(__name__)


def watch(
    model: nn.Module,
    optimizer: Optimizer,
    *,
    loss_fn: nn.Module | None = None,
    classes: Sequence[str] | None = None,
    train_data: Any = None,
    val_data: Any = None,
    run_id: str | None = None,
    groups: ParameterGroups | Mapping[str, list[str]] | None = None,
    config: MonitorConfig | None = None,
    diagnose: bool = True,
    client: MlflowClient | None = None,
) -> TrainingMonitor:
    """Records every signal of the evidence contract from a plain loop with no other calls
    than ``end_epoch`` (and ``close``, or use the monitor as a context manager).

    The optimizer's step hooks record gradient norms (before clipping), update ratios,
    learning rates and clipping; forward hooks on the model (and on ``loss_fn`` when given)
    record the step loss, the training accuracy and targets, and the statistics of the first
    training and validation inputs. ``train_data`` / ``val_data`` (a DataLoader or dataset)
    add label and input statistics up front from a bounded sample. Without an active MLflow
    run (and no ``run_id``) a run is started here and ended at close. With ``diagnose`` the
    run is diagnosed when the monitor closes, and the verdict written back to it.

    Args:
        model: the model being trained.
        optimizer: its optimizer.
        loss_fn: the loss module the loop calls (``nn.CrossEntropyLoss()``, ...), if any.
        classes: class names in label order.
        train_data, val_data: the training and validation DataLoader (or dataset).
        run_id, groups, config, client: as for :class:`TrainingMonitor`.
        diagnose: diagnose the run when the monitor closes.

    Example::

        monitor = watch(model, optimizer, loss_fn=criterion, classes=names)
        for epoch in range(1, epochs + 1):
            for inputs, targets in train_loader:
                optimizer.zero_grad()
                criterion(model(inputs), targets).backward()
                optimizer.step()
            logits, targets = predict(model, val_loader)
            monitor.end_epoch(epoch, targets, logits)
        monitor.close()
    """
    started = None
    if run_id is None and mlflow.active_run() is None:
        started = mlflow.start_run()
    monitor = TrainingMonitor(
        model,
        optimizer,
        run_id=run_id,
        groups=groups,
        config=config,
        client=client,
        classes=classes,
        loss_fn=loss_fn,
        hooks=True,
        front_end="watch",
    )
    for split, data in (("train", train_data), ("val", val_data)):
        if data is not None:
            monitor.log_data(split, data)
    if diagnose:
        monitor.add_close_hook(_diagnose_at_close)
    if started is not None:
        monitor.add_close_hook(lambda _: _end_started_run(started.info.run_id))
    return monitor


def _diagnose_at_close(monitor: TrainingMonitor) -> None:
    diagnosis = diagnose_run(monitor.run_id, monitor.client, status="FINISHED")
    cause = f" (most likely cause: {diagnosis.primary_cause})" if diagnosis.primary_cause else ""
    logger.info("audiodiag: run %s is %s%s", monitor.run_id, diagnosis.verdict, cause)


def _end_started_run(run_id: str) -> None:
    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        mlflow.end_run()


def diagnose(
    run_id: str,
    *,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    rules: Sequence[Rule] | None = None,
    write: bool = True,
    client: MlflowClient | None = None,
) -> Diagnosis:
    """Diagnoses a run (finished, failed, killed or still running) from its recorded
    evidence and, with ``write``, writes the verdict, cause, evidence and fix back to it.

    ``rules`` replaces the built-in rules (e.g. ``[*RULES, my_rule]``).

    Example::

        diagnosis = diagnose(run_id)
        print(diagnosis.verdict, diagnosis.primary_cause)
    """
    return diagnose_run(run_id, client, thresholds=thresholds, rules=rules, write=write)
