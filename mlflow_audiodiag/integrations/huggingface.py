"""``AudioDiagTrainerCallback``: the training monitor and the diagnosis as a
``transformers.Trainer`` callback.

    trainer = Trainer(..., callbacks=[AudioDiagTrainerCallback(classes=names)])

The run is the active MLflow run when training begins; without one the callback starts a run
and ends it when training ends. Transformers' own ``MLflowCallback`` (``report_to=["mlflow"]``)
may run alongside: it starts its run first, and both then log into that run.

Nothing else is needed: the optimizer's step hooks record every step, with gradient norms read
when the backward pass ends (before the Trainer's clipping), the clipping threshold
(``max_grad_norm``), update ratios and learning rates; the model's forward hook gives the step
loss (the model's own ``loss``) and the batch accuracy, and at every evaluation the validation
logits and labels. Values the Trainer reports under common names (``eval_loss``,
``eval_accuracy``) are recorded too. ``compute_metrics=callback.compute_metrics()`` still works
(and hands the callback the evaluation's predictions directly). When training ends the run is
diagnosed and the verdict written back (``diagnose=False`` turns that off). Evaluations are
epochs 1, 2, ... (``eval_strategy="epoch"``: the Trainer's epoch).
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

from mlflow_audiodiag.integrations.common import diagnose_at_end, user_metrics
from mlflow_audiodiag.monitoring.groups import ParameterGroups
from mlflow_audiodiag.monitoring.monitor import MonitorConfig, TrainingMonitor

logger = logging.getLogger(__name__)

MetricsFn = Callable[..., dict[str, float]]


class AudioDiagTrainerCallback(TrainerCallback):
    """Records the evidence of :class:`TrainingMonitor` during ``Trainer.train`` and diagnoses
    the run at its end.

    Args:
        classes: class names, in label order.
        groups: parameter groups (a :class:`ParameterGroups` or ``{"group": [prefixes]}`` over
            the model's parameter names); default: one group per block (``encoder.layer.<i>``).
        config: recording settings.
        diagnose: diagnose the run when training ends.

    Example::

        trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=val,
                          callbacks=[AudioDiagTrainerCallback(classes=names)])
        trainer.train()
    """

    def __init__(
        self,
        classes: Sequence[str] | None = None,
        groups: ParameterGroups | dict[str, list[str]] | None = None,
        config: MonitorConfig | None = None,
        *,
        diagnose: bool = True,
    ) -> None:
        self.classes = list(classes) if classes is not None else None
        self.groups = groups
        self.config = config
        self.diagnose = diagnose
        self.monitor: TrainingMonitor | None = None
        self._started_run: str | None = None
        self._evaluations = 0
        self._latest: tuple[np.ndarray, np.ndarray] | None = None
        self._batches: list[tuple[np.ndarray, np.ndarray]] = []

    def compute_metrics(self, fn: MetricsFn | None = None) -> MetricsFn:
        """A ``compute_metrics`` for the Trainer that hands the evaluation's logits and labels
        to the monitor and returns ``fn(eval_prediction)`` (default: ``{"accuracy": ...}``).

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
            self._started_run = active.info.run_id
        self.monitor = TrainingMonitor(
            model,
            getattr(optimizer, "optimizer", optimizer),  # accelerate wraps the optimizer
            run_id=active.info.run_id,
            groups=self.groups,
            config=self.config,
            classes=self.classes,
            hooks=True,
            front_end="huggingface",
        )
        self.monitor.taps.keep_eval = True
        if args.max_grad_norm and args.max_grad_norm > 0:
            self.monitor.clip_max_norm = float(args.max_grad_norm)
        self.monitor.step = state.global_step  # step numbers continue after a resume
        if self.diagnose:
            self.monitor.add_close_hook(diagnose_at_end)
        self._evaluations = 0
        self._latest = None

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        monitor, self.monitor = self.monitor, None
        if monitor is not None and not monitor.close():
            logger.warning("AudioDiagTrainerCallback: not everything reached MLflow (see above)")
        started, self._started_run = self._started_run, None
        run = mlflow.active_run()
        if started is not None and run is not None and run.info.run_id == started:
            mlflow.end_run()

    # -- evaluation ----------------------------------------------------------------------
    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        latest, self._latest = self._latest, None
        if self.monitor is None:
            return
        kept = self.monitor.taps.take_eval()
        self._evaluations += 1
        by_epoch = str(getattr(args, "eval_strategy", "")) in ("epoch", "IntervalStrategy.EPOCH")
        epoch = round(state.epoch or 0) if by_epoch and state.epoch else self._evaluations
        given = user_metrics(metrics or {})
        if latest is None and kept is not None:
            latest = (kept[0].float().cpu().numpy(), kept[1].cpu().numpy())
        if latest is None:
            self.monitor.end_epoch(epoch, metrics=given)
            return
        logits, labels = latest
        self.monitor.end_epoch(epoch, labels, logits, metrics=given)


def _first(values: Any) -> np.ndarray:
    """The first array of a (possibly nested) prediction/label tuple, as numpy."""
    while isinstance(values, tuple | list):
        values = values[0]
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)
