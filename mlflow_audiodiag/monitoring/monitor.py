"""``TrainingMonitor``: records every signal of the evidence contract from any PyTorch loop.

Two ways to drive it. Explicit calls, for full control::

    monitor = TrainingMonitor(model, optimizer)            # inside an active MLflow run
    for epoch in ...:
        for batch in ...:
            loss.backward();  monitor.after_backward(loss)
            optimizer.step(); monitor.after_step()
        monitor.end_epoch(epoch, val_targets, val_logits)
    monitor.close()

or hooks (``hooks=True``, what :func:`mlflow_audiodiag.watch` sets up): the optimizer's step
hooks and the model's forward hooks record the steps, and the loop only calls ``end_epoch``.

Per step the monitor records per-group gradient norms (before clipping), update-to-weight
ratios, every param group's learning rate, the clipping threshold, the loss and the batch
accuracy into the run's step table (``monitor/steps.parquet``, full resolution); per epoch the
validation loss and accuracy it computes from the logits, the training loss and accuracy, the
prediction statistics and attention entropy into ``monitor/epochs.parquet``; once, the label
and feature statistics into ``monitor/summary.json``. People get a few MLflow metrics per
signal (per-step series downsampled to a bounded number of points), the diagnosis reads the
tables. Gradient statistics stay on the device until a buffer of ``buffer_steps`` steps is
drained; everything reaches MLflow through a durable logger that survives server outages.
"""

from __future__ import annotations

import functools
import logging
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.tracking import MlflowClient
from torch import nn

from mlflow_audiodiag import schema, signals
from mlflow_audiodiag.monitoring.attention import attention_entropy
from mlflow_audiodiag.monitoring.capture import (
    BackwardEnd,
    ForwardOrder,
    ModelTaps,
    StepOutputs,
    as_feature_batch,
)
from mlflow_audiodiag.monitoring.data_evidence import (
    DataEvidence,
    dataset_labels,
    label_counts_stats,
    sample_batches,
)
from mlflow_audiodiag.monitoring.downsample import Block, Downsampler
from mlflow_audiodiag.monitoring.gradients import GradientTracker
from mlflow_audiodiag.monitoring.groups import ParameterGroups
from mlflow_audiodiag.monitoring.sink import DurableRunLogger, SinkConfig
from mlflow_audiodiag.monitoring.statistics import (
    FeatureStatsAccumulator,
    label_statistics,
    level_statistics,
    prediction_statistics,
)
from mlflow_audiodiag.numeric import clip_levels

logger = logging.getLogger(__name__)

ArrayLike = torch.Tensor | np.ndarray
EpochHook = Callable[[int, dict[str, float]], None]
CloseHook = Callable[["TrainingMonitor"], None]

TRAIN, VAL = schema.SPLIT_TRAIN, schema.SPLIT_VAL
STEPS_TABLE, EPOCHS_TABLE, SUMMARY, GROUPS = "steps", "epochs", "summary", "parameter_groups"
# Once signals that are MLflow metrics too (the rest stays in the summary and its tables).
HEADLINE_ONCE = (
    signals.MAJORITY_BASELINE.name,
    signals.IMBALANCE_RATIO.key(split=TRAIN),
    signals.MAJORITY_FRACTION.key(split=TRAIN),
    signals.FEATURE_SHIFT.key(stage=signals.STAGE_INPUT, split=VAL, agg="max"),
)
_CLIPPED = 1.0 - 1e-4  # a post-step gradient norm below this share of the pre-clip norm: clipped


@dataclass(frozen=True)
class MonitorConfig:
    """How often and how much the monitor records."""

    every_n_steps: int = 1
    buffer_steps: int = 256
    track_updates: bool = True
    update_interval: int = 1
    attention_probe_size: int = 16
    live_check: bool = True
    stop_on_stagnation: bool = False
    flush_interval_s: float = 5.0

    def __post_init__(self) -> None:
        if self.every_n_steps < 1 or self.buffer_steps < 1 or self.update_interval < 1:
            raise ValueError("every_n_steps, buffer_steps and update_interval must be >= 1")


