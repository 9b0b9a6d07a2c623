"""The symptom: validation accuracy that does not move, judged against the run's own
majority baseline, its sampling noise, its best epoch and the causes found."""

from __future__ import annotations

from mlflow_audiodiag import signals as S
from mlflow_audiodiag.diagnosis.evidence import RunEvidence
from mlflow_audiodiag.diagnosis.findings import Finding, Severity
from mlflow_audiodiag.diagnosis.rules.common import (
    annealed,
    is_flat,
    learned,
    plateau_rows,
    require_epochs,
    score,
    val_loss_falling,
)
from mlflow_audiodiag.diagnosis.rules.registry import REGISTRY, Context, rule
from mlflow_audiodiag.diagnosis.thresholds import Thresholds

STAGNANT_VALIDATION = "stagnant_validation"


@rule(
    STAGNANT_VALIDATION,
    family="symptom",
    title="Stagnant validation",
    precedence=0,
    thresholds=(
        "min_epochs",
        "window_epochs",
        "flat_range",
        "flat_slope",
        "flat_noise_sigmas",
        "repeat_fraction",
        "min_improvement",
        "val_loss_improving",
        "lr_active_fraction",
    ),
    signals=(
        S.VAL_ACCURACY,
        S.VAL_LOSS,
        S.MAJORITY_BASELINE,
        S.LABEL_N,
        S.LR,
        S.EPOCH_LAST_STEP,
    ),
    symptom=True,
)
def stagnant_validation(ev: RunEvidence, t: Thresholds, ctx: Context) -> Finding | None:
    """Validation never learned (its accuracy never rose clearly above the majority baseline,
    its loss never fell clearly) and went flat (critical), or it learned and then went flat
    while a cause fired (warning); flat after learning with no cause is convergence (info).
    Flat means: by range and slope within the sampling noise of the val set, or exactly
    repeated, over the last epochs at an active learning rate, with the val loss no longer
    falling."""
    acc = require_epochs(ev, S.VAL_ACCURACY, t)
    val_learned, figures = learned(ev, t)
    rows = plateau_rows(ev, S.VAL_ACCURACY, t)
    flat, shape = is_flat(ev, t, rows)
    falling = val_loss_falling(ev, t)
    if falling is not None:
        shape["val_loss_fall_per_epoch"] = falling
        if falling >= t.val_loss_improving:
            flat = False  # the loss still improves: not a plateau yet
    if not flat:
        return None
    causes = [
        code
        for code, finding in ctx.found.items()
        if finding.severity != Severity.INFO
        and code in REGISTRY
        and REGISTRY[code].plateau_cause
        and not REGISTRY[code].symptom
    ]
    window = f"epochs {rows[0, 0]:g}-{rows[-1, 0]:g}"
    level = float(rows[:, 1].mean())
    evidence: dict[str, float | str] = {
        "epochs": float(len(acc)),
        "window": window,
        "val_accuracy_mean": level,
        "first_val_accuracy": float(acc[0]),
        "best_val_accuracy": float(acc.max()),
        **figures,
        **shape,
    }
    if annealed(ev, t):
        evidence["lr_annealed"] = "yes: the schedule explains a late plateau"
    if not val_learned:
        severity = Severity.CRITICAL
        title = (
            f"Validation accuracy never rises above the majority baseline "
            f"({figures['baseline']:.3f}): {level:.3f} over {window}"
        )
    elif causes:
        severity = Severity.WARNING
        title = f"Validation accuracy is flat at {level:.3f} over {window}"
        evidence["causes"] = ", ".join(causes)
    else:
        severity = Severity.INFO
        title = f"Converged: validation accuracy settled at {level:.3f} over {window}"
    return Finding(
        code=STAGNANT_VALIDATION,
        severity=severity,
        title=title,
        evidence=evidence,
        thresholds={
            "flat_range": float(shape["flat_range_limit"]),
            "flat_slope": float(shape["flat_slope_limit"]),
            "repeat_fraction": t.repeat_fraction,
            "min_improvement": t.min_improvement,
        },
        fix=(
            "This is the symptom; the cause findings ranked with it say why. Judge progress "
            "against the majority baseline (data/val_majority_accuracy) and by "
            "val/balanced_accuracy and val/macro_f1 as well."
        ),
        score=score(1.0 if not val_learned else 0.5),
    )
