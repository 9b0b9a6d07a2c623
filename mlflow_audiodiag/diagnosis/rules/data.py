"""The data: imbalanced classes, a model that collapsed onto one class, and labels that do
not match the audio."""

from __future__ import annotations

import numpy as np

from mlflow_audiodiag import signals as S
from mlflow_audiodiag.diagnosis.evidence import RunEvidence
from mlflow_audiodiag.diagnosis.findings import Finding, Severity
from mlflow_audiodiag.diagnosis.rules.common import (
    INFERRED_CAP,
    baseline,
    knob,
    learned,
    log_ramp,
    ramp,
    require_epochs,
    score,
    train_chance,
)
from mlflow_audiodiag.diagnosis.rules.registry import Context, MissingSignal, rule
from mlflow_audiodiag.diagnosis.thresholds import Thresholds

CLASS_IMBALANCE = "class_imbalance"
MAJORITY_CLASS_COLLAPSE = "majority_class_collapse"
LABEL_NOISE = "label_noise"

# Broken numerics and a failing optimization wreck every downstream signal.
_OPTIMIZATION = ("numerics", "optimization")

_UPSTREAM_OF_COLLAPSE = (*_OPTIMIZATION, "input")

_BALANCE = (
    "weight the loss inversely to class frequency (CrossEntropyLoss(weight=...)) or draw "
    "batches with equal class frequency (a WeightedRandomSampler)"
)


@rule(
    MAJORITY_CLASS_COLLAPSE,
    family="data",
    title="Collapse onto one class",
    precedence=0,
    thresholds=("collapse_top_fraction", "collapse_epoch_share", "majority_tolerance"),
    signals=(S.TOP_CLASS_FRACTION, S.VAL_ACCURACY, S.MAJORITY_BASELINE, S.N_PREDICTED_CLASSES),
    # A network wrecked by the optimization or fed broken inputs often predicts one class:
    # then the collapse is the consequence, and the cause upstream is named instead.
    defers_to=_UPSTREAM_OF_COLLAPSE,
    deference="cap",
)
def majority_class_collapse(ev: RunEvidence, t: Thresholds, ctx: Context) -> Finding | None:
    """Validation predictions concentrated on one class for most of the run (or, without
    prediction statistics, val accuracy pinned to the majority guess)."""
    top = ev.values(S.TOP_CLASS_FRACTION.name)
    base = baseline(ev)
    acc = ev.values(S.VAL_ACCURACY.name)
    if top is None and (acc is None or base is None):
        raise MissingSignal(S.TOP_CLASS_FRACTION.name)
    evidence: dict[str, float | str] = {}
    at_majority = False
    if acc is not None and base is not None:
        at_majority = bool(
            np.mean(np.abs(acc - base) <= t.majority_tolerance) >= t.collapse_epoch_share
        )
        evidence.update({"val_accuracy_last": float(acc[-1]), "majority_baseline": base})
    if top is not None:
        top = top[np.isfinite(top)]
        collapsed = top >= t.collapse_top_fraction
        share = float(collapsed.mean()) if len(top) else 0.0
        evidence.update(
            {
                "collapsed_epoch_share": share,
                "top_class_fraction_median": float(np.median(top)) if len(top) else 0.0,
            }
        )
        if share < t.collapse_epoch_share:
            return None
        strength = 0.5 * ramp(float(np.median(top)), t.collapse_top_fraction, 1.0) + 0.5 * share
        title = f"The model predicts one class for most validation clips in {share:.0%} of epochs"
    else:
        if not at_majority:
            return None
        strength = 0.4
        title = f"Validation accuracy stays at the majority guess ({base:.3f})"
    balance = knob(ev, _BALANCE, "class_balance", "weighted_loss")
    return Finding(
        code=MAJORITY_CLASS_COLLAPSE,
        severity=Severity.CRITICAL,
        title=title,
        evidence=evidence,
        thresholds={
            "collapse_top_fraction": t.collapse_top_fraction,
            "collapse_epoch_share": t.collapse_epoch_share,
        },
        fix=(
            "The model has collapsed onto one class. Check that the training labels are "
            "not mostly one class (monitor/labels.csv: a broken label column or a default "
            f"value), rebalance the training signal ({balance}), "
            "standardize the inputs and make sure the learning rate is not so high that the "
            "logits saturate; judge progress by val/balanced_accuracy and val/macro_f1."
        ),
        score=score(strength),
    )


