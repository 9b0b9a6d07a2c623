"""The once-per-run evidence about the data: labels, features and audio levels per split.

:class:`DataEvidence` collects label, feature and level statistics (handed over explicitly by
the loop, or gathered from what the model saw) and turns them into the contract's ``once``
signals, the tables and the plots under the run's ``monitor/`` artifacts.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, default_collate

from mlflow_audiodiag import schema, signals
from mlflow_audiodiag.monitoring import plots
from mlflow_audiodiag.monitoring.statistics import (
    FeatureStats,
    LabelStats,
    WaveformStats,
    label_statistics,
    standardized_mean_difference,
)

TRAIN, VAL = schema.SPLIT_TRAIN, schema.SPLIT_VAL


class DataEvidence:
    """Label, feature and level statistics of the run's splits."""

    def __init__(self) -> None:
        self.labels: dict[str, LabelStats] = {}
        self.features: dict[tuple[str, str], FeatureStats] = {}
        self.levels: dict[str, WaveformStats] = {}

    def has_labels(self, split: str) -> bool:
        return split in self.labels

    def has_features(self, stage: str, split: str) -> bool:
        return (stage, split) in self.features

    def summary(self) -> dict[str, float]:
        """Every ``once`` signal the statistics give, under its contract name."""
        out: dict[str, float] = {}
        for split, stats in self.labels.items():
            for key, value in stats.metrics().items():
                out[f"{signals.LABEL_N.prefix}{split}/{key}"] = value
            for cls, count in stats.counts.items():
                out[signals.LABEL_COUNT.key(split=split, cls=cls)] = float(count)
        baseline = self.majority_baseline()
        if baseline is not None:
            out[signals.MAJORITY_BASELINE.name] = baseline
        for (stage, split), stats in self.features.items():
            for key, value in stats.metrics().items():
                out[signals.FEATURE_STAT.key(stage=stage, split=split, stat=key)] = value
        out.update(self.shifts())
        for split, stats in self.levels.items():
            for key, value in stats.metrics().items():
                out[signals.AUDIO_STAT.key(split=split, stat=key)] = value
        return out

    def majority_baseline(self) -> float | None:
        """Validation accuracy of always predicting the largest training class."""
        train, val = self.labels.get(TRAIN), self.labels.get(VAL)
        if train is None or val is None or not train.n or not val.n:
            return None
        majority = max(train.counts, key=lambda c: train.counts[c])
        return val.counts.get(majority, 0) / val.n

    def shifts(self) -> dict[str, float]:
        """Standardized train-vs-split mean difference per stage, largest and mean over bins."""
        out = {}
        for (stage, split), stats in self.features.items():
            reference = self.features.get((stage, TRAIN))
            if split == TRAIN or reference is None or reference.n_bins != stats.n_bins:
                continue
            smd = np.abs(standardized_mean_difference(reference, stats))
            if not np.isfinite(smd).any():
                continue
            for agg, value in (("max", np.nanmax(smd)), ("mean", np.nanmean(smd))):
                key = signals.FEATURE_SHIFT.key(stage=stage, split=split, agg=agg)
                out[key] = float(value)
        return out

    def write_artifacts(self, out: Path) -> list[Path]:
        """Label and feature tables (CSV, JSON) and plots (PNG) into ``out``."""
        written: list[Path] = []
        if self.labels:
            path = out / Path(schema.ARTIFACT_LABEL_TABLE).name
            _concat({s: st.table() for s, st in self.labels.items()}).to_csv(path, index=False)
            written.append(path)
            path = out / Path(schema.ARTIFACT_LABEL_PLOT).name
            plots.label_histograms(self.labels).savefig(path, dpi=100)
            written.append(path)
        if self.features:
            path = out / Path(schema.ARTIFACT_FEATURE_SUMMARY).name
            summary = {f"{stg}/{split}": st.metrics() for (stg, split), st in self.features.items()}
            path.write_text(json.dumps(_finite(summary), indent=2))
            written.append(path)
            for (stage, split), stats in self.features.items():
                name = Path(schema.ARTIFACT_FEATURE_TABLE.format(stage=stage, split=split)).name
                stats.table().to_csv(out / name, index=False)
                written.append(out / name)
            for stage in sorted({stage for stage, _ in self.features}):
                per_split = {s: st for (stg, s), st in self.features.items() if stg == stage}
                name = Path(schema.ARTIFACT_FEATURE_PLOT.format(stage=stage)).name
                plots.feature_statistics(per_split, stage).savefig(out / name, dpi=100)
                written.append(out / name)
        return written


def label_counts_stats(counts: np.ndarray, classes: Sequence[str]) -> LabelStats:
    """:class:`LabelStats` from per-class counts (e.g. the targets seen in training)."""
    labels = np.repeat(np.arange(len(counts)), np.asarray(counts, dtype=np.int64))
    return label_statistics(labels, classes)


def dataset_labels(data: Any) -> np.ndarray | None:
    """Every label of a dataset (or a DataLoader's) that exposes ``targets`` or ``labels``."""
    dataset = getattr(data, "dataset", data)
    for attribute in ("targets", "labels"):
        values = getattr(dataset, attribute, None)
        if values is None:
            continue
        array = np.asarray(values.cpu() if isinstance(values, torch.Tensor) else values)
        if array.ndim == 1 and array.size and np.issubdtype(array.dtype, np.integer):
            return array
    return None


def sample_batches(
    data: Any, max_batches: int, batch_size: int = 64
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Input and target tensors of at most ``max_batches`` batches of a DataLoader or dataset:
    random items (seed 0) of a map-style dataset, the first batches of an iterable one."""
    loader = data if isinstance(data, DataLoader) else None
    dataset = loader.dataset if loader is not None else data
    if hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__"):
        size = loader.batch_size if loader is not None and loader.batch_size else batch_size
        collate = loader.collate_fn if loader is not None else default_collate
        count = min(len(dataset), max_batches * size)
        order = np.random.default_rng(0).permutation(len(dataset))[:count]
        batches = (
            collate([dataset[int(i)] for i in order[start : start + size]])
            for start in range(0, count, size)
        )
    else:
        batches = itertools.islice(iter(loader if loader is not None else data), max_batches)
    inputs, targets = [], []
    for batch in batches:
        x, y = split_batch(batch)
        if x is not None:
            inputs.append(x)
        if y is not None:
            targets.append(y)
    return inputs, targets


def split_batch(batch: Any) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The input features and integer targets of a batch: ``(inputs, targets)`` tuples, or
    mappings with a float tensor and ``labels`` / ``label`` / ``targets`` / ``y``."""
    if isinstance(batch, Mapping):
        values = list(batch.values())
        targets = next(
            (batch[k] for k in ("labels", "label", "targets", "target", "y") if k in batch), None
        )
    elif isinstance(batch, Sequence) and not isinstance(batch, torch.Tensor):
        values = list(batch)
        targets = values[1] if len(values) > 1 else None
    else:
        values, targets = [batch], None
    inputs = next(
        (v for v in values if isinstance(v, torch.Tensor) and v.is_floating_point()), None
    )
    if not isinstance(targets, torch.Tensor) or targets.is_floating_point():
        targets = None
    return inputs, targets


def _concat(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    return pd.concat([t.assign(split=s) for s, t in tables.items()], ignore_index=True)


def _finite(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
