"""``TrainingMonitor``: a few explicit calls from any PyTorch loop record the run's evidence.

    monitor = TrainingMonitor(model, optimizer)            # inside an active MLflow run
    monitor.log_dataset("train", labels, classes, features=train_features)
    for epoch in ...:
        for batch in ...:
            loss.backward();  monitor.after_backward(loss)
            optimizer.step(); monitor.after_step()
        monitor.end_epoch(epoch, val_targets, val_logits)
    monitor.close()

Per step it records per-group gradient norms, the total norm before clipping, per-group
update-to-weight ratios, every param group's learning rate and the loss. These stay on the
device in a buffer and reach the host in one transfer per ``buffer_steps`` steps; points go to
MLflow through a durable, batched logger that survives a tracking-server outage.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.tracking import MlflowClient
from torch import nn

from mlflow_audiodiag import schema
from mlflow_audiodiag.data.audio_io import clip_levels
from mlflow_audiodiag.monitoring import plots
from mlflow_audiodiag.monitoring.attention import attention_entropy
from mlflow_audiodiag.monitoring.gradients import GradientTracker
from mlflow_audiodiag.monitoring.groups import ParameterGroups
from mlflow_audiodiag.monitoring.sink import DurableMetricLogger, SinkConfig
from mlflow_audiodiag.monitoring.statistics import (
    FeatureStats,
    FeatureStatsAccumulator,
    LabelStats,
    label_statistics,
    level_statistics,
    prediction_statistics,
    standardized_mean_difference,
)

logger = logging.getLogger(__name__)

ArrayLike = torch.Tensor | np.ndarray


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
        if self.every_n_steps < 1 or self.buffer_steps < 1:
            raise ValueError("every_n_steps and buffer_steps must be >= 1")


class TrainingMonitor:
    """Records diagnostic signals of one training run into an MLflow run.

    Args:
        model: the model being trained.
        optimizer: its optimizer (learning rates are read from its param groups).
        run_id: the MLflow run to log into; default: the active run.
        groups: parameter groups for gradient statistics: a :class:`ParameterGroups`, a mapping
            ``{"group": ["parameter.name.prefix", ...]}``, or None for the default grouping.
        config: recording settings.
        client: the MLflow client to use (default: one for the current tracking URI).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        run_id: str | None = None,
        groups: ParameterGroups | dict[str, list[str]] | None = None,
        config: MonitorConfig | None = None,
        client: MlflowClient | None = None,
        sink: DurableMetricLogger | None = None,
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
        if isinstance(groups, dict):
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
        self.sink = sink or DurableMetricLogger(
            run_id, self.client, SinkConfig(flush_interval_s=self.config.flush_interval_s)
        )
        self.step = 0
        self._recorded_steps: list[int] = []
        self._pending_losses: list[torch.Tensor] = []
        self._pending_lrs: list[dict[str, float]] = []
        self._recording = False
        self._nonfinite_losses = 0
        self._nonfinite_grads = 0
        self._feature_stats: dict[tuple[str, str], FeatureStats] = {}
        self._label_stats: dict[str, LabelStats] = {}
        self._predictions: list[dict[str, Any]] = []
        self._attention_inputs: torch.Tensor | None = None
        self._closed = False
        self._epoch_hooks: list[Callable[[int, dict[str, float]], None]] = []
        self._artifact_dir = Path(tempfile.mkdtemp(prefix="audiodiag-monitor-"))
        self._log_parameter_groups()

    # -- dataset level -------------------------------------------------------------------
    def log_dataset(
        self,
        split: str,
        labels: ArrayLike | Sequence[int],
        classes: Sequence[str],
        *,
        features: ArrayLike | Iterable[ArrayLike] | None = None,
        stage: str = "normalized",
        waveforms: Iterable[ArrayLike] | None = None,
        levels: ArrayLike | None = None,
        accumulated: FeatureStatsAccumulator | None = None,
    ) -> None:
        """Label histogram of ``split`` and, when given, statistics of its features.

        ``features`` is ``[N, bins, frames]`` or an iterable of such batches (streamed, never
        concatenated). ``stage`` tells features before (``"raw"``) and after
        (``"normalized"``) normalization apart. Statistics of non-train splits are compared
        with the train split of the same stage (standardized mean difference per bin).
        ``waveforms`` (an iterable of mono clips in [-1, 1]) or precomputed ``levels``
        (``[clips, 3]`` rows of :func:`~mlflow_audiodiag.data.audio_io.clip_levels`) give the
        fractions of silent and clipped clips. ``accumulated`` replaces ``features`` with
        statistics already accumulated elsewhere (under DDP: every rank's shard, merged by
        :func:`~mlflow_audiodiag.monitoring.distributed.merge_from_ranks`).
        """
        if waveforms is not None:
            levels = np.array([clip_levels(_to_numpy(w)) for w in waveforms]).reshape(-1, 3)
        if levels is not None:
            prefix = f"{schema.AUDIO_PREFIX}{split}/"
            self._log_now(_prefixed(prefix, level_statistics(levels).metrics()))
        labels_np = _to_numpy(labels).astype(np.int64)
        if split not in self._label_stats:
            stats = label_statistics(labels_np, list(classes))
            self._label_stats[split] = stats
            self._log_now(_prefixed(f"{schema.LABELS_PREFIX}{split}/", stats.metrics()))
        if features is None and accumulated is None:
            return
        accumulator = accumulated
        if accumulator is None:
            accumulator = FeatureStatsAccumulator()
            for batch in _batches(features):
                accumulator.update(batch)
        feature_stats = accumulator.result()
        self._feature_stats[(stage, split)] = feature_stats
        metrics = _prefixed(f"{schema.FEATURES_PREFIX}{stage}/{split}/", feature_stats.metrics())
        train_stats = self._feature_stats.get((stage, schema.SPLIT_TRAIN))
        if train_stats is not None:
            if split == schema.SPLIT_TRAIN:
                others = [
                    (s, st)
                    for (stg, s), st in self._feature_stats.items()
                    if stg == stage and s != schema.SPLIT_TRAIN
                ]
            else:
                others = [(split, feature_stats)]
            for other_split, other in others:
                metrics.update(self._shift_metrics(stage, other_split, train_stats, other))
        self._log_now(metrics)

    def _shift_metrics(
        self, stage: str, split: str, reference: FeatureStats, other: FeatureStats
    ) -> dict[str, float]:
        smd = np.abs(standardized_mean_difference(reference, other))
        prefix = f"{schema.FEATURE_SHIFT_PREFIX}{stage}/{split}_vs_train_smd_"
        return {f"{prefix}max": float(np.nanmax(smd)), f"{prefix}mean": float(np.nanmean(smd))}

    def add_epoch_hook(self, hook: Callable[[int, dict[str, float]], None]) -> None:
        """``hook(epoch, metrics)`` runs at the end of every :meth:`end_epoch` with the
        epoch's metrics (e.g. a live stagnation check)."""
        self._epoch_hooks.append(hook)

    def set_attention_probe(self, inputs: torch.Tensor) -> None:
        """A fixed validation batch on which attention entropy is measured every epoch."""
        self._attention_inputs = inputs[: self.config.attention_probe_size].detach().clone()

    # -- step level ----------------------------------------------------------------------
    def after_backward(self, loss: torch.Tensor | None = None) -> None:
        """Call after ``loss.backward()`` (and before clipping and ``optimizer.step()``)."""
        self._recording = self.step % self.config.every_n_steps == 0
        if not self._recording:
            return
        self.tracker.after_backward()
        self.tracker.before_step()
        if loss is not None:
            self._pending_losses.append(loss.detach())

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """``torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)``, reusing the
        gradient norms :meth:`after_backward` just recorded instead of computing them again.

        Call it between :meth:`after_backward` and ``optimizer.step()``; returns the total
        norm before clipping. On steps that are not recorded, or once parameters that were
        frozen when the monitor was built have gradients, it is exactly torch's function.
        """
        total = self.tracker.total_grad_norm() if self._recording else None
        if total is None or any(p.grad is not None for p in self._untracked):
            return nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        nn.utils.clip_grads_with_norm_(self.tracker.parameters, max_norm, total)
        return total

    def after_step(self, loss: torch.Tensor | None = None) -> None:
        """Call after ``optimizer.step()``; pass ``loss`` here if not to :meth:`after_backward`."""
        self.step += 1
        if not self._recording:
            return
        self._recording = False
        self.tracker.after_step()
        if loss is not None:
            self._pending_losses.append(loss.detach())
        self._recorded_steps.append(self.step)
        self._pending_lrs.append(
            {
                schema.LR_PREFIX + str(group.get("name", index)): float(group["lr"])
                for index, group in enumerate(self.optimizer.param_groups)
            }
        )
        if len(self._recorded_steps) >= self.config.buffer_steps:
            self._drain()

    # -- epoch level ---------------------------------------------------------------------
    def end_epoch(
        self,
        epoch: int,
        val_targets: ArrayLike | None = None,
        val_logits: ArrayLike | None = None,
        classes: Sequence[str] | None = None,
        metrics: dict[str, float] | None = None,
    ) -> None:
        """Flushes step signals and records validation prediction statistics for ``epoch``.

        ``metrics`` (e.g. the loop's own per-epoch losses and accuracies) are logged through
        the same durable logger at ``step=epoch``.
        """
        self._drain()
        epoch_metrics = dict(metrics or {})
        if val_targets is not None and val_logits is not None:
            names = list(classes) if classes is not None else self._class_names(val_logits)
            stats = prediction_statistics(_to_numpy(val_targets), _to_numpy(val_logits), names)
            epoch_metrics.update(_prefixed(schema.VAL_PRED_PREFIX, stats.summary_metrics()))
            for name, count in stats.predicted_counts.items():
                epoch_metrics[schema.VAL_PRED_COUNT_PREFIX + schema.metric_safe(name)] = count
            for name, recall in stats.recall.items():
                if np.isfinite(recall):
                    epoch_metrics[schema.VAL_RECALL_PREFIX + schema.metric_safe(name)] = recall
            self._predictions.append({"epoch": epoch, **stats.to_dict()})
        if self._attention_inputs is not None:
            for layer, value in enumerate(attention_entropy(self.model, self._attention_inputs)):
                epoch_metrics[f"{schema.ATTENTION_ENTROPY_PREFIX}{layer}"] = value
        self.sink.log_many(epoch_metrics, step=epoch)
        for hook in self._epoch_hooks:
            hook(epoch, epoch_metrics)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Any other metrics, through the durable logger."""
        self.sink.log_many(metrics, step=step)

    # -- lifecycle -----------------------------------------------------------------------
    def close(self, timeout_s: float | None = 60.0) -> bool:
        """Flushes everything, logs the monitor's artifacts; returns whether all arrived."""
        if self._closed:
            return True
        self._closed = True
        self._drain()
        try:
            self._write_artifacts()
            self.client.log_artifacts(
                self.run_id, str(self._artifact_dir), schema.ARTIFACT_DIR_MONITOR
            )
        except Exception as error:  # artifacts must not cost the metric points
            logger.error(
                "could not log monitor artifacts (kept in %s): %s", self._artifact_dir, error
            )
        else:
            shutil.rmtree(self._artifact_dir, ignore_errors=True)  # the run holds them now
        return self.sink.close(timeout_s=timeout_s)

    def __enter__(self) -> TrainingMonitor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------
    def _drain(self) -> None:
        records = self.tracker.drain()
        if not records and not self._pending_losses:
            return
        losses = None
        if self._pending_losses:
            stacked = torch.stack([loss.reshape(()).float() for loss in self._pending_losses])
            losses = stacked.cpu().numpy()
        for index, record in enumerate(records):
            step = self._recorded_steps[index]
            metrics = {}
            for key, value in record.metrics.items():
                if key == "nonfinite_grads":
                    self._nonfinite_grads += int(value)
                else:
                    metrics[_signal_key(key)] = value
            if index < len(self._pending_lrs):
                metrics.update(self._pending_lrs[index])
            if losses is not None and index < len(losses):
                loss = float(losses[index])
                if np.isfinite(loss):
                    metrics[schema.METRIC_STEP_LOSS] = loss
                else:
                    self._nonfinite_losses += 1
            self.sink.log_many(metrics, step=step)
        if records:  # cumulative counts, once per drain rather than once per step
            self.sink.log_many(
                {
                    schema.METRIC_NONFINITE_GRADS: self._nonfinite_grads,
                    schema.METRIC_NONFINITE_LOSS: self._nonfinite_losses,
                },
                step=self._recorded_steps[len(records) - 1],
            )
        self._recorded_steps = self._recorded_steps[len(records) :]
        self._pending_lrs = self._pending_lrs[len(records) :]
        self._pending_losses = []

    def _log_now(self, metrics: dict[str, float]) -> None:
        self.sink.log_many(metrics, step=0)

    def _log_parameter_groups(self) -> None:
        frozen = self.groups.frozen_fraction()
        self._log_now(
            {schema.FROZEN_FRACTION_PREFIX + name: value for name, value in frozen.items()}
        )
        _write_json(self._artifact_dir, schema.ARTIFACT_PARAMETER_GROUPS, self.groups.describe())

    def _class_names(self, logits: ArrayLike) -> list[str]:
        return [str(i) for i in range(_to_numpy(logits).shape[1])]

    def _write_artifacts(self) -> None:
        out = self._artifact_dir
        if self._label_stats:
            _write_json(
                out,
                schema.ARTIFACT_LABEL_SUMMARY,
                {s: st.to_dict() for s, st in self._label_stats.items()},
            )
            _concat_tables({s: st.table() for s, st in self._label_stats.items()}).to_csv(
                out / _name(schema.ARTIFACT_LABEL_TABLE), index=False
            )
            plots.label_histograms(self._label_stats).savefig(
                out / _name(schema.ARTIFACT_LABEL_PLOT), dpi=100
            )
        if self._feature_stats:
            summary = {
                f"{stage}/{split}": st.metrics()
                for (stage, split), st in self._feature_stats.items()
            }
            _write_json(out, schema.ARTIFACT_FEATURE_SUMMARY, summary)
            for (stage, split), stats in self._feature_stats.items():
                table = _name(schema.ARTIFACT_FEATURE_TABLE.format(stage=stage, split=split))
                stats.table().to_csv(out / table, index=False)
            for stage in sorted({stage for stage, _ in self._feature_stats}):
                per_split = {
                    split: st for (stg, split), st in self._feature_stats.items() if stg == stage
                }
                plots.feature_statistics(per_split, stage).savefig(
                    out / _name(schema.ARTIFACT_FEATURE_PLOT.format(stage=stage)), dpi=100
                )
        if self._predictions:
            _write_json(out, schema.ARTIFACT_PREDICTIONS, self._predictions)


