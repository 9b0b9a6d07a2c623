"""Generalization: a model that fits the training data but stops carrying it over to
validation (overfitting), or one that cannot fit the training data (underfitting)."""

from __future__ import annotations

import numpy as np

from mlflow_audiodiag import signals as S
from mlflow_audiodiag.diagnosis.evidence import RunEvidence
from mlflow_audiodiag.diagnosis.findings import Finding, Severity
from mlflow_audiodiag.diagnosis.rules.common import (
    INFERRED_CAP,
    finite,
    is_flat,
    learned,
    learned_margin,
    loss_falling,
    model_size,
    plateau_rows,
    ramp,
    require,
    score,
    train_chance,
)
from mlflow_audiodiag.diagnosis.rules.data import _OPTIMIZATION, LABEL_NOISE
from mlflow_audiodiag.diagnosis.rules.registry import Context, MissingSignal, rule
from mlflow_audiodiag.diagnosis.thresholds import Thresholds

OVERFITTING = "overfitting"
UNDERFITTING = "underfitting"


def _aligned(ev: RunEvidence, t: Thresholds) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Epochs with both a train and a val accuracy: ``(epochs, train, val)``."""
    train = require(ev, S.TRAIN_ACCURACY)
    val = require(ev, S.VAL_ACCURACY)
    epochs = np.intersect1d(train[:, 0], val[:, 0])
    if len(epochs) < t.min_epochs:
        raise MissingSignal(S.TRAIN_ACCURACY.name, f"{len(epochs)} epochs, needs {t.min_epochs}")
    return (
        epochs,
        train[np.isin(train[:, 0], epochs), 1],
        val[np.isin(val[:, 0], epochs), 1],
    )


@rule(
    OVERFITTING,
    family="generalization",
    title="Overfitting",
    precedence=0,
    thresholds=(
        "overfit_gap",
        "overfit_gap_growth",
        "val_loss_rise_ratio",
        "window_epochs",
        "fitted_accuracy",
        "memorised_gap",
    ),
    signals=(S.TRAIN_ACCURACY, S.VAL_ACCURACY, S.TRAIN_LOSS, S.VAL_LOSS),
    defers_to=_OPTIMIZATION + (LABEL_NOISE,),
)
def overfitting(ev: RunEvidence, t: Thresholds, ctx: Context) -> Finding | None:
    """Train accuracy pulls away from a val accuracy that learned and then stopped carrying
    over: the gap is large and growing while val accuracy falls from its best or val loss
    rises with the train loss falling; or the model has fit its training data while val
    accuracy stays far below (it memorises what does not generalize)."""
    _, train, val = _aligned(ev, t)
    val_learned, figures = learned(ev, t)
    if not val_learned:
        return None
    k = min(t.window_epochs, max(1, len(train) // 2))
    gap_late = float(np.mean(train[-k:] - val[-k:]))
    gap_early = float(np.mean(train[:k] - val[:k]))
    growth = gap_late - gap_early
    best = figures["best_sustained_val_accuracy"]
    drop = best - float(np.mean(val[-k:]))
    falling_acc = drop >= learned_margin(ev, t, best)
    rise = None
    val_loss, train_loss = ev.values(S.VAL_LOSS.name), ev.values(S.TRAIN_LOSS.name)
    if val_loss is not None and train_loss is not None:
        val_loss, train_loss = finite(val_loss), finite(train_loss)
        enough = len(val_loss) >= 2 and len(train_loss) >= 2 and val_loss.min() > 0
        if enough and train_loss[-k:].mean() < train_loss[:k].mean():
            rise = float(val_loss[-k:].mean() / val_loss.min())
    rising_loss = rise is not None and rise >= t.val_loss_rise_ratio
    if not (gap_late >= t.overfit_gap and growth >= t.overfit_gap_growth):
        return None
    fitted = float(train[-k:].mean()) >= t.fitted_accuracy
    memorised = fitted and gap_late >= t.memorised_gap
    if not (falling_acc or rising_loss or memorised):
        return None
    evidence: dict[str, float | str] = {
        "train_accuracy_window": float(train[-k:].mean()),
        "val_accuracy_window": float(val[-k:].mean()),
        "val_accuracy_best": best,
        "gap_window": gap_late,
        "gap_first_epochs": gap_early,
        "gap_growth": growth,
    }
    if rise is not None:
        evidence["val_loss_window_over_min"] = rise
    return Finding(
        code=OVERFITTING,
        severity=Severity.WARNING,
        title=f"Overfitting: train accuracy exceeds val accuracy by {gap_late:.2f} and growing",
        evidence=evidence,
        thresholds={
            "overfit_gap": t.overfit_gap,
            "overfit_gap_growth": t.overfit_gap_growth,
            "val_loss_rise_ratio": t.val_loss_rise_ratio,
            "fitted_accuracy": t.fitted_accuracy,
            "memorised_gap": t.memorised_gap,
        },
        fix=(
            "Augment the training audio (background noise, time shift, gain, time-stretch, "
            "pitch-shift, SpecAugment masks, mixup), regularize (dropout, weight decay), stop "
            "early at the best val epoch, use a smaller model"
            + (f" (now {size})" if (size := model_size(ev)) else "")
            + " or collect more data."
        ),
        score=score(ramp(gap_late, t.overfit_gap, 4 * t.overfit_gap)),
    )


@rule(
    UNDERFITTING,
    family="generalization",
    title="Underfitting",
    precedence=1,
    thresholds=(
        "chance_margin",
        "val_loss_improving",
        "overfit_gap",
        "underfit_loss_fraction",
        "underfit_params_per_clip",
        "lr_active_fraction",
    ),
    signals=(
        S.TRAIN_ACCURACY,
        S.VAL_ACCURACY,
        S.TRAIN_LOSS,
        S.MAJORITY_FRACTION,
        S.TRAINABLE_PARAMETERS,
        S.LABEL_N,
    ),
    defers_to=_OPTIMIZATION + (LABEL_NOISE,),
)
def underfitting(ev: RunEvidence, t: Thresholds, ctx: Context) -> Finding | None:
    """The model cannot fit its training data although the optimization is healthy: train
    accuracy never leaves chance (too much regularization); or it fits so slowly that
    accuracy stays flat, level with val and far from a perfect fit, while the training loss
    only creeps down; or a model with few parameters per training clip ends the run fitting
    its training clips no better than val's, far from a fit, its training loss not even
    halved (too small a model)."""
    epochs, train, val = _aligned(ev, t)
    chance = train_chance(ev)
    never = chance is not None and float(train.max()) <= chance + t.chance_margin
    stalled = _slow_fit(ev, t, epochs, train, val)
    small = None if (never or stalled) else _small_model(ev, t, train, val)
    if not (never or stalled or small):
        return None
    k = min(t.window_epochs, len(train))
    evidence: dict[str, float | str] = {
        "train_accuracy_window": float(train[-k:].mean()),
        "val_accuracy_window": float(val[-k:].mean()),
        "best_train_accuracy": float(train.max()),
    }
    if chance is not None:
        evidence["train_chance"] = chance
    if stalled:
        evidence["train_loss_fall_per_epoch"] = stalled
    if small:
        evidence.update(small)
    size = model_size(ev)
    if never:
        title = (
            f"Underfitting: train accuracy never leaves chance ({float(train.max()):.3f} vs "
            f"{chance:.3f}) although the weights are updated normally"
        )
        strength = ramp(chance + t.chance_margin - float(train.max()), 0.0, t.chance_margin)
    elif small:
        title = (
            f"Underfitting: a small model ({small['parameters_per_training_clip']:.1f} "
            f"parameters per training clip) ends at train accuracy "
            f"{float(train[-k:].mean()):.2f} (val {float(val[-k:].mean()):.2f}), its training "
            "loss still at "
            f"{small['train_loss_window_over_first']:.0%} of its start"
        )
        strength = ramp(1.0 - float(train[-k:].mean()), t.overfit_gap, 0.5)
    else:
        title = (
            f"Underfitting: train accuracy stays at {float(train[-k:].mean()):.2f}, level with "
            "val, while the training loss only creeps down"
        )
        strength = ramp(1.0 - float(train[-k:].mean()), t.overfit_gap, 0.5)
    return Finding(
        code=UNDERFITTING,
        severity=Severity.CRITICAL if never else Severity.WARNING,
        title=title,
        evidence=evidence,
        thresholds={
            "chance_margin": t.chance_margin,
            "val_loss_improving": t.val_loss_improving,
            "underfit_loss_fraction": t.underfit_loss_fraction,
            "underfit_params_per_clip": t.underfit_params_per_clip,
        },
        fix=(
            "Lighten the regularization (dropout, weight decay, heavy augmentation or mixup) "
            "and give the model more capacity"
            + (f" (now {size})" if size else "")
            + ": more layers or width, finer time resolution of its inputs; train longer."
        ),
        score=score(strength, INFERRED_CAP),
    )


def _small_model(
    ev: RunEvidence, t: Thresholds, train: np.ndarray, val: np.ndarray
) -> dict[str, float] | None:
    """The figures of a model too small for its data: fewer than
    ``underfit_params_per_clip`` trainable parameters per training clip, train accuracy at
    the end away from a perfect fit and not above val (dropout and augmentation may keep it
    below), and a training loss that fell but
    stays above ``underfit_loss_fraction`` of its start. ``None`` otherwise (or unrecorded)."""
    params = ev.latest(S.TRAINABLE_PARAMETERS.name)
    clips = ev.latest(S.LABEL_N.key(split="train"))
    losses = ev.values(S.TRAIN_LOSS.name)
    if not params or not clips or losses is None:
        return None
    per_clip = float(params) / float(clips)
    losses = finite(losses)
    if per_clip >= t.underfit_params_per_clip or len(losses) < 2 or losses[0] <= 0:
        return None
    late = float(losses[-t.window_epochs :].mean())
    if not t.underfit_loss_fraction * float(losses[0]) <= late < float(losses[0]):
        return None
    k = min(t.window_epochs, len(train))
    train_late, val_late = float(train[-k:].mean()), float(val[-k:].mean())
    if 1.0 - train_late < t.overfit_gap or train_late - val_late >= t.overfit_gap / 2:
        return None  # fits its own clips better than val's: a gap, not a lack of capacity
    return {
        "parameters_per_training_clip": per_clip,
        "train_loss_window_over_first": late / float(losses[0]),
    }


def _slow_fit(
    ev: RunEvidence, t: Thresholds, epochs: np.ndarray, train: np.ndarray, val: np.ndarray
) -> float | None:
    """The train loss's fall per epoch when the model fits slowly: val accuracy has learned
    something but stays flat, train accuracy keeps level with it (no gap) and away from a
    perfect fit, while the training loss, still above ``underfit_loss_fraction`` of its
    start, creeps down. ``None`` otherwise."""
    falling = loss_falling(ev, t, S.TRAIN_LOSS)
    if falling is None or falling < t.val_loss_improving:
        return None
    losses = finite(ev.values(S.TRAIN_LOSS.name))
    late = float(losses[-t.window_epochs :].mean())
    if late < t.underfit_loss_fraction * float(losses[0]):
        return None  # the loss is well down: growing confidence, not a model that cannot fit
    if not learned(ev, t)[0]:
        return None
    rows = plateau_rows(ev, S.VAL_ACCURACY, t)
    if not is_flat(ev, t, rows)[0]:
        return None
    k = min(t.window_epochs, len(train))
    train_late, val_late = float(train[-k:].mean()), float(val[-k:].mean())
    if 1.0 - train_late < t.overfit_gap or abs(train_late - val_late) >= t.overfit_gap / 2:
        return None
    return falling
