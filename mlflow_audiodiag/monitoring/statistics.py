"""Dataset and prediction statistics: features, waveforms, labels, validation predictions.

Pure functions and small accumulators over numpy arrays or tensors; every result is a frozen
dataclass with ``metrics()`` (scalar summaries under relative names) and, where a per-bin or
per-class view helps, ``table()``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from mlflow_audiodiag.metrics import classification_scores
from mlflow_audiodiag.numeric import CLIP_LEVEL, CLIPPED_SHARE, SILENCE_DBFS, merge_moments

ArrayLike = np.ndarray | torch.Tensor | Sequence
SMD_EPS = 1e-8


def _as_numpy(values: ArrayLike, dtype: Any = np.float64) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        if values.dtype == torch.bfloat16:
            values = values.float()
        values = values.numpy()
    return np.asarray(values, dtype=dtype)


def _entropy(p: np.ndarray, axis: int = -1) -> np.ndarray:
    """Shannon entropy in nats of distributions along ``axis`` (0 log 0 = 0)."""
    logs = np.log(np.where(p > 0, p, 1.0))
    return -(p * logs).sum(axis=axis)


def _normalized(entropy: float, k: int) -> float:
    return entropy / math.log(k) if k > 1 else float("nan")


def _reduce(fn: Any, values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(fn(finite)) if finite.size else float("nan")


def _json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


# --- features --------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureStats:
    """Statistics of a feature set ``[clips, bins, frames]``; moments exclude NaN/inf values."""

    bin_mean: np.ndarray
    bin_std: np.ndarray
    bin_min: np.ndarray
    bin_max: np.ndarray
    bin_count: np.ndarray
    mean: float
    std: float
    min: float
    max: float
    nan_count: int
    inf_count: int
    n_clips: int
    silent_fraction: float | None = None

    @property
    def n_bins(self) -> int:
        return len(self.bin_mean)

    @property
    def dynamic_range(self) -> float:
        """``max - min`` over finite values, in feature units (dB for log-mel features)."""
        return self.max - self.min

    def metrics(self) -> dict[str, float]:
        out = {
            "mean": self.mean,
            "std": self.std,
            "min": self.min,
            "max": self.max,
            "dynamic_range": self.dynamic_range,
            "nan_count": float(self.nan_count),
            "inf_count": float(self.inf_count),
            "n_clips": float(self.n_clips),
            "bin_mean_abs_max": _reduce(np.max, np.abs(self.bin_mean)),
            "bin_std_min": _reduce(np.min, self.bin_std),
            "bin_std_max": _reduce(np.max, self.bin_std),
        }
        if self.silent_fraction is not None:
            out["silent_fraction"] = self.silent_fraction
        return out

    def table(self) -> pd.DataFrame:
        """One row per bin: ``bin, mean, std, min, max``."""
        return pd.DataFrame(
            {
                "bin": np.arange(self.n_bins),
                "mean": self.bin_mean,
                "std": self.bin_std,
                "min": self.bin_min,
                "max": self.bin_max,
            }
        )


class FeatureStatsAccumulator:
    """Streams feature batches ``[batch, bins, frames]`` into :class:`FeatureStats`.

    Per-bin moments are merged in float64 with Chan et al.'s parallel update; NaN and inf values
    are counted and left out of every statistic. With ``silent_below`` set, a clip whose largest
    finite value is below it counts as silent.
    """

    def __init__(self, silent_below: float | None = None) -> None:
        self.silent_below = silent_below
        self._count: np.ndarray | None = None
        self._mean: np.ndarray | None = None
        self._m2: np.ndarray | None = None
        self._min: np.ndarray | None = None
        self._max: np.ndarray | None = None
        self._nan = 0
        self._inf = 0
        self._clips = 0
        self._silent = 0

    def update(self, batch: ArrayLike) -> None:
        """Adds one batch ``[batch, bins, frames]``."""
        if isinstance(batch, torch.Tensor) and batch.dim() == 3 and batch.numel():
            values = batch.detach()
            if values.dtype not in (torch.float32, torch.float64):
                values = values.float()
            if math.isfinite(values.sum()):  # NaN or inf anywhere makes the sum non-finite
                self._update_finite(values)
                return
        values = _as_numpy(batch)
        if values.ndim != 3:
            raise ValueError(
                f"feature batch has shape {values.shape}; expected [batch, bins, frames]"
            )
        self._check_bins(values.shape[1])
        finite = np.isfinite(values)
        nan = np.isnan(values)
        self._nan += int(nan.sum())
        self._inf += int(values.size - finite.sum() - nan.sum())
        self._clips += values.shape[0]
        clean = np.where(finite, values, 0.0)
        count = finite.sum(axis=(0, 2)).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(count > 0, clean.sum(axis=(0, 2)) / count, 0.0)
        m2 = (np.where(finite, values - mean[None, :, None], 0.0) ** 2).sum(axis=(0, 2))
        self._count, self._mean, self._m2 = merge_moments(
            self._count, self._mean, self._m2, count, mean, m2
        )
        self._min = np.minimum(self._min, np.where(finite, values, np.inf).min(axis=(0, 2)))
        self._max = np.maximum(self._max, np.where(finite, values, -np.inf).max(axis=(0, 2)))
        if self.silent_below is not None and values.shape[0]:
            clip_max = np.where(finite, values, -np.inf).max(axis=(1, 2))
            self._silent += int((np.isfinite(clip_max) & (clip_max < self.silent_below)).sum())

    def _update_finite(self, values: torch.Tensor) -> None:
        """:meth:`update` of a batch without NaN or inf: a few torch reductions, in float64
        like the general path (DDP ranks merge to what one process computes)."""
        self._check_bins(values.shape[1])
        self._clips += values.shape[0]
        n = values.shape[0] * values.shape[2]
        wide = values.to(torch.float64, copy=True)
        mean = wide.sum(dim=(0, 2)) / n
        m2 = wide.sub_(mean[None, :, None]).square_().sum(dim=(0, 2))
        count = np.full(len(mean), float(n))
        self._count, self._mean, self._m2 = merge_moments(
            self._count, self._mean, self._m2, count, mean.cpu().numpy(), m2.cpu().numpy()
        )
        self._min = np.minimum(self._min, values.amin(dim=(0, 2)).cpu().numpy())
        self._max = np.maximum(self._max, values.amax(dim=(0, 2)).cpu().numpy())
        if self.silent_below is not None:
            clip_max = values.amax(dim=(1, 2)).cpu().numpy()
            self._silent += int((clip_max < self.silent_below).sum())

    def _check_bins(self, n_bins: int) -> None:
        if self._mean is None:
            self._count = np.zeros(n_bins)
            self._mean = np.zeros(n_bins)
            self._m2 = np.zeros(n_bins)
            self._min = np.full(n_bins, np.inf)
            self._max = np.full(n_bins, -np.inf)
        elif n_bins != len(self._mean):
            raise ValueError(f"feature batch has {n_bins} bins, earlier batches {len(self._mean)}")

    def merge(self, other: FeatureStatsAccumulator) -> FeatureStatsAccumulator:
        """Adds everything ``other`` has seen (e.g. another DDP rank's shard); returns self."""
        if other._mean is None:
            return self
        if self._mean is None:
            self._count, self._mean, self._m2 = other._count, other._mean, other._m2
            self._min, self._max = other._min, other._max
        else:
            if len(other._mean) != len(self._mean):
                raise ValueError(
                    f"cannot merge statistics of {len(other._mean)} bins into {len(self._mean)}"
                )
            self._count, self._mean, self._m2 = merge_moments(
                self._count, self._mean, self._m2, other._count, other._mean, other._m2
            )
            self._min = np.minimum(self._min, other._min)
            self._max = np.maximum(self._max, other._max)
        self._nan += other._nan
        self._inf += other._inf
        self._clips += other._clips
        self._silent += other._silent
        return self

    def result(self) -> FeatureStats:
        """The statistics of every batch so far (NaN where nothing finite was seen)."""
        empty = np.zeros(0)
        count = empty if self._count is None else self._count
        bin_mean_raw = empty if self._mean is None else self._mean
        bin_m2 = empty if self._m2 is None else self._m2
        bin_min = empty if self._min is None else self._min
        bin_max = empty if self._max is None else self._max
        seen = count > 0
        bin_mean = np.where(seen, bin_mean_raw, np.nan)
        bin_std = np.where(seen, np.sqrt(bin_m2 / np.maximum(count, 1)), np.nan)
        n = count.sum()
        if n > 0:
            mean = float((count * bin_mean_raw).sum() / n)
            m2 = bin_m2.sum() + (count * (bin_mean_raw - mean) ** 2).sum()
            std = float(math.sqrt(m2 / n))
            low, high = float(bin_min.min()), float(bin_max.max())
        else:
            mean = std = low = high = float("nan")
        silent = None
        if self.silent_below is not None:
            silent = self._silent / self._clips if self._clips else float("nan")
        return FeatureStats(
            bin_mean=bin_mean,
            bin_std=bin_std,
            bin_min=np.where(seen, bin_min, np.nan),
            bin_max=np.where(seen, bin_max, np.nan),
            bin_count=count.astype(np.int64),
            mean=mean,
            std=std,
            min=low,
            max=high,
            nan_count=self._nan,
            inf_count=self._inf,
            n_clips=self._clips,
            silent_fraction=silent,
        )


def standardized_mean_difference(
    reference: FeatureStats, other: FeatureStats, eps: float = SMD_EPS
) -> np.ndarray:
    """Per bin ``(mean_other - mean_ref) / max(std_ref, eps)``."""
    if reference.n_bins != other.n_bins:
        raise ValueError(f"bin counts differ: {reference.n_bins} vs {other.n_bins}")
    return (other.bin_mean - reference.bin_mean) / np.maximum(reference.bin_std, eps)


def smd_summary(smd: np.ndarray) -> dict[str, float]:
    """``max_abs`` and ``mean_abs`` of per-bin standardized mean differences (NaN ignored)."""
    magnitude = np.abs(np.asarray(smd, dtype=np.float64))
    return {"max_abs": _reduce(np.max, magnitude), "mean_abs": _reduce(np.mean, magnitude)}


# --- waveforms -------------------------------------------------------------------------------


@dataclass(frozen=True)
class WaveformStats:
    """Level statistics of clips of audio samples in ``[-1, 1]``."""

    n_clips: int
    silent_fraction: float
    clipped_fraction: float
    peak_dbfs_mean: float
    rms_dbfs_mean: float
    nonfinite_clips: int

    def metrics(self) -> dict[str, float]:
        return {
            "n_clips": float(self.n_clips),
            "silent_fraction": self.silent_fraction,
            "clipped_fraction": self.clipped_fraction,
            "peak_dbfs_mean": self.peak_dbfs_mean,
            "rms_dbfs_mean": self.rms_dbfs_mean,
            "nonfinite_clips": float(self.nonfinite_clips),
        }


def _dbfs(level: np.ndarray) -> np.ndarray:
    return 20.0 * np.log10(np.maximum(level, 1e-10))


def waveform_statistics(waves: ArrayLike) -> WaveformStats:
    """Silent clips (RMS below -60 dBFS), clipped clips (at least 0.1 % of samples at
    ``|x| >= 0.999``) and mean peak/RMS level of waveforms ``[clips, samples]``.

    Non-finite samples are counted per clip and treated as zero.
    """
    x = _as_numpy(waves)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2:
        raise ValueError(f"waveforms have shape {x.shape}; expected [clips, samples]")
    n = x.shape[0]
    if n == 0 or x.shape[1] == 0:
        return WaveformStats(n, *[float("nan")] * 4, 0)
    finite = np.isfinite(x)
    magnitude = np.abs(np.where(finite, x, 0.0))
    levels = np.stack(
        [
            _dbfs(np.sqrt((magnitude**2).mean(axis=1))),
            _dbfs(magnitude.max(axis=1)),
            (magnitude >= CLIP_LEVEL).mean(axis=1),
        ],
        axis=1,
    )
    return level_statistics(levels, nonfinite_clips=int((~finite).any(axis=1).sum()))


def level_statistics(levels: ArrayLike, nonfinite_clips: int = 0) -> WaveformStats:
    """:class:`WaveformStats` from per-clip rows ``[rms_dbfs, peak_dbfs, full_scale_share]``
    (as :func:`~mlflow_audiodiag.numeric.clip_levels` gives them)."""
    rows = _as_numpy(levels).reshape(-1, 3)
    if len(rows) == 0:
        return WaveformStats(0, *[float("nan")] * 4, nonfinite_clips)
    rms, peak, full_scale = rows[:, 0], rows[:, 1], rows[:, 2]
    return WaveformStats(
        n_clips=len(rows),
        silent_fraction=float((rms < SILENCE_DBFS).mean()),
        clipped_fraction=float((full_scale >= CLIPPED_SHARE).mean()),
        peak_dbfs_mean=float(peak.mean()),
        rms_dbfs_mean=float(rms.mean()),
        nonfinite_clips=nonfinite_clips,
    )


# --- labels ----------------------------------------------------------------------------------


def _class_indices(values: ArrayLike, n_classes: int, what: str) -> np.ndarray:
    raw = np.asarray(_as_numpy(values, np.float64)).reshape(-1)
    if raw.size and (not np.isfinite(raw).all() or (raw != np.round(raw)).any()):
        raise ValueError(f"{what} must be integer class indices")
    indices = raw.astype(np.int64)
    bad = indices[(indices < 0) | (indices >= n_classes)]
    if bad.size:
        raise ValueError(
            f"{what} contain {sorted(set(bad.tolist()))[:10]} outside [0, {n_classes}) "
            f"for {n_classes} classes"
        )
    return indices


@dataclass(frozen=True)
class LabelStats:
    """Class distribution of one split."""

    counts: dict[str, int]
    missing_classes: list[str]
    imbalance_ratio: float
    majority_fraction: float
    entropy: float
    normalized_entropy: float

    @property
    def n(self) -> int:
        return sum(self.counts.values())

    def metrics(self) -> dict[str, float]:
        """Scalar summaries; the per-class counts are in ``counts``."""
        out = {
            "n": float(self.n),
            "imbalance_ratio": self.imbalance_ratio,
            "majority_fraction": self.majority_fraction,
            "entropy": self.entropy,
            "normalized_entropy": self.normalized_entropy,
            "n_missing_classes": float(len(self.missing_classes)),
        }
        return out

    def table(self) -> pd.DataFrame:
        """One row per class: ``class, index, count, fraction``."""
        n = self.n
        return pd.DataFrame(
            {
                "class": list(self.counts),
                "index": np.arange(len(self.counts)),
                "count": list(self.counts.values()),
                "fraction": [c / n if n else float("nan") for c in self.counts.values()],
            }
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (non-finite values as ``null``)."""
        return _json_ready(
            {"counts": self.counts, "missing_classes": self.missing_classes, **self.metrics()}
        )


def label_statistics(labels: ArrayLike, classes: Sequence[str]) -> LabelStats:
    """Counts per class, imbalance (max/min over the classes present; absent classes are listed
    in ``missing_classes``), majority fraction and label entropy (nats, and over ``log K``)."""
    classes = list(classes)
    counts = np.bincount(_class_indices(labels, len(classes), "labels"), minlength=len(classes))
    n = int(counts.sum())
    present = counts[counts > 0]
    p = counts / n if n else np.zeros(len(classes))
    entropy = float(_entropy(p)) if n else float("nan")
    return LabelStats(
        counts={c: int(k) for c, k in zip(classes, counts, strict=True)},
        missing_classes=[c for c, k in zip(classes, counts, strict=True) if k == 0],
        imbalance_ratio=float(present.max() / present.min()) if n else float("nan"),
        majority_fraction=float(present.max() / n) if n else float("nan"),
        entropy=entropy,
        normalized_entropy=_normalized(entropy, len(classes)),
    )


# --- predictions -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PredictionStats:
    """How a classifier's predictions spread over classes, and how confident they are.

    Rows with non-finite logits are counted in ``nonfinite_logits`` and left out. ``recall`` is
    NaN for classes absent from the targets (listed in ``absent_classes``).
    """

    n_examples: int
    nonfinite_logits: int
    accuracy: float
    predicted_counts: dict[str, int]
    target_counts: dict[str, int]
    recall: dict[str, float]
    absent_classes: list[str]
    top_class_fraction: float
    hist_entropy: float
    mean_entropy: float
    loss: float = float("nan")
    balanced_accuracy: float = float("nan")
    macro_f1: float = float("nan")

    def summary_metrics(self) -> dict[str, float]:
        """Scalar summaries: collapse (``top_class_fraction``, ``hist_entropy``), confidence
        (``mean_entropy``, normalized by ``log K``), accuracy and data problems."""
        return {
            "n_examples": float(self.n_examples),
            "nonfinite_logits": float(self.nonfinite_logits),
            "accuracy": self.accuracy,
            "top_class_fraction": self.top_class_fraction,
            "hist_entropy": self.hist_entropy,
            "mean_entropy": self.mean_entropy,
            "n_predicted_classes": float(sum(1 for c in self.predicted_counts.values() if c)),
            "n_absent_classes": float(len(self.absent_classes)),
        }

    def table(self) -> pd.DataFrame:
        """One row per class: ``class, target_count, predicted_count, recall``."""
        return pd.DataFrame(
            {
                "class": list(self.predicted_counts),
                "target_count": list(self.target_counts.values()),
                "predicted_count": list(self.predicted_counts.values()),
                "recall": list(self.recall.values()),
            }
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (non-finite values as ``null``)."""
        return _json_ready(
            {
                **self.summary_metrics(),
                "predicted_counts": self.predicted_counts,
                "target_counts": self.target_counts,
                "recall": self.recall,
                "absent_classes": self.absent_classes,
            }
        )


def prediction_statistics(
    targets: ArrayLike, logits: ArrayLike, classes: Sequence[str]
) -> PredictionStats:
    """Prediction histogram, its normalized entropy, the share of the most-predicted class,
    mean per-example softmax entropy (over ``log K``), per-class recall and accuracy."""
    classes = list(classes)
    k = len(classes)
    scores = _as_numpy(logits)
    if scores.ndim != 2 or scores.shape[1] != k:
        raise ValueError(f"logits have shape {scores.shape}; expected [examples, {k}]")
    y = _class_indices(targets, k, "targets")
    if len(y) != len(scores):
        raise ValueError(f"{len(y)} targets for {len(scores)} rows of logits")
    valid = np.isfinite(scores).all(axis=1)
    scores, y = scores[valid], y[valid]
    n = len(y)
    predicted = scores.argmax(axis=1) if n else np.zeros(0, dtype=np.int64)
    pred_counts = np.bincount(predicted, minlength=k)
    target_counts = np.bincount(y, minlength=k)
    hits = np.bincount(y[predicted == y], minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(target_counts > 0, hits / target_counts, np.nan)
    if n:
        shifted = scores - scores.max(axis=1, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        mean_entropy = _normalized(float(_entropy(np.exp(log_p)).mean()), k)
        hist_entropy = _normalized(float(_entropy(pred_counts / n)), k)
        accuracy = float((predicted == y).mean())
        top = float(pred_counts.max() / n)
        loss = float(-log_p[np.arange(n), y].mean())
        scores = classification_scores(y, predicted, k)
        balanced, macro_f1 = scores.balanced_accuracy, scores.macro_f1
    else:
        mean_entropy = hist_entropy = accuracy = top = float("nan")
        loss = balanced = macro_f1 = float("nan")
    return PredictionStats(
        n_examples=n,
        nonfinite_logits=int((~valid).sum()),
        accuracy=accuracy,
        predicted_counts={c: int(v) for c, v in zip(classes, pred_counts, strict=True)},
        target_counts={c: int(v) for c, v in zip(classes, target_counts, strict=True)},
        recall={c: float(v) for c, v in zip(classes, recall, strict=True)},
        absent_classes=[c for c, v in zip(classes, target_counts, strict=True) if v == 0],
        top_class_fraction=top,
        hist_entropy=hist_entropy,
        mean_entropy=mean_entropy,
        loss=loss,
        balanced_accuracy=balanced,
        macro_f1=macro_f1,
    )