class TrainingMonitor:
    """Records the evidence of one training run into an MLflow run.

    Args:
        model: the model being trained.
        optimizer: its optimizer (learning rates are read from its param groups).
        run_id: the MLflow run to log into; default: the active run.
        groups: parameter groups for gradient statistics: a :class:`ParameterGroups`, a mapping
            ``{"group": ["parameter.name.prefix", ...]}``, or None for one group per block.
        config: recording settings.
        client: the MLflow client to use (default: one for the current tracking URI).
        sink: the durable logger to deliver through (default: a new one for the run).
        classes: class names in label order (default: ``"0"``, ``"1"``, ...).
        loss_fn: a loss module to watch for the step loss and targets.
        hooks: record steps through the optimizer's step hooks instead of explicit calls.
        front_end: what drives the monitor (``loop``, ``watch``, ``lightning``,
            ``huggingface``, ``bundled``), recorded as the tag ``audiodiag.front_end``.
        tap_inner: watch the forward passes of the network inside a wrapper (a
            LightningModule's single child) rather than of ``model`` itself.

    Example::

        with mlflow.start_run(), TrainingMonitor(model, optimizer) as monitor:
            ...  # after_backward / after_step per step, end_epoch per epoch
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        run_id: str | None = None,
        groups: ParameterGroups | Mapping[str, list[str]] | None = None,
        config: MonitorConfig | None = None,
        client: MlflowClient | None = None,
        sink: DurableRunLogger | None = None,
        classes: Sequence[str] | None = None,
        loss_fn: nn.Module | None = None,
        hooks: bool = False,
        front_end: str = "loop",
        tap_inner: bool = False,
    ) -> None:
        self.config = config or MonitorConfig()
        if run_id is None:
            active = mlflow.active_run()
            if active is None:
                raise ValueError(
                    "TrainingMonitor needs an MLflow run: call it inside mlflow.start_run() "
                    "or pass run_id="
                )
            run_id = active.info.run_id
        self.run_id = run_id
        self.client = client or MlflowClient()
        self.model = model
        self.optimizer = optimizer
        self.classes = list(classes) if classes is not None else None
        if isinstance(groups, Mapping):
            groups = ParameterGroups.from_prefixes(model, groups)
        self.groups = groups or ParameterGroups.default(model)
        self.tracker = GradientTracker(
            model,
            self.groups,
            capacity=self.config.buffer_steps,
            track_updates=self.config.track_updates,
            update_interval=self.config.update_interval,
        )
        tracked = {id(p) for p in self.tracker.parameters}
        # Frozen when the monitor was built, so untracked: gradients there mean an unfreeze.
        self._untracked = [p for p in model.parameters() if id(p) not in tracked]
        self.sink = sink or DurableRunLogger(
            run_id, self.client, SinkConfig(flush_interval_s=self.config.flush_interval_s)
        )
        self.data = DataEvidence()
        self.step = 0
        self.clip_max_norm: float | None = None  # a known clipping threshold (frameworks)
        self._recording = False
        self._pending: list[dict[str, Any]] = []
        self._explicit_loss: torch.Tensor | None = None
        self._clip_probe: tuple[torch.Tensor, torch.Tensor] | None = None
        self._step_clip: float | None = None
        self._epoch_rows: list[dict[str, float]] = []
        self._epoch_losses: list[np.ndarray] = []
        self._epoch_correct = [0.0, 0.0]
        self._train_class_counts: torch.Tensor | None = None
        self._epochs_seen = 0
        self._nonfinite = {signals.NONFINITE_GRADS.name: 0.0, signals.NONFINITE_LOSS.name: 0.0}
        self._attention_inputs: Any = None
        self._epoch_hooks: list[EpochHook] = []
        self._close_hooks: list[CloseHook] = []
        self._closed = False
        self._downsampler = Downsampler(
            {
                signals.STEP_LOSS.name: signals.STEP_LOSS.name,
                signals.GRAD_NORM_TOTAL.name: signals.GRAD_NORM_TOTAL.name,
                schema.METRIC_LOG10_UPDATE_RATIO: self._log10_update_ratio,
                schema.METRIC_LOG10_LR: self._log10_lr,
            },
            maxima=(signals.GRAD_NORM_TOTAL.name,),
        )
        inner = self.groups.root(model)
        self.taps = ModelTaps(inner if tap_inner else model, loss_fn=loss_fn)
        self._order = ForwardOrder(inner, self._on_forward_order)
        self._hook_handles: list[Any] = []
        self._backward_end: BackwardEnd | None = None
        if hooks:
            self._install_step_hooks()
        self._start_run_records(front_end)

    # -- set-up ------------------------------------------------------------------------------
    def _start_run_records(self, front_end: str) -> None:
        frozen = self.groups.frozen_fraction()
        self._headline_logged: dict[str, float] = {}
        self._summary: dict[str, float] = {
            **{signals.FROZEN_FRACTION.key(group=g): v for g, v in frozen.items()},
            signals.TRAINABLE_PARAMETERS.name: float(self.groups.trainable_count()),
        }
        self.sink.write_json(GROUPS, self.groups.describe())
        self.sink.write_json(SUMMARY, self._summary)
        self.sink.set_tag(schema.TAG_FRONT_END, front_end)
        self._set_experiment_kind()

    def _set_experiment_kind(self) -> None:
        """Opens the run's experiment in MLflow's model-training view unless it has a kind."""
        try:
            run = self.client.get_run(self.run_id)
            experiment = self.client.get_experiment(run.info.experiment_id)
            if schema.TAG_EXPERIMENT_KIND not in experiment.tags:
                self.client.set_experiment_tag(
                    experiment.experiment_id,
                    schema.TAG_EXPERIMENT_KIND,
                    schema.EXPERIMENT_KIND_TRAINING,
                )
        except Exception as error:  # a view preference must never stop training
            logger.debug("could not set the experiment kind: %s", error)

    def _install_step_hooks(self) -> None:
        self._backward_end = BackwardEnd(self.tracker.parameters, self._on_backward_end)
        self._hook_handles = [
            self.optimizer.register_step_pre_hook(lambda *_: self._before_optimizer_step()),
            self.optimizer.register_step_post_hook(lambda *_: self.after_step()),
        ]
        self._hooked = True

    _hooked = False

    def _on_forward_order(self, first_call: dict[str, int]) -> None:
        prefix = self.groups.prefix
        self.groups.reorder({f"{prefix}{name}".rstrip("."): i for name, i in first_call.items()})
        self.sink.write_json(GROUPS, self.groups.describe())

    # -- dataset level -------------------------------------------------------------------------
    def log_dataset(
        self,
        split: str,
        labels: ArrayLike | Sequence[int] | None = None,
        classes: Sequence[str] | None = None,
        *,
        features: ArrayLike | Iterable[ArrayLike] | None = None,
        stage: str = signals.STAGE_INPUT,
        waveforms: Iterable[ArrayLike] | None = None,
        levels: ArrayLike | None = None,
        accumulated: FeatureStatsAccumulator | None = None,
    ) -> None:
        """Label histogram of ``split`` and, when given, statistics of its features and audio.

        ``features`` is ``[N, ...]`` (an array or an iterable of batches, streamed); ``stage``
        tells features before the loop's own normalization (``"raw"``) from what the model
        receives (``"input"``, the default). Without this call the monitor takes the label
        histograms from the targets it sees and the ``input`` statistics from the model's
        first input batches. ``waveforms`` (mono clips in [-1, 1]) or precomputed ``levels``
        (rows of :func:`~mlflow_audiodiag.numeric.clip_levels`) give the shares of silent and
        clipped clips. ``accumulated`` replaces ``features`` with statistics accumulated
        elsewhere (under DDP: every rank's shard, merged).
        """
        if classes is not None:
            self.classes = list(classes)
        if waveforms is not None:
            levels = np.array([clip_levels(_to_numpy(w)) for w in waveforms]).reshape(-1, 3)
        if levels is not None:
            self.data.levels[split] = level_statistics(levels)
        if labels is not None and not self.data.has_labels(split):
            names = self.classes or _index_names(int(np.max(_to_numpy(labels))) + 1)
            self.data.labels[split] = label_statistics(_to_numpy(labels).astype(np.int64), names)
        if features is not None or accumulated is not None:
            if accumulated is None:
                accumulated = FeatureStatsAccumulator()
                for batch in _batches(features):
                    accumulated.update(as_feature_batch(torch.as_tensor(batch)))
            self.data.features[(stage, split)] = accumulated.result()
        self._write_summary()

    def log_data(
        self,
        split: str,
        data: Any,
        *,
        stage: str = signals.STAGE_INPUT,
        max_batches: int = 32,
    ) -> int:
        """Label and feature statistics of a split from a DataLoader or a dataset.

        Reads at most ``max_batches`` batches, drawn at random (seed 0) from a map-style
        dataset and in order from an iterable one, so large sets cost little; the labels come
        from the whole dataset when it exposes ``targets`` or ``labels``. Returns the number
        of clips the feature statistics cover (also in ``features/<stage>/<split>/n_clips``).
        """
        inputs, targets = sample_batches(data, max_batches)
        accumulator = FeatureStatsAccumulator()
        for batch in inputs:
            accumulator.update(as_feature_batch(batch))
        labels = dataset_labels(data)
        if labels is None and targets:
            labels = torch.cat([t.reshape(-1) for t in targets]).cpu().numpy()
        self.log_dataset(split, labels, accumulated=accumulator if inputs else None, stage=stage)
        return accumulator.result().n_clips if inputs else 0

    def add_epoch_hook(self, hook: EpochHook) -> None:
        """``hook(epoch, row)`` runs at the end of every :meth:`end_epoch` with the epoch's row
        of contract signals (e.g. a live stagnation check)."""
        self._epoch_hooks.append(hook)

    def add_close_hook(self, hook: CloseHook) -> None:
        """``hook(monitor)`` runs after :meth:`close` delivered everything (e.g. a diagnosis)."""
        self._close_hooks.append(hook)

    def set_attention_probe(self, inputs: torch.Tensor) -> None:
        """A fixed validation batch on which attention entropy is measured every epoch
        (default: the first validation batch the model sees)."""
        self._attention_inputs = inputs[: self.config.attention_probe_size].detach().clone()

    # -- step level ----------------------------------------------------------------------------
    def after_backward(self, loss: torch.Tensor | None = None) -> None:
        """Call after ``loss.backward()`` (and before clipping and ``optimizer.step()``)."""
        self._check_explicit("after_backward")
        self._recording = self.step % self.config.every_n_steps == 0
        if loss is not None:
            self._explicit_loss = loss.detach()
            self.taps.explicit_loss = True
        if self._recording:
            self.tracker.after_backward()
            self.tracker.before_step()

    def log_loss(self, loss: torch.Tensor) -> None:
        """The loss the loop optimizes in the current step, in any mode: for a loss the
        monitor cannot see whole (assembled from several calls, e.g. mixup's two terms)."""
        self._explicit_loss = loss.detach()
        self.taps.explicit_loss = True

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """``torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)``, reusing the
        gradient norms :meth:`after_backward` just recorded instead of computing them again.

        Call it between :meth:`after_backward` and ``optimizer.step()``; returns the total
        norm before clipping. On steps that are not recorded, or once parameters that were
        frozen when the monitor was built have gradients, it is exactly torch's function.
        """
        self._step_clip = float(max_norm)
        total = self.tracker.total_grad_norm() if self._recording else None
        if total is None or any(p.grad is not None for p in self._untracked):
            return nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        nn.utils.clip_grads_with_norm_(self.tracker.parameters, max_norm, total)
        return total

    def after_step(self, loss: torch.Tensor | None = None) -> None:
        """Call after ``optimizer.step()``; pass ``loss`` here if not to :meth:`after_backward`."""
        if loss is not None:
            self._explicit_loss = loss.detach()
            self.taps.explicit_loss = True
        self.step += 1
        outputs = self.taps.take_step()
        if not self._recording:
            self._count_epoch_outputs(outputs)
            self._explicit_loss = None
            return
        self._recording = False
        if not self._hooked:
            self._probe_clipping()
        self.tracker.after_step()
        lrs = [float(group["lr"]) for group in self.optimizer.param_groups]
        self._pending.append(
            {
                "step": self.step,
                "loss": self._explicit_loss if self._explicit_loss is not None else outputs.loss,
                "outputs": outputs,
                "lrs": dict(zip(self._lr_keys(), lrs, strict=True)),
                "clip": self._step_clip if self._step_clip is not None else self.clip_max_norm,
                "clip_probe": self._clip_probe,
            }
        )
        self._explicit_loss = None
        self._step_clip = None
        self._clip_probe = None
        if len(self._pending) >= self.config.buffer_steps:
            self._drain()

    def _lr_keys(self) -> list[str]:
        """``lr/<name or index>`` of every optimizer parameter group (built again when groups
        are added)."""
        groups = self.optimizer.param_groups
        if len(self._lr_key_cache) != len(groups):
            self._lr_key_cache = [
                signals.LR.key(param_group=group.get("name", index))
                for index, group in enumerate(groups)
            ]
        return self._lr_key_cache

    _lr_key_cache: list[str] = []

    def _check_explicit(self, call: str) -> None:
        if self._hooked:
            raise RuntimeError(
                f"this monitor records steps through the optimizer's hooks (watch()); do not "
                f"call {call}() as well"
            )

    def _on_backward_end(self) -> None:
        self._recording = self.step % self.config.every_n_steps == 0
        if self._recording:
            self.tracker.after_backward()

    def _before_optimizer_step(self) -> None:
        if not self._recording:  # no backward reached the tracked parameters
            self._on_backward_end()
        if self._recording:
            self._probe_clipping()
            self.tracker.before_step()

    def _probe_clipping(self) -> None:
        """On some steps compares the gradient norm now with the norm before clipping, to
        see whether (and at what norm) the loop clips, whichever function it used."""
        if self._step_clip is not None or self.clip_max_norm is not None:
            return
        recorded = len(self._pending) + self.tracker.steps
        if recorded > 16 and self.step % 16:
            return
        before = self.tracker.total_grad_norm()
        grads = [p.grad for p in self.tracker.parameters if p.grad is not None]
        if before is None or not grads:
            return
        now = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        self._clip_probe = (before.detach(), now.detach())

    # -- epoch level ----------------------------------------------------------------------------
    def end_epoch(
        self,
        epoch: int,
        val_targets: ArrayLike | None = None,
        val_logits: ArrayLike | None = None,
        classes: Sequence[str] | None = None,
        metrics: Mapping[str, float] | None = None,
    ) -> dict[str, float]:
        """Records the epoch: validation scores from ``val_logits`` and ``val_targets``, the
        training loss and accuracy of the epoch's steps, prediction statistics and attention
        entropy. ``metrics`` are the loop's own per-epoch values: logged as given, and where
        they name a contract signal (or a common alias such as ``val_acc``) they are used
        instead of the monitor's own value. Returns the epoch's row of contract signals.
        """
        if classes is not None:
            self.classes = list(classes)
        self._drain()
        self._epochs_seen += 1
        row: dict[str, float] = {
            "epoch": float(epoch),
            signals.EPOCH_LAST_STEP.name: self.step,
            signals.TRAIN_BATCHES.name: float(self.taps.take_forward_count()),
        }
        row.update(self._train_scores())
        if val_targets is not None and val_logits is not None:
            row.update(self._validation_scores(_to_numpy(val_targets), _to_numpy(val_logits)))
        row.update(self._attention())
        given = dict(metrics or {})
        for key, value in given.items():
            name = signals.alias_of(key)
            if signals.declared(key) is not None:
                row[key] = float(value)
            elif name is not None and name not in row:
                row[name] = float(value)
        if self._epochs_seen == 1:
            self._first_epoch_data()
        self._epoch_rows.append(row)
        self.sink.write_table(EPOCHS_TABLE, pd.DataFrame(self._epoch_rows))
        headline = {
            s.name: row[s.name]
            for s in signals.of_cadence(signals.EPOCH)
            if s.headline and s.name in row and np.isfinite(row[s.name])
        }
        self.sink.log_many({**headline, **given}, step=epoch)
        self.sink.publish()
        for hook in self._epoch_hooks:
            hook(epoch, row)
        return row

    def _train_scores(self) -> dict[str, float]:
        out = {}
        losses = np.concatenate(self._epoch_losses) if self._epoch_losses else np.zeros(0)
        losses = losses[np.isfinite(losses)]
        if len(losses):
            out[signals.TRAIN_LOSS.name] = float(losses.mean())
        correct, count = self._epoch_correct
        if count:
            out[signals.TRAIN_ACCURACY.name] = correct / count
        self._epoch_losses, self._epoch_correct = [], [0.0, 0.0]
        return out

    def _validation_scores(self, targets: np.ndarray, logits: np.ndarray) -> dict[str, float]:
        if logits.ndim != 2:
            raise ValueError(f"val_logits must be [examples, classes], got shape {logits.shape}")
        names = self._class_names(logits.shape[1])
        stats = prediction_statistics(targets, logits, names)
        if not self.data.has_labels(VAL):
            self.data.labels[VAL] = label_statistics(targets.astype(np.int64), names)
        out = {
            signals.VAL_ACCURACY.name: stats.accuracy,
            signals.VAL_LOSS.name: stats.loss,
            signals.VAL_BALANCED_ACCURACY.name: stats.balanced_accuracy,
            signals.VAL_MACRO_F1.name: stats.macro_f1,
            signals.TOP_CLASS_FRACTION.name: stats.top_class_fraction,
            signals.PREDICTION_ENTROPY.name: stats.hist_entropy,
            signals.N_PREDICTED_CLASSES.name: float(stats.summary_metrics()["n_predicted_classes"]),
        }
        for name, count in stats.predicted_counts.items():
            out[signals.VAL_PRED_COUNT.key(cls=name)] = float(count)
        for name, recall in stats.recall.items():
            out[signals.VAL_RECALL.key(cls=name)] = recall
        if stats.nonfinite_logits:
            out[signals.VAL_LOSS.name] = float("nan")
        return out

    def _attention(self) -> dict[str, float]:
        probe = self._attention_inputs
        if probe is None:
            probe = self.taps.probe
        if probe is None:
            return {}
        with self.taps.paused():
            values = attention_entropy(self.model, probe)
        return {signals.ATTENTION_ENTROPY.key(layer=i): v for i, v in enumerate(values)}

    def _first_epoch_data(self) -> None:
        """After a whole epoch: the training labels and the model's input statistics, where
        the loop did not hand them over."""
        self.taps.validating = False
        counts = self._train_class_counts
        if counts is not None and not self.data.has_labels(TRAIN):
            values = counts.cpu().numpy()
            self.data.labels[TRAIN] = label_counts_stats(values, self._class_names(len(values)))
        for split, accumulator in self.taps.inputs.items():
            if not self.data.has_features(signals.STAGE_INPUT, split):
                self.data.features[(signals.STAGE_INPUT, split)] = accumulator.result()
        self._write_summary()

    def _write_summary(self) -> None:
        self._summary.update(self.data.summary())
        self.sink.write_json(SUMMARY, self._summary)
        headline = {k: self._summary[k] for k in HEADLINE_ONCE if k in self._summary}
        # Once-signals are one point each (summary.json holds the latest value).
        headline = {
            k: v for k, v in headline.items() if np.isfinite(v) and k not in self._headline_logged
        }
        if headline:
            self._headline_logged.update(headline)
            self.sink.log_many(headline, step=0)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Any other metrics, through the durable logger."""
        self.sink.log_many(metrics, step=step)

    def set_tag(self, key: str, value: str) -> None:
        """A tag of the run, through the durable logger (never blocks on the server)."""
        self.sink.set_tag(key, value)

    @property
    def summary(self) -> dict[str, float]:
        """The once-values recorded so far (label and feature statistics, ...)."""
        return dict(self._summary)

    # -- lifecycle -------------------------------------------------------------------------------
    def close(self, timeout_s: float | None = None) -> bool:
        """Delivers everything (the tables, the plots), runs the close hooks; returns whether
        everything arrived."""
        if self._closed:
            return True
        self._closed = True
        self._drain()
        for step, metrics in self._downsampler.finish():
            self.sink.log_many(metrics, step=step)
        self._remove_hooks()
        self.sink.write_json(GROUPS, self.groups.describe())
        self._write_summary()
        self._log_data_artifacts()
        delivered = self.sink.close(timeout_s)
        for hook in self._close_hooks:
            try:
                hook(self)
            except Exception as error:  # a failing hook must not cost the recorded run
                logger.error("monitor close hook failed: %s", error)
        return delivered

    def _remove_hooks(self) -> None:
        for handle in self._hook_handles:
            handle.remove()
        self._hook_handles = []
        if self._backward_end is not None:
            self._backward_end.remove()
        self._order.remove()
        self.taps.close()

    def _log_data_artifacts(self) -> None:
        try:
            with tempfile.TemporaryDirectory() as tmp:
                for path in self.data.write_artifacts(Path(tmp)):
                    self.sink.log_artifact(path, schema.ARTIFACT_DIR_MONITOR)
        except Exception as error:  # plots must not cost the recorded signals
            logger.error("could not write the monitor's data tables and plots: %s", error)

    def __enter__(self) -> TrainingMonitor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------------
    def _count_epoch_outputs(self, outputs: StepOutputs) -> None:
        """Training accuracy and labels of a step that is not recorded (``every_n_steps``)."""
        if outputs.correct is not None:
            self._epoch_correct[0] += float(outputs.correct)
            self._epoch_correct[1] += outputs.count
        self._add_class_counts(outputs)

    def _add_class_counts(self, outputs: StepOutputs) -> None:
        if self._epochs_seen or outputs.class_counts is None:
            return
        counts = outputs.class_counts
        current = self._train_class_counts
        if current is None or len(current) != len(counts):
            self._train_class_counts = counts
        else:
            self._train_class_counts = current + counts

    def _drain(self) -> None:
        block = self.tracker.drain()
        pending, self._pending = self._pending, []
        if block is None or not pending:
            return
        n = min(len(block), len(pending))
        pending = pending[:n]
        columns = {
            "step": np.array([p["step"] for p in pending]),
            **{name: values[:n] for name, values in block.columns.items()},
            **self._step_columns(pending),
        }
        for name in (signals.NONFINITE_GRADS.name, signals.NONFINITE_LOSS.name):
            self._nonfinite[name] += float(np.nansum(columns[name]))
        losses = columns[signals.STEP_LOSS.name]
        self._epoch_losses.append(losses[np.isfinite(losses)])
        self.sink.append_rows(STEPS_TABLE, columns)
        for step, metrics in self._downsampler.update(columns):
            self.sink.log_many(metrics, step=step)
        self.sink.log_many(dict(self._nonfinite), step=int(columns["step"][-1]))

    def _step_columns(self, pending: list[dict[str, Any]]) -> dict[str, np.ndarray]:
        """Loss, accuracy, targets, learning rates and clipping of the pending steps."""
        n = len(pending)
        losses = _host([p["loss"] for p in pending])
        outputs: list[StepOutputs] = [p["outputs"] for p in pending]
        correct = _host([o.correct for o in outputs])
        invalid = _host([o.invalid_rows for o in outputs])
        counts = np.array([o.count for o in outputs], dtype=np.float64)
        for output, hits in zip(outputs, correct, strict=True):
            if np.isfinite(hits):
                self._epoch_correct[0] += hits
                self._epoch_correct[1] += output.count
            self._add_class_counts(output)
        columns: dict[str, Any] = {
            signals.STEP_LOSS.name: np.where(np.isfinite(losses), losses, np.nan),
            signals.NONFINITE_LOSS.name: np.isinf(losses) | _nan_loss(pending, losses),
            signals.STEP_ACCURACY.name: np.divide(
                correct, counts, out=np.full(n, np.nan), where=counts > 0
            ),
            signals.INVALID_TARGETS.name: invalid,
            signals.CLIP_MAX_NORM.name: self._clip_column(pending),
        }
        columns[signals.NONFINITE_LOSS.name] = columns[signals.NONFINITE_LOSS.name].astype(float)
        names = dict.fromkeys(name for p in pending for name in p["lrs"])
        for name in names:
            columns[name] = np.array([p["lrs"].get(name, np.nan) for p in pending], dtype=float)
        return columns

    def _clip_column(self, pending: list[dict[str, Any]]) -> np.ndarray:
        values = np.array(
            [np.nan if p["clip"] is None else p["clip"] for p in pending], dtype=np.float64
        )
        probes = [(i, p["clip_probe"]) for i, p in enumerate(pending) if p["clip_probe"]]
        if probes:
            pairs = torch.stack([torch.stack(pair).float() for _, pair in probes]).cpu().numpy()
            for (i, _), (before, now) in zip(probes, pairs, strict=True):
                if np.isfinite(before) and before > 0 and now < _CLIPPED * before:
                    values[i] = now
        return values

    def _class_names(self, n: int) -> list[str]:
        if self.classes is not None and len(self.classes) == n:
            return self.classes
        return _index_names(n)

    def _log10_update_ratio(self, block: Block) -> np.ndarray:
        return _log10_of_max(block, signals.UPDATE_RATIO.prefix)

    def _log10_lr(self, block: Block) -> np.ndarray:
        return _log10_of_max(block, signals.LR.prefix)


def _log10_of_max(block: Block, prefix: str) -> np.ndarray:
    """Per row, log10 of the largest value of the columns named ``prefix...`` (NaN where no
    column has a positive value)."""
    names = [name for name in block if name.startswith(prefix)]
    columns = [np.asarray(block[name], dtype=np.float64) for name in names]
    if not columns:
        return np.full(len(block["step"]), np.nan)
    # fmax skips NaN like nanmax, and leaves a row without any value NaN, silently.
    largest = functools.reduce(np.fmax, columns)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(largest > 0, np.log10(largest), np.nan)


def _host(values: list[torch.Tensor | None]) -> np.ndarray:
    """Scalars of device tensors (NaN for ``None``) in one transfer."""
    present = [(i, v) for i, v in enumerate(values) if v is not None]
    out = np.full(len(values), np.nan)
    if present:
        stacked = torch.stack([v.reshape(()).float() for _, v in present]).cpu().numpy()
        out[[i for i, _ in present]] = stacked
    return out


def _nan_loss(pending: list[dict[str, Any]], losses: np.ndarray) -> np.ndarray:
    """A loss that was given but is NaN (a step without a loss is not counted)."""
    given = np.array([p["loss"] is not None for p in pending])
    return given & np.isnan(losses)


def _index_names(n: int) -> list[str]:
    return [str(i) for i in range(n)]


def _to_numpy(values: ArrayLike | Sequence) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return (
            values.detach().float().cpu().numpy()
            if values.is_floating_point()
            else (values.detach().cpu().numpy())
        )
    return np.asarray(values)


def _batches(features: ArrayLike | Iterable[ArrayLike]) -> Iterable[ArrayLike]:
    if isinstance(features, torch.Tensor | np.ndarray):
        for start in range(0, len(features), 256):
            yield features[start : start + 256]
    else:
        yield from features