@rule(
    CLASS_IMBALANCE,
    family="data",
    title="Class imbalance",
    precedence=1,
    thresholds=("imbalance_ratio", "train_majority_fraction", "favoured_gap", "window_epochs"),
    signals=(S.IMBALANCE_RATIO, S.MAJORITY_FRACTION, S.VAL_ACCURACY, S.VAL_BALANCED_ACCURACY),
)
def class_imbalance(ev: RunEvidence, t: Thresholds, ctx: Context) -> Finding | None:
    """The training split is dominated by a few classes. It holds the run back (warning) when
    the model favours the large classes: val accuracy well above val balanced accuracy; a run
    that learns every class despite it gets a note (info)."""
    ratio = ev.latest(S.IMBALANCE_RATIO.key(split="train"))
    share = ev.latest(S.MAJORITY_FRACTION.key(split="train"))
    if ratio is None and share is None:
        raise MissingSignal(S.IMBALANCE_RATIO.key(split="train"))
    by_ratio = ratio is not None and ratio >= t.imbalance_ratio
    by_share = share is not None and share >= t.train_majority_fraction
    if not (by_ratio or by_share):
        return None
    evidence: dict[str, float | str] = {}
    if ratio is not None:
        evidence["train_imbalance_ratio"] = ratio
    if share is not None:
        evidence["train_majority_fraction"] = share
    val_share = ev.latest(S.MAJORITY_FRACTION.key(split="val"))
    if val_share is not None:
        evidence["val_majority_fraction"] = val_share
    strength = max(
        log_ramp(ratio, t.imbalance_ratio, 10 * t.imbalance_ratio) if ratio else 0.0,
        ramp(share, t.train_majority_fraction, 1.0) if share is not None else 0.0,
    )
    label = f"{ratio:.1f}x" if ratio is not None else f"majority share {share:.0%}"
    gap = _favoured_gap(ev, t)
    severity = Severity.WARNING
    title = f"The training classes are imbalanced ({label})"
    if gap is not None:
        evidence["val_accuracy_minus_balanced_accuracy"] = gap
        if gap >= t.favoured_gap:
            title += " and the model favours the large classes"
        else:
            severity, strength = Severity.INFO, min(strength, 0.5)
            title += "; every class is learned despite it"
    return Finding(
        code=CLASS_IMBALANCE,
        severity=severity,
        title=title,
        evidence=evidence,
        thresholds={
            "imbalance_ratio": t.imbalance_ratio,
            "train_majority_fraction": t.train_majority_fraction,
            "favoured_gap": t.favoured_gap,
        },
        fix=(
            f"Balance the classes: {knob(ev, _BALANCE, 'class_balance', 'weighted_loss')}; "
            "collect or augment more clips of the small classes. Plain accuracy rewards "
            "predicting the majority class; judge runs by val/balanced_accuracy and "
            "val/macro_f1."
        ),
        score=score(strength),
    )


def _favoured_gap(ev: RunEvidence, t: Thresholds) -> float | None:
    """Val accuracy minus val balanced accuracy over the last epochs (``None``: not recorded)."""
    accuracy = ev.values(S.VAL_ACCURACY.name)
    balanced = ev.values(S.VAL_BALANCED_ACCURACY.name)
    if accuracy is None or balanced is None or len(accuracy) != len(balanced):
        return None
    window = slice(-t.window_epochs, None)
    gap = np.nanmean(accuracy[window] - balanced[window])
    return float(gap) if np.isfinite(gap) else None


@rule(
    LABEL_NOISE,
    family="data",
    title="Labels do not match the audio",
    precedence=2,
    thresholds=("chance_margin", "min_improvement", "flat_noise_sigmas", "val_loss_learned"),
    signals=(S.TRAIN_ACCURACY, S.VAL_ACCURACY, S.MAJORITY_FRACTION, S.MAJORITY_BASELINE),
    # Val features that differ from the train features also keep what is learned from carrying
    # over: that input shift is named first.
    defers_to=(*_OPTIMIZATION, "normalization_mismatch"),
)
def label_noise(ev: RunEvidence, t: Thresholds, ctx: Context) -> Finding | None:
    """The model memorises its training labels (train accuracy rises well above chance) while
    validation never leaves the majority baseline and its loss does not fall: what it learns
    does not carry over, the labels do not match the audio."""
    train = require_epochs(ev, S.TRAIN_ACCURACY, t)
    chance = train_chance(ev)
    if chance is None:
        raise MissingSignal(S.MAJORITY_FRACTION.key(split="train"))
    val_learned, figures = learned(ev, t)
    best_train = float(train.max())
    memorised = best_train - chance
    carries_over = figures.get("val_loss_drop", 0.0) >= t.val_loss_learned
    if val_learned or carries_over or memorised < 2 * t.chance_margin:
        return None
    evidence: dict[str, float | str] = {
        "best_train_accuracy": best_train,
        "train_chance": chance,
        **figures,
    }
    return Finding(
        code=LABEL_NOISE,
        severity=Severity.CRITICAL,
        title=(
            f"Training accuracy rises to {best_train:.3f} (chance {chance:.3f}) while "
            f"validation never leaves the majority baseline ({figures['baseline']:.3f})"
        ),
        evidence=evidence,
        thresholds={"chance_margin": t.chance_margin, "min_improvement": t.min_improvement},
        fix=(
            "The model memorises labels that do not carry over: the labels probably do not "
            "match the audio. Check the manifest's label column or the folder names (a "
            "shifted or separately shuffled column), listen to a few clips per class, and look "
            "for the same file under several labels or for train/val files that differ in "
            "kind."
        ),
        score=score(ramp(memorised, 2 * t.chance_margin, 0.5), INFERRED_CAP),
    )
