"""``AudioDiagTrainerCallback``: the training monitor as a ``transformers.Trainer`` callback.

    callback = AudioDiagTrainerCallback(classes=names)
    trainer = Trainer(..., callbacks=[callback], compute_metrics=callback.compute_metrics())

The run is the active MLflow run when training begins; without one the callback starts a run
and ends it when training ends. Transformers' own ``MLflowCallback`` (``report_to=["mlflow"]``)
may run alongside: it starts its run first, and both then log into that run.

Per optimizer step it records gradient norms, update ratios and learning rates. The Trainer
calls ``on_pre_optimizer_step`` after its gradient clipping, so here ``grad_norm/*`` are
post-clipping norms (set ``max_grad_norm=0`` for the raw norms; the Trainer logs its own
pre-clipping ``grad_norm``). The Trainer hands callbacks no loss, so ``train/step_loss`` is not
recorded. Validation prediction statistics need the Trainer's ``compute_metrics`` to come from
:meth:`AudioDiagTrainerCallback.compute_metrics`; they are logged at step ``round(epoch)`` with
``eval_strategy="epoch"``, else at the evaluation's index (1, 2, ...).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import mlflow
import numpy as np
import torch
from torch import nn
from transformers import (
    EvalPrediction,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from mlflow_audiodiag.monitoring.groups import ParameterGroups
from mlflow_audiodiag.monitoring.monitor import MonitorConfig, TrainingMonitor

logger = logging.getLogger(__name__)

MetricsFn = Callable[..., dict[str, float]]


class AudioDiagTrainerCallback(TrainerCallback):
    """Records the diagnostics of :class:`TrainingMonitor` during ``Trainer.train``.

    Args:
        classes: class names, in label order, for the validation prediction statistics.
        groups: parameter groups (a :class:`ParameterGroups` or ``{"group": [prefixes]}`` over
            the model's parameter names); default: the default grouping of the wrapped model
            when the model holds a single child model.
        config: recording settings.
    """

    def __init__(
        self,
        classes: Sequence[str] | None = None,
        groups: ParameterGroups | dict[str, list[str]] | None = None,
        config: MonitorConfig | None = None,
    ) -> None:
        self.classes = list(classes) if classes is not None else None
        self.groups = groups
        self.config = config
        self.monitor: TrainingMonitor | None = None
        self._started_run = False
        self._evaluations = 0
        self._latest: tuple[np.ndarray, np.ndarray] | None = None
        self._batches: list[tuple[np.ndarray, np.ndarray]] = []
        self._warned = False

    def compute_metrics(self, fn: MetricsFn | None = None) -> MetricsFn:
        """A ``compute_metrics`` for the Trainer that records the evaluation's logits and labels
        for the monitor and returns ``fn(eval_prediction)`` (default: ``{"accuracy": ...}``).

        Supports ``batch_eval_metrics=True`` (calls with ``compute_result``) as well.
        """

        def compute(
            eval_prediction: EvalPrediction, compute_result: bool | None = None
        ) -> dict[str, float]:
            logits = _first(eval_prediction.predictions)
            labels = _first(eval_prediction.label_ids)
            batched = compute_result is not None
            if batched:
                self._batches.append((logits, labels))
                if compute_result:
                    logits = np.concatenate([b[0] for b in self._batches])
                    labels = np.concatenate([b[1] for b in self._batches])
                    self._batches = []
            if not batched or compute_result:
                self._latest = (logits, labels)
            if fn is not None and batched:
                return fn(eval_prediction, compute_result=compute_result)
            if fn is not None:
                return fn(eval_prediction)
            if batched and not compute_result:
                return {}
            return {"accuracy": float(np.mean(logits.argmax(axis=-1) == labels))}

        return compute

    # -- lifecycle -----------------------------------------------------------------------
    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        **kwargs: Any,
    ) -> None:
        if not state.is_world_process_zero or self.monitor is not None:
            return
        if model is None or optimizer is None:
            raise RuntimeError("AudioDiagTrainerCallback: the Trainer passed no model/optimizer")
        active = mlflow.active_run()
        if active is None:
            active = mlflow.start_run()
            self._started_run = True
        self.monitor = TrainingMonitor(
            model,
            optimizer,
            run_id=active.info.run_id,
            groups=self.groups,
            config=self.config,
        )
        self.monitor.step = state.global_step  # step numbers continue after a resume
        self._evaluations = 0
        self._latest = None

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        monitor, self.monitor = self.monitor, None
        if monitor is not None and not monitor.close():
            logger.warning("AudioDiagTrainerCallback: not every metric point reached MLflow")
        if self._started_run:
            self._started_run = False
            run = mlflow.active_run()
            if monitor is not None and run is not None and run.info.run_id == monitor.run_id:
                mlflow.end_run()

    # -- steps ---------------------------------------------------------------------------
    def on_pre_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.monitor is not None:
            self.monitor.after_backward()

    def on_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.monitor is not None:
            self.monitor.after_step()

    # -- evaluation ----------------------------------------------------------------------
    def on_evaluate(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        latest, self._latest = self._latest, None
        if self.monitor is None:
            return
        self._evaluations += 1
        by_epoch = args.eval_strategy == "epoch"
        epoch = round(state.epoch or 0) if by_epoch else self._evaluations
        if latest is None:
            if not self._warned:
                self._warned = True
                logger.warning(
                    "AudioDiagTrainerCallback: no validation predictions recorded; pass "
                    "compute_metrics=callback.compute_metrics() to the Trainer"
                )
            self.monitor.end_epoch(epoch)  # still flushes the step signals
            return
        logits, labels = latest
        self.monitor.end_epoch(epoch, labels, logits, classes=self.classes)


def _first(values: Any) -> np.ndarray:
    """The first array of a (possibly nested) prediction/label tuple, as numpy."""
    while isinstance(values, tuple | list):
        values = values[0]
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)
