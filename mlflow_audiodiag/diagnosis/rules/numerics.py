"""Numbers that cannot be: non-finite values, and losses that valid targets cannot give."""

from __future__ import annotations

import numpy as np

from mlflow_audiodiag import signals as S
from mlflow_audiodiag.diagnosis.evidence import RunEvidence
from mlflow_audiodiag.diagnosis.findings import Finding, Severity
from mlflow_audiodiag.diagnosis.rules.common import (
    clip_advice,
    finite,
    grad_growth,
    knob,
    lr_advice,
    sentence,
)
from mlflow_audiodiag.diagnosis.rules.registry import Context, MissingSignal, rule
from mlflow_audiodiag.diagnosis.thresholds import Thresholds

NON_FINITE = "non_finite"
INVALID_TARGETS = "invalid_targets"


@rule(
    NON_FINITE,
    family="numerics",
    title="Non-finite values",
    precedence=0,
    thresholds=("nonfinite_count", "growth_ratio"),
    signals=(
        S.NONFINITE_LOSS,
        S.NONFINITE_GRADS,
        S.TRAIN_LOSS,
        S.VAL_LOSS,
        S.FEATURE_STAT,
        S.GRAD_NORM_TOTAL,
    ),
)
def non_finite(ev: RunEvidence, t: Thresholds, ctx: Context) -> Finding | None:
    """Non-finite losses, gradients, epoch losses or feature values were counted."""
    counts: dict[str, float] = {}
    for signal in (S.NONFINITE_LOSS, S.NONFINITE_GRADS):
        values = ev.values(signal.name)
        if values is not None:
            counts[signal.name] = float(np.nansum(values))
    for signal in (S.TRAIN_LOSS, S.VAL_LOSS):
        values = ev.epochs.columns.get(signal.name)
        if values is not None and np.isfinite(values).any():
            # A loss that turned non-finite and stayed so diverged; gaps between finite values
            # are epochs without that value.
            last_finite = len(values) - 1 - int(np.argmax(np.isfinite(values[::-1])))
            counts[f"{signal.name} (non-finite epochs)"] = float(len(values) - 1 - last_finite)
    features = [
        k
        for k in ev.summary
        if k.startswith("features/") and k.endswith(("/nan_count", "/inf_count"))
    ]
    if features:
        counts["feature values (nan/inf)"] = float(sum(ev.summary[k] for k in features))
    if not counts:
        raise MissingSignal(S.NONFINITE_LOSS.name)
    bad = {name: count for name, count in counts.items() if count > t.nonfinite_count}
    if not bad:
        return None
    onset = _first_nonfinite_step(ev)
    evidence: dict[str, float | str] = dict(counts)
    growth = None
    if onset is not None:
        evidence["first_nonfinite_step"] = onset
        growth = _growth_before(ev, onset)
    inputs_bad = counts.get("feature values (nan/inf)", 0.0) > t.nonfinite_count
    after_growth = growth is not None and growth >= t.growth_ratio and not inputs_bad
    if after_growth:  # the gradients grew first: the explosion is the cause, NaN its end
        evidence["grad_norm_growth_before"] = growth
        evidence["explained_by"] = "exploding_gradients"
    return Finding(
        code=NON_FINITE,
        severity=Severity.WARNING if after_growth else Severity.CRITICAL,
        title="Non-finite values (NaN/inf) appeared: " + ", ".join(bad),
        evidence=evidence,
        thresholds={"nonfinite_count": t.nonfinite_count},
        fix=(
            f"{sentence(lr_advice(ev, 0.1))}, {clip_advice(ev)} and warm the learning rate "
            "up; check the inputs for NaN/inf (monitor/features.json: nan_count, inf_count) "
            "and take the log of power with a floor (dB features), never log(0)."
        ),
        score=0.5 if after_growth else 1.0,
    )


def _growth_before(ev: RunEvidence, onset: float) -> float | None:
    """How much the total gradient norm grew (windowed medians) before ``onset``."""
    rows = ev.steps.series(S.GRAD_NORM_TOTAL.name)
    if rows is None:
        return None
    values = rows[(rows[:, 0] < onset) & np.isfinite(rows[:, 1]), 1]
    return grad_growth(values) if len(values) >= 8 else None


def _first_nonfinite_step(ev: RunEvidence) -> float | None:
    for signal in (S.NONFINITE_LOSS, S.NONFINITE_GRADS):
        rows = ev.steps.series(signal.name)
        if rows is not None:
            hits = rows[rows[:, 1] > 0]
            if len(hits):
                return float(hits[0, 0])
    return None


@rule(
    INVALID_TARGETS,
    family="numerics",
    title="Invalid targets or loss",
    precedence=1,
    thresholds=("negative_loss",),
    signals=(S.STEP_LOSS, S.TRAIN_LOSS, S.INVALID_TARGETS),
)
def invalid_targets(ev: RunEvidence, t: Thresholds, ctx: Context) -> Finding | None:
    """A training loss below zero (cross-entropy of valid targets cannot be), or soft targets
    that are no probability distribution: the targets or the loss are broken."""
    step_loss = ev.values(S.STEP_LOSS.name)
    epoch_loss = ev.values(S.TRAIN_LOSS.name)
    invalid = ev.values(S.INVALID_TARGETS.name)
    if step_loss is None and epoch_loss is None and invalid is None:
        raise MissingSignal(S.STEP_LOSS.name)
    lowest = min(
        (
            float(finite(v).min())
            for v in (step_loss, epoch_loss)
            if v is not None and len(finite(v))
        ),
        default=float("inf"),
    )
    bad_rows = float(np.nanmax(invalid)) if invalid is not None and len(finite(invalid)) else 0.0
    negative = lowest < -t.negative_loss
    if not (negative or bad_rows > 0):
        return None
    evidence: dict[str, float | str] = {"lowest_training_loss": lowest}
    if step_loss is not None:
        evidence["steps_with_negative_loss"] = float((finite(step_loss) < -t.negative_loss).sum())
    if bad_rows:
        evidence["largest_share_of_invalid_target_rows"] = bad_rows
    what = (
        f"the training loss went below zero ({lowest:.3g})"
        if negative
        else f"up to {bad_rows:.0%} of a batch's soft targets are no probability distribution"
    )
    return Finding(
        code=INVALID_TARGETS,
        severity=Severity.CRITICAL,
        title=f"The targets or the loss are broken: {what}",
        evidence=evidence,
        thresholds={"negative_loss": t.negative_loss},
        fix=(
            "Cross-entropy of valid targets is never negative. Check the targets the loss "
            "gets: class indices in [0, K) for hard labels; for soft labels, label smoothing "
            "or mixup every row must be in [0, 1] and sum to 1 (a mixup weight drawn outside "
            "[0, 1], e.g. from a Beta with a sign error, or weights that do not add up, break "
            "this); also check that the loss is not negated or combined with a term that can "
            "go below zero. " + knob(ev, "Mixup must use a weight in [0, 1].", "mixup_alpha", "0.2")
        ),
        score=1.0,
    )
