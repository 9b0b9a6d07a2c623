"""Runs every rule on a run's evidence and decides the verdict and the primary cause."""

from __future__ import annotations

import numpy as np

from mlflow_audiodiag.diagnosis import findings as codes
from mlflow_audiodiag.diagnosis.evidence import RunEvidence
from mlflow_audiodiag.diagnosis.findings import SYMPTOM_CODES, Diagnosis, Finding, Severity, Verdict
from mlflow_audiodiag.diagnosis.rules import RULES, VAL_ACCURACY, MissingSignal
from mlflow_audiodiag.diagnosis.thresholds import DEFAULT_THRESHOLDS, Thresholds

# Among causes whose scores tie (to 2 decimals) the earlier one here is the primary cause:
# broken numerics and optimization first (they invalidate every other signal), then the input
# pipeline, then the data, then generalization and architecture. Class imbalance and majority
# collapse share a rank in spirit; the imbalance comes first because it names the root cause.
CAUSE_PRECEDENCE: tuple[str, ...] = (
    codes.NON_FINITE,
    codes.NO_WEIGHT_UPDATES,
    codes.EXPLODING_GRADIENTS,
    codes.VANISHING_GRADIENTS,
    codes.LR_TOO_HIGH,
    codes.LR_TOO_LOW,
    codes.UNNORMALIZED_FEATURES,
    codes.NORMALIZATION_MISMATCH,
    codes.MAJORITY_CLASS_COLLAPSE,
    codes.CLASS_IMBALANCE,
    codes.LABEL_NOISE,
    codes.OVERFITTING,
    codes.UNDERFITTING,
    codes.ATTENTION_COLLAPSE,
)
_SCORE_DECIMALS = 2


def diagnose(evidence: RunEvidence, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> Diagnosis:
    """Runs every rule and returns the verdict, the primary cause (the top-ranked cause finding
    of a run that is not healthy), all findings ranked (primary cause first) and the checks
    that were skipped."""
    found: list[Finding] = []
    skipped: dict[str, str] = {}
    for code, rule in RULES.items():
        try:
            finding = rule(evidence, thresholds)
        except MissingSignal as missing:
            skipped[code] = str(missing)
            continue
        if finding is not None:
            found.append(finding)
    ranked = sorted(found, key=_rank_key)
    verdict = _verdict(evidence, thresholds, {f.code: f for f in found})
    causes = [f for f in ranked if f.code not in SYMPTOM_CODES]
    primary = causes[0].code if causes and verdict != "healthy" else None
    return Diagnosis(verdict, primary, ranked, skipped)


def _rank_key(finding: Finding) -> tuple[int, int, float, int]:
    """Causes by severity (critical first), then score (rounded), then precedence; the
    symptom after every cause."""
    if finding.code in SYMPTOM_CODES:
        return (1, 0, 0.0, 0)
    return (
        0,
        -finding.severity.rank,
        -round(finding.score, _SCORE_DECIMALS),
        CAUSE_PRECEDENCE.index(finding.code),
    )


def _verdict(ev: RunEvidence, t: Thresholds, by_code: dict[str, Finding]) -> Verdict:
    exploding = by_code.get(codes.EXPLODING_GRADIENTS)
    if codes.NON_FINITE in by_code or (
        exploding is not None and exploding.evidence.get("loss_blowup") == 1.0
    ):
        return "diverged"
    accuracy = ev.values(VAL_ACCURACY)
    if accuracy is None:
        return "inconclusive"
    accuracy = accuracy[np.isfinite(accuracy)]
    if len(accuracy) < t.min_epochs:
        return "inconclusive"
    if codes.STAGNANT_VALIDATION in by_code or codes.MAJORITY_CLASS_COLLAPSE in by_code:
        return "stagnant"
    converged = accuracy[-t.window_epochs :].mean() >= t.converged_accuracy
    improved = converged or accuracy.max() - accuracy[0] >= t.min_improvement
    critical = any(f.severity is Severity.CRITICAL for f in by_code.values())
    causes = any(code not in SYMPTOM_CODES for code in by_code)
    # Not converged yet and a cause is already visible: too early to call it healthy.
    return "healthy" if improved and not critical and (converged or not causes) else "inconclusive"
