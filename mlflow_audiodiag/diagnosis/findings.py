"""Findings (one diagnosed problem with its evidence and fix) and the diagnosis of a run."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, Literal, get_args

Verdict = Literal["healthy", "stagnant", "diverged", "inconclusive"]
VERDICTS: Final[tuple[str, ...]] = get_args(Verdict)


class Severity(StrEnum):
    """How much a finding matters, in increasing order."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return list(Severity).index(self)


EvidenceValue = float | str


@dataclass(frozen=True)
class Finding:
    """One diagnosed problem.

    ``evidence`` holds the measured values (non-finite numbers are stored as the strings
    ``"nan"``, ``"inf"``, ``"-inf"`` so the finding stays valid JSON), ``thresholds`` the limits
    they were compared with, ``fix`` what to change, and ``score`` (0..1) how strongly the
    evidence supports the finding; it ranks the causes.
    """

    code: str
    severity: Severity
    title: str
    evidence: dict[str, EvidenceValue]
    thresholds: dict[str, float]
    fix: str
    score: float

    def __post_init__(self) -> None:
        if not self.code or not self.code.replace("_", "").isalnum():
            raise ValueError(f"a finding code is a snake_case word, got {self.code!r}")
        if not 0.0 <= self.score <= 1.0:
            raise ValueError(f"score must be in [0, 1], got {self.score}")
        object.__setattr__(self, "severity", Severity(self.severity))
        object.__setattr__(self, "score", float(self.score))
        object.__setattr__(
            self, "evidence", {k: _evidence_value(v) for k, v in self.evidence.items()}
        )
        object.__setattr__(self, "thresholds", {k: float(v) for k, v in self.thresholds.items()})

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "severity": self.severity.value,
            "title": self.title,
            "evidence": dict(self.evidence),
            "thresholds": dict(self.thresholds),
            "fix": self.fix,
            "score": self.score,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Finding:
        return cls(
            code=data["code"],
            severity=Severity(data["severity"]),
            title=data["title"],
            evidence=dict(data["evidence"]),
            thresholds=dict(data["thresholds"]),
            fix=data["fix"],
            score=data["score"],
        )


@dataclass
class Diagnosis:
    """The verdict on a run, its primary cause (a finding code, or ``None``), every finding
    (primary cause first), the checks that could not run with the signal each lacked, and the
    checks that do not apply to this model (no attention layers, say)."""

    verdict: Verdict
    primary_cause: str | None
    findings: list[Finding] = field(default_factory=list)
    skipped_checks: dict[str, str] = field(default_factory=dict)
    not_applicable: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}, got {self.verdict!r}")

    def finding(self, code: str) -> Finding | None:
        """The finding with ``code``, if it fired."""
        return next((f for f in self.findings if f.code == code), None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; :meth:`from_dict` reads it back."""
        return {
            "verdict": self.verdict,
            "primary_cause": self.primary_cause,
            "findings": [f.to_dict() for f in self.findings],
            "skipped_checks": dict(self.skipped_checks),
            "not_applicable": dict(self.not_applicable),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Diagnosis:
        return cls(
            verdict=data["verdict"],
            primary_cause=data.get("primary_cause"),
            findings=[Finding.from_dict(f) for f in data.get("findings", [])],
            skipped_checks=dict(data.get("skipped_checks", {})),
            not_applicable=dict(data.get("not_applicable", {})),
        )


def _evidence_value(value: Any) -> EvidenceValue:
    if isinstance(value, str):
        return value
    number = float(value)
    return number if math.isfinite(number) else str(number)
