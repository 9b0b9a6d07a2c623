"""Runs the rules family by family, applies what they declare, and decides the verdict and
the primary cause.

    >>> from mlflow_audiodiag.diagnosis.evidence import RunEvidence
    >>> diagnose(RunEvidence()).verdict
    'inconclusive'
"""

from __future__ import annotations

from collections.abc import Sequence

from mlflow_audiodiag.diagnosis.evidence import RunEvidence
from mlflow_audiodiag.diagnosis.findings import Diagnosis, Finding, Severity, Verdict
from mlflow_audiodiag.diagnosis.rules import (
    EXPLODING_GRADIENTS,
    MAJORITY_CLASS_COLLAPSE,
    NON_FINITE,
    RULES,
    STAGNANT_VALIDATION,
    Context,
    MissingSignal,
    NotApplicable,
    Rule,
    ordered,
)
from mlflow_audiodiag.diagnosis.rules.common import learned
from mlflow_audiodiag.diagnosis.thresholds import DEFAULT_THRESHOLDS, Thresholds

_SCORE_DECIMALS = 2
_DEFERRED_CAP = 0.5


def diagnose(
    evidence: RunEvidence,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    rules: Sequence[Rule] | None = None,
) -> Diagnosis:
    """Runs every rule (the built-in :data:`RULES` unless ``rules`` is given) on a run's
    evidence and returns the verdict, the primary cause (the top-ranked cause of a run that is
    not healthy), all findings ranked (primary cause first), the checks skipped for a missing
    signal and those that do not apply."""
    chosen = ordered(list(rules if rules is not None else RULES))
    context = Context()
    skipped: dict[str, str] = {}
    not_applicable: dict[str, str] = {}
    by_code = {r.code: r for r in chosen}
    for current in chosen:
        if current.symptom:
            _apply_deference(context, by_code)
        try:
            finding = current(evidence, thresholds, context)
        except MissingSignal as missing:
            skipped[current.code] = str(missing)
            continue
        except NotApplicable as reason:
            not_applicable[current.code] = str(reason)
            continue
        if finding is not None:
            context.found[current.code] = finding
    _apply_deference(context, by_code)
    found = context.found
    precedence = {r.code: i for i, r in enumerate(chosen)}
    ranked = sorted(found.values(), key=lambda f: _rank_key(f, by_code, precedence))
    verdict = _verdict(evidence, thresholds, found, by_code)
    causes = [f for f in ranked if not by_code[f.code].symptom and f.severity != Severity.INFO]
    primary = causes[0].code if causes and verdict != "healthy" else None
    return Diagnosis(verdict, primary, ranked, skipped, not_applicable)


def _apply_deference(context: Context, by_code: dict[str, Rule]) -> None:
    """Drops (or caps to info) a finding when a cause it defers to fired."""
    for code in list(context.found):
        declared = by_code.get(code)
        finding = context.found.get(code)
        if declared is None or finding is None or not declared.defers_to:
            continue
        upstream = context.fired(*declared.upstream(by_code.values()))
        if not upstream:
            continue
        if declared.deference == "suppress":
            del context.found[code]
        elif finding.severity != Severity.INFO or finding.score > _DEFERRED_CAP:
            context.found[code] = Finding(
                code=finding.code,
                severity=Severity.INFO,
                title=finding.title,
                evidence={**finding.evidence, "explained_by": ", ".join(upstream)},
                thresholds=finding.thresholds,
                fix=finding.fix,
                score=min(finding.score, _DEFERRED_CAP),
            )


def _rank_key(
    finding: Finding, by_code: dict[str, Rule], precedence: dict[str, int]
) -> tuple[int, int, float, int]:
    """Causes by severity (critical first), then score (rounded), then engine order; the
    symptom after every cause."""
    if by_code[finding.code].symptom:
        return (1, 0, 0.0, 0)
    return (
        0,
        -finding.severity.rank,
        -round(finding.score, _SCORE_DECIMALS),
        precedence[finding.code],
    )


def _verdict(
    ev: RunEvidence, t: Thresholds, found: dict[str, Finding], by_code: dict[str, Rule]
) -> Verdict:
    exploding = found.get(EXPLODING_GRADIENTS)
    if NON_FINITE in found or (
        exploding is not None and exploding.evidence.get("loss_blowup") == 1.0
    ):
        return "diverged"
    if ev.n_epochs < t.min_epochs:
        return "inconclusive"
    collapse = found.get(MAJORITY_CLASS_COLLAPSE)
    symptom = found.get(STAGNANT_VALIDATION)
    for finding in (collapse, symptom):
        if finding is not None and finding.severity is not Severity.INFO:
            return "stagnant"
    causes = [f for c, f in found.items() if not by_code[c].symptom]
    critical = any(f.severity is Severity.CRITICAL for f in causes)
    # Still improving, but a cause already shows: too early to call it healthy.
    open_cause = any(
        f.severity is Severity.WARNING and by_code[f.code].plateau_cause for f in causes
    )
    if critical or open_cause or not learned(ev, t)[0]:
        return "inconclusive"
    return "healthy"