def _name(artifact_path: str) -> str:
    """File name of a ``monitor/...`` artifact inside the monitor's local folder."""
    return Path(artifact_path).name


def _write_json(folder: Path, artifact_path: str, payload: object) -> None:
    (folder / _name(artifact_path)).write_text(json.dumps(payload, indent=2))


def _signal_key(relative: str) -> str:
    """Maps the tracker's relative names to schema names."""
    if relative.startswith("grad_norm/"):
        return schema.GRAD_NORM_PREFIX + relative.removeprefix("grad_norm/")
    if relative.startswith("update_ratio/"):
        return schema.UPDATE_RATIO_PREFIX + relative.removeprefix("update_ratio/")
    return relative


def _prefixed(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
    return {schema.metric_safe(prefix + key): float(value) for key, value in metrics.items()}


def _to_numpy(values: ArrayLike | Sequence) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def _batches(features: ArrayLike | Iterable[ArrayLike]) -> Iterable[ArrayLike]:
    if isinstance(features, torch.Tensor | np.ndarray):
        for start in range(0, len(features), 256):
            yield features[start : start + 256]
    else:
        yield from features


def _concat_tables(tables: dict[str, Any]) -> Any:
    import pandas as pd

    return pd.concat([t.assign(split=s) for s, t in tables.items()], ignore_index=True)
