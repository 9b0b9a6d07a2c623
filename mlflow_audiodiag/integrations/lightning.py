"""``AudioDiagCallback``: the training monitor and the diagnosis as a Lightning callback.

    trainer = Trainer(logger=MLFlowLogger(...), callbacks=[AudioDiagCallback(classes=names)])

The run is the ``MLFlowLogger``'s run when the trainer has one, otherwise the active MLflow run
(``with mlflow.start_run(): trainer.fit(...)``). Nothing else is needed from the module: per
optimizer step the callback records gradient norms (before Lightning's clipping), update
ratios, learning rates, the clipping threshold, the step loss (the training step's output) and
the batch accuracy (the model's logits against the batch's targets); per validation epoch the
validation loss and accuracy from the model's logits, prediction statistics and attention
entropy, and the values the module logs under common names (``val_acc``, ``val_loss``, ...).
Label and input statistics come from the dataloaders (a bounded sample). When ``fit`` ends the
run is diagnosed and the verdict written back to it (``diagnose=False`` turns that off).

A ``validation_step`` may return ``{"logits": ..., "targets": ...}`` (keys configurable); by
default the callback reads the logits of the model's forward pass and the batch's targets.

Limits: one optimizer (``trainer.optimizers[0]``) is monitored; under distributed training
only global rank 0 records, and its validation predictions are its own shard; with
``val_check_interval < 1`` several validations share one epoch's step.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import mlflow
import torch
from lightning.pytorch.loggers import MLFlowLogger
from mlflow.tracking import MlflowClient

from mlflow_audiodiag.integrations.common import diagnose_at_end, user_metrics
from mlflow_audiodiag.monitoring.data_evidence import split_batch
from mlflow_audiodiag.monitoring.groups import ParameterGroups
from mlflow_audiodiag.monitoring.monitor import MonitorConfig, TrainingMonitor

logger = logging.getLogger(__name__)


class AudioDiagCallback(pl.Callback):
    """Records the evidence of :class:`TrainingMonitor` during ``Trainer.fit`` and diagnoses
    the run at its end.

    Args:
        classes: class names, in label order.
        groups: parameter groups (a :class:`ParameterGroups` or ``{"group": [prefixes]}`` over
            the LightningModule's parameter names); default: one group per block of the model.
        config: recording settings.
        logits_key, targets_key: keys of ``validation_step``'s output, when it returns them.
        diagnose: diagnose the run when ``fit`` ends.
        data_batches: batches per dataloader sampled for the label and input statistics.

    Example::

        trainer = Trainer(max_epochs=30, callbacks=[AudioDiagCallback(classes=names)])
        with mlflow.start_run():
            trainer.fit(module, train_loader, val_loader)
    """

    def __init__(
        self,
        classes: Sequence[str] | None = None,
        groups: ParameterGroups | dict[str, list[str]] | None = None,
        config: MonitorConfig | None = None,
        *,
        logits_key: str = "logits",
        targets_key: str = "targets",
        diagnose: bool = True,
        data_batches: int = 16,
    ) -> None:
        super().__init__()
        if data_batches < 0:
            raise ValueError(f"data_batches must be >= 0, got {data_batches}")
        self.classes = list(classes) if classes is not None else None
        self.groups = groups
        self.config = config
        self.logits_key = logits_key
        self.targets_key = targets_key
        self.diagnose = diagnose
        self.data_batches = data_batches
        self.monitor: TrainingMonitor | None = None
        self._last_global_step = 0
        self._window_loss: torch.Tensor | None = None
        self._val_logits: list[torch.Tensor] = []
        self._val_targets: list[torch.Tensor] = []
        self._reported_epoch: int | None = None

    # -- lifecycle -----------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # on_train_start, not on_fit_start: a resumed global_step is restored in between.
        if not trainer.is_global_zero or self.monitor is not None:
            return
        if not trainer.optimizers:
            raise RuntimeError("AudioDiagCallback needs an optimizer (configure_optimizers)")
        run_id, client = _resolve_run(trainer)
        self.monitor = TrainingMonitor(
            pl_module,
            trainer.optimizers[0],
            run_id=run_id,
            groups=self.groups,
            config=self.config,
            client=client,
            classes=self.classes,
            front_end="lightning",
            tap_inner=True,  # training_step may call self.model(x) as well as self(x)
        )
        self.monitor.taps.keep_eval = True
        if trainer.gradient_clip_val and trainer.gradient_clip_algorithm in (None, "norm"):
            self.monitor.clip_max_norm = float(trainer.gradient_clip_val)
        self.monitor.step = trainer.global_step  # step numbers continue after a resume
        if self.diagnose:
            self.monitor.add_close_hook(diagnose_at_end)
        self._log_data(trainer)
        self._last_global_step = trainer.global_step
        self._window_loss = None
        self._reported_epoch = None

    def _log_data(self, trainer: pl.Trainer) -> None:
        if not self.data_batches or self.monitor is None:
            return
        loaders = {"train": trainer.train_dataloader, "val": trainer.val_dataloaders}
        for split, loader in loaders.items():
            if isinstance(loader, list | tuple):
                loader = loader[0] if loader else None
            if loader is None:
                continue
            try:
                self.monitor.log_data(split, loader, max_batches=self.data_batches)
            except Exception as error:  # statistics must never stop training
                logger.warning("AudioDiagCallback: no %s data statistics: %s", split, error)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._close()

    # -- steps ---------------------------------------------------------------------------
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        # Lightning calls this after the (accumulated) backward passes and AMP unscaling,
        # before gradient clipping.
        if self.monitor is not None and optimizer is self.monitor.optimizer:
            self.monitor.after_backward()

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self.monitor is None:
            return
        _, targets = split_batch(batch)
        if targets is not None:
            self.monitor.taps.observe_targets(targets)
        loss = _loss(outputs)
        if loss is not None and pl_module.automatic_optimization and self._window_loss is not None:
            # Lightning divides each micro-batch loss by accumulate_grad_batches: their sum over
            # the accumulation window is the mean loss of the step.
            loss = self._window_loss + loss
        self._window_loss = loss
        if trainer.global_step != self._last_global_step:  # the optimizer stepped
            self._last_global_step = trainer.global_step
            self.monitor.after_step(self._window_loss)
            self._window_loss = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Epochs without validation still record their training signals.
        epoch = trainer.current_epoch + 1
        if self.monitor is not None and self._reported_epoch != epoch:
            self.monitor.end_epoch(epoch, metrics=user_metrics(trainer.callback_metrics))
            self._reported_epoch = epoch

    # -- validation ----------------------------------------------------------------------
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._val_logits, self._val_targets = [], []
        if self.monitor is not None:
            self.monitor.taps.take_eval()  # drop what a sanity check left

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self.monitor is None or trainer.sanity_checking or dataloader_idx != 0:
            return
        if isinstance(outputs, Mapping) and {self.logits_key, self.targets_key} <= set(outputs):
            self._val_logits.append(torch.as_tensor(outputs[self.logits_key]).detach())
            self._val_targets.append(torch.as_tensor(outputs[self.targets_key]).detach())
            self.monitor.taps.take_eval()
            return
        _, targets = split_batch(batch)
        if targets is not None:
            self.monitor.taps.observe_eval_targets(targets)
        kept = self.monitor.taps.take_eval()
        if kept is not None:
            self._val_logits.append(kept[0])
            self._val_targets.append(kept[1])

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.monitor is None or trainer.sanity_checking:
            return
        epoch = trainer.current_epoch + 1
        metrics = user_metrics(trainer.callback_metrics)
        if self._val_logits:
            logits = torch.cat([t.reshape(t.shape[0], -1) for t in self._val_logits])
            targets = torch.cat([t.reshape(-1) for t in self._val_targets])
            self.monitor.end_epoch(epoch, targets, logits, metrics=metrics)
        else:
            self.monitor.end_epoch(epoch, metrics=metrics)
        self._reported_epoch = epoch
        self._val_logits, self._val_targets = [], []

    # -- internals -----------------------------------------------------------------------
    def _close(self) -> None:
        monitor, self.monitor = self.monitor, None
        if monitor is not None and not monitor.close():
            logger.warning("AudioDiagCallback: not everything reached MLflow (see above)")


def _resolve_run(trainer: pl.Trainer) -> tuple[str, MlflowClient | None]:
    """The MLFlowLogger's run (with a client for its tracking URI), else the active run."""
    for candidate in trainer.loggers:
        if isinstance(candidate, MLFlowLogger):
            run_id = candidate.run_id
            if run_id is None:
                raise RuntimeError("AudioDiagCallback: the MLFlowLogger has no run")
            return run_id, MlflowClient(tracking_uri=candidate.experiment.tracking_uri)
    active = mlflow.active_run()
    if active is None:
        raise RuntimeError(
            "AudioDiagCallback needs an MLflow run: give the Trainer an MLFlowLogger or call "
            "trainer.fit(...) inside `with mlflow.start_run():`"
        )
    return active.info.run_id, None


def _loss(outputs: Any) -> torch.Tensor | None:
    """The loss in a ``training_step`` output: a tensor, or a mapping with ``"loss"``."""
    if isinstance(outputs, Mapping):
        outputs = outputs.get("loss")
    if isinstance(outputs, torch.Tensor) and outputs.numel() == 1:
        return outputs.detach().reshape(())
    return None
