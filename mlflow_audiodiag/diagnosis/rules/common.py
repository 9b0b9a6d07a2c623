"""What several rules need: scores, the run's baseline and noise, phases of the step table,
the active-learning-rate window, and fix texts in the user's own terms."""

from __future__ import annotations

import math
import warnings

import numpy as np

from mlflow_audiodiag import signals as S
from mlflow_audiodiag.diagnosis.evidence import RunEvidence
from mlflow_audiodiag.diagnosis.rules.registry import MissingSignal
from mlflow_audiodiag.diagnosis.thresholds import Thresholds

# Causes inferred by ruling others out score at most this much.
INFERRED_CAP = 0.75

TRAIN, VAL = "train", "val"


# --- scores ------------------------------------------------------------------------------------


def ramp(value: float, start: float, full: float) -> float:
    """0 at ``start``, 1 at ``full`` (either direction), linear and clamped."""
    if not np.isfinite(value):
        return 1.0
    if full == start:
        return 1.0
    return float(np.clip((value - start) / (full - start), 0.0, 1.0))


def log_ramp(value: float, start: float, full: float) -> float:
    """:func:`ramp` on a log10 scale; ``value <= 0`` counts as beyond a falling ramp's end."""
    if value <= 0 or start <= 0 or full <= 0:
        return 1.0 if full < start else 0.0
    return ramp(np.log10(value), np.log10(start), np.log10(full))


def score(strength: float, cap: float = 1.0) -> float:
    """0.5 at a rule's threshold, growing with the evidence to ``cap``."""
    return round(0.5 + (cap - 0.5) * float(np.clip(strength, 0.0, 1.0)), 4)


# --- series ------------------------------------------------------------------------------------


def finite(values: np.ndarray) -> np.ndarray:
    return values[np.isfinite(values)]


def require(ev: RunEvidence, signal: S.Signal, min_points: int = 1, name: str = "") -> np.ndarray:
    """``[n, 2]`` finite rows of a time series, or :class:`MissingSignal`."""
    key = name or signal.name
    data = ev.series(key)
    if data is None:
        raise MissingSignal(key)
    rows = data[np.isfinite(data[:, 1])]
    if len(rows) < min_points:
        raise MissingSignal(key, f"{len(rows)} finite points, needs {min_points}")
    return rows


def require_epochs(ev: RunEvidence, signal: S.Signal, t: Thresholds) -> np.ndarray:
    """The values of an epoch series with at least ``min_epochs`` points."""
    rows = require(ev, signal)
    if len(rows) < t.min_epochs:
        raise MissingSignal(signal.name, f"{len(rows)} epochs, needs {t.min_epochs}")
    return rows[:, 1]


def segment(n: int, fraction: float, minimum: int = 1) -> int:
    return max(minimum, min(n, int(round(n * fraction))))


# --- the run's own reference points --------------------------------------------------------------


def n_classes(ev: RunEvidence) -> int | None:
    """Classes seen in the label counts or the prediction histogram."""
    names = set(ev.groups(S.VAL_PRED_COUNT))
    for split in (TRAIN, VAL):
        names |= {
            k.split("/count/", 1)[1] for k in ev.summary if k.startswith(f"labels/{split}/count/")
        }
    return len(names) or None


def baseline(ev: RunEvidence) -> float | None:
    """Val accuracy of always predicting the largest training class (else of the largest val
    class, else chance 1/K)."""
    for name in (S.MAJORITY_BASELINE.name, S.MAJORITY_FRACTION.key(split=VAL)):
        value = ev.latest(name)
        if value is not None and np.isfinite(value):
            return value
    k = n_classes(ev)
    return 1.0 / k if k else None


def train_chance(ev: RunEvidence) -> float | None:
    """Train accuracy of always guessing the largest class (1/K when only counts exist)."""
    value = ev.latest(S.MAJORITY_FRACTION.key(split=TRAIN))
    if value is not None and np.isfinite(value):
        return value
    k = n_classes(ev)
    return 1.0 / k if k else None


def val_clips(ev: RunEvidence) -> float | None:
    value = ev.latest(S.LABEL_N.key(split=VAL))
    return value if value is not None and value > 0 else None


def noise(ev: RunEvidence, level: float) -> float:
    """Standard error of an accuracy ``level`` measured on the val clips (0 when unknown)."""
    n = val_clips(ev)
    level = float(np.clip(level, 0.0, 1.0))
    return math.sqrt(level * (1.0 - level) / n) if n else 0.0


def learned_margin(ev: RunEvidence, t: Thresholds, level: float) -> float:
    """How far above its baseline val accuracy must rise to count as learning."""
    return max(t.min_improvement, t.flat_noise_sigmas * noise(ev, level))


def learned(ev: RunEvidence, t: Thresholds) -> tuple[bool, dict[str, float]]:
    """Whether val accuracy rose clearly above the majority baseline (two epochs in a row, so
    one lucky epoch does not count; "clearly": by the sampling noise of the val set), and the
    figures behind it."""
    acc = require_epochs(ev, S.VAL_ACCURACY, t)
    base = baseline(ev)
    reference = base if base is not None else float(acc[0])
    sustained = np.minimum(acc[1:], acc[:-1]) if len(acc) > 1 else acc
    best = float(sustained.max())
    margin = learned_margin(ev, t, reference)
    figures = {
        "baseline": reference,
        "best_sustained_val_accuracy": best,
        "learning_margin": margin,
    }
    drop = val_loss_drop(ev)
    if drop is not None:
        figures["val_loss_drop"] = drop
    return best - reference >= margin, figures


def val_loss_drop(ev: RunEvidence) -> float | None:
    """Relative drop of the val loss from its first epoch to its lowest."""
    losses = ev.values(S.VAL_LOSS.name)
    losses = finite(losses) if losses is not None else np.zeros(0)
    if len(losses) < 2 or losses[0] <= 0:
        return None
    return float((losses[0] - losses.min()) / losses[0])


def val_loss_falling(ev: RunEvidence, t: Thresholds) -> float | None:
    """The val loss's fall per epoch over the window, as a share of its first value (positive
    while it falls); ``None`` without a val loss."""
    return loss_falling(ev, t, S.VAL_LOSS)


# --- learning rate and phases --------------------------------------------------------------------


def lr_columns(ev: RunEvidence) -> list[str]:
    return [S.LR.key(param_group=g) for g in ev.groups(S.LR)]


def _largest_lr(ev: RunEvidence) -> np.ndarray | None:
    """Per row of the step table, the largest param-group LR (NaN where none is recorded)."""
    columns = [ev.steps.columns[c] for c in lr_columns(ev) if c in ev.steps.columns]
    if not columns:
        return None
    if len(columns) == 1:
        return columns[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows stay NaN
        return np.nanmax(np.stack(columns), axis=0)


def step_lr(ev: RunEvidence) -> np.ndarray | None:
    """``(step, largest param-group LR)`` rows, or ``None`` without recorded LRs."""
    largest = _largest_lr(ev)
    if largest is None:
        return None
    kept = np.isfinite(largest)
    return np.stack([ev.steps.index[kept], largest[kept]], axis=1) if kept.any() else None


def peak_lr(ev: RunEvidence) -> float | None:
    rows = step_lr(ev)
    if rows is not None and len(rows):
        return float(rows[:, 1].max())
    try:
        return float(ev.params["optim.lr"])
    except (KeyError, ValueError):
        return None


def active_steps(ev: RunEvidence, t: Thresholds) -> np.ndarray | None:
    """Steps at which the largest LR is at least ``lr_active_fraction`` of its peak."""
    mask = _active_mask(ev, t)
    return None if mask is None else ev.steps.index[mask]


def _active_mask(ev: RunEvidence, t: Thresholds) -> np.ndarray | None:
    """Rows of the step table at an active LR (see :func:`active_steps`), as a mask."""
    largest = _largest_lr(ev)
    if largest is None or not np.isfinite(largest).any():
        return None
    peak = float(np.nanmax(largest))
    if peak <= 0:
        return None
    with np.errstate(invalid="ignore"):
        return largest >= t.lr_active_fraction * peak


def active_epochs(ev: RunEvidence, t: Thresholds) -> np.ndarray | None:
    """Epochs that ended at an active LR (LR annealed below ``lr_active_fraction`` of its
    peak explains a late plateau), from the step table; ``None`` when unknown."""
    last = ev.epochs.series(S.EPOCH_LAST_STEP.name)
    rows = step_lr(ev)
    if last is None or rows is None or rows[:, 1].max() <= 0:
        return None
    steps = rows[:, 0]
    positions = np.clip(np.searchsorted(steps, last[:, 1], side="right") - 1, 0, len(steps) - 1)
    lr_at_end = rows[positions, 1]
    return last[lr_at_end >= t.lr_active_fraction * rows[:, 1].max(), 0]


def annealed(ev: RunEvidence, t: Thresholds) -> bool:
    """Whether the LR ended below ``lr_active_fraction`` of its peak (a decaying schedule)."""
    rows = step_lr(ev)
    if rows is None or rows[:, 1].max() <= 0:
        return False
    return bool(rows[-1, 1] < t.lr_active_fraction * rows[:, 1].max())


def plateau_rows(ev: RunEvidence, signal: S.Signal, t: Thresholds) -> np.ndarray:
    """The last ``window_epochs`` rows of an epoch series at an active LR (all epochs when too
    few were active)."""
    rows = require(ev, signal)
    active = active_epochs(ev, t)
    if active is not None:
        kept = rows[np.isin(rows[:, 0], active)]
        if len(kept) >= t.window_epochs:
            rows = kept
    return rows[-t.window_epochs :]


def step_values(ev: RunEvidence, name: str, active_only: bool = False, t: Thresholds | None = None):
    """Finite ``(step, value)`` rows of a step column (at an active LR when asked)."""
    values = ev.steps.columns.get(name)
    if values is None:
        return None
    kept = np.isfinite(values)
    if active_only and t is not None:
        active = _active_mask(ev, t)
        if active is not None and (kept & active).any():
            kept &= active
    if not kept.any():
        return None
    return np.stack([ev.steps.index[kept], values[kept]], axis=1)


def phases(values: np.ndarray, t: Thresholds) -> tuple[np.ndarray, np.ndarray]:
    """The early and the recent phase of a step series."""
    n = len(values)
    return values[: segment(n, t.early_fraction, 3)], values[-segment(n, t.recent_fraction, 3) :]


def windowed_medians(values: np.ndarray, windows: int = 20) -> np.ndarray:
    """Medians of ``windows`` consecutive equal slices (fewer for short series)."""
    count = max(1, min(windows, len(values) // 3))
    return np.array([np.median(part) for part in np.array_split(values, count) if len(part)])


def grad_growth(values: np.ndarray) -> float:
    """How much the total gradient norm grew within the run: the largest windowed median
    over the smallest one before it."""
    medians = windowed_medians(values)
    if len(medians) < 2:
        return 1.0
    earlier = np.minimum.accumulate(medians)
    return float(np.max(medians[1:] / np.maximum(earlier[:-1], 1e-30)))


def train_loss(ev: RunEvidence) -> np.ndarray | None:
    """Epoch training losses, else the step losses."""
    values = ev.values(S.TRAIN_LOSS.name)
    if values is not None and len(finite(values)) >= 2:
        return values
    values = ev.values(S.STEP_LOSS.name)
    return values if values is not None and len(finite(values)) >= 2 else None


def is_frozen(ev: RunEvidence, group: str, t: Thresholds) -> bool:
    value = ev.latest(S.FROZEN_FRACTION.key(group=group))
    return value is not None and value >= t.frozen_fraction


def update_ratios(ev: RunEvidence, t: Thresholds, trainable_only: bool) -> dict[str, float]:
    """Per group, the median update/weight ratio over the steps at an active LR."""
    out = {}
    for group in ev.groups(S.UPDATE_RATIO):
        if trainable_only and is_frozen(ev, group, t):
            continue
        rows = step_values(ev, S.UPDATE_RATIO.key(group=group), active_only=True, t=t)
        if rows is not None:
            out[group] = float(np.median(rows[:, 1]))
    return out


def weight_shrink(ev: RunEvidence, t: Thresholds) -> float | None:
    """How far the most-faded trainable layer's weights shrank: the smallest, over groups, of
    the recent phase's median weight norm / the first recorded norm (the initial weights);
    ``None`` when unrecorded. Steps that only move the weights leave every layer near its
    initial norm or above; weight decay that outweighs the gradient pulls layers to zero.

    >>> # a run whose head ends at a twentieth of its initial norm: weight_shrink(...) == 0.05
    """
    shrinks = []
    for group in ev.groups(S.WEIGHT_NORM):
        if is_frozen(ev, group, t):
            continue
        rows = step_values(ev, S.WEIGHT_NORM.key(group=group))
        if rows is None or len(rows) < 6 or rows[0, 1] <= 0:
            continue
        recent = phases(rows[:, 1], t)[1]
        shrinks.append(float(np.median(recent)) / float(rows[0, 1]))
    return min(shrinks) if shrinks else None


def clip_norm(ev: RunEvidence) -> float | None:
    """The gradient-clipping threshold in force (median over the steps that record it)."""
    values = ev.values(S.CLIP_MAX_NORM.name)
    values = finite(values) if values is not None else np.zeros(0)
    return float(np.median(values)) if len(values) else None


# --- fix texts in the user's terms ----------------------------------------------------------------


def sentence(text: str) -> str:
    """``text`` with its first letter upper-cased and the rest kept (``-P`` flags stay upper).

    >>> sentence("lower the LR (-P lr=0.1)")
    'Lower the LR (-P lr=0.1)'
    """
    return text[:1].upper() + text[1:]


def knob(ev: RunEvidence, words: str, flag: str | None = None, value: object = None) -> str:
    """``words``, with the bundled trainer's ``-P flag=value`` added for its runs only."""
    if ev.bundled and flag is not None:
        shown = f"{flag}={value:g}" if isinstance(value, float) else f"{flag}={value}"
        return f"{words} (-P {shown if value is not None else flag})"
    return words


def lr_advice(ev: RunEvidence, factor: float) -> str:
    """ "raise/lower the optimizer's learning rate from X to about Y", X left out if unknown."""
    verb = "raise" if factor > 1 else "lower"
    lr = peak_lr(ev)
    if lr is None or lr <= 0:
        return f"{verb} the optimizer's learning rate about {max(factor, 1 / factor):g}x"
    target = lr * factor
    return knob(
        ev,
        f"{verb} the optimizer's learning rate from {lr:.3g} to about {target:.3g}",
        "lr",
        float(f"{target:.3g}"),
    )


def clip_advice(ev: RunEvidence) -> str:
    current = clip_norm(ev)
    if current is None:
        return knob(
            ev,
            "clip gradients (clip_grad_norm_ with max_norm=1.0; now not clipped)",
            "grad_clip",
            1.0,
        )
    return knob(ev, f"keep clipping gradients (max_norm {current:.3g} now)", "grad_clip", current)


def model_size(ev: RunEvidence) -> str:
    """ "12,345 trainable parameters in 4 layer groups" (parts not recorded left out)."""
    parts = []
    count = ev.latest(S.TRAINABLE_PARAMETERS.name)
    if count is not None:
        parts.append(f"{int(count):,} trainable parameters")
    groups = ev.groups(S.GRAD_NORM) or ev.groups(S.FROZEN_FRACTION)
    if groups:
        parts.append(f"{len(groups)} layer groups")
    return " in ".join(parts)


def is_flat(ev: RunEvidence, t: Thresholds, rows: np.ndarray) -> tuple[bool, dict[str, float]]:
    """Whether a window of val accuracies is flat by range and slope within the sampling
    noise of the val set, or exactly repeated; and the figures."""
    window = rows[:, 1]
    spread = float(window.max() - window.min())
    slope = float(np.polyfit(rows[:, 0], window, 1)[0]) if len(rows) > 1 else 0.0
    _, counts = np.unique(window, return_counts=True)
    repeat = float(counts.max() / len(window))
    sigma = noise(ev, float(window.mean()))
    max_range = max(t.flat_range, t.flat_noise_sigmas * sigma)
    max_slope = t.flat_slope
    spread_x = float(np.sqrt(np.sum((rows[:, 0] - rows[:, 0].mean()) ** 2)))
    if spread_x > 0:  # standard error of a least-squares slope through pure noise
        max_slope = max(max_slope, 0.5 * t.flat_noise_sigmas * sigma / spread_x)
    flat = (spread <= max_range and abs(slope) <= max_slope) or repeat >= t.repeat_fraction
    figures = {
        "val_accuracy_range": spread,
        "val_accuracy_slope": slope,
        "repeat_share": repeat,
        "flat_range_limit": max_range,
        "flat_slope_limit": max_slope,
    }
    if val_clips(ev):
        figures["val_accuracy_noise"] = sigma
    return flat, figures


def loss_falling(ev: RunEvidence, t: Thresholds, signal: S.Signal) -> float | None:
    """An epoch loss's fall per epoch over the window, as a share of its first value
    (positive while it falls); ``None`` without that loss."""
    losses = ev.epochs.series(signal.name)
    if losses is None:
        return None
    rows = losses[np.isfinite(losses[:, 1])]
    if len(rows) < 3 or rows[0, 1] <= 0:
        return None
    window = rows[-t.window_epochs :]
    slope = float(np.polyfit(window[:, 0], window[:, 1], 1)[0])
    return -slope / float(rows[0, 1])
