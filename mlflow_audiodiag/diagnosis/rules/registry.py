"""The registry of diagnosis rules: each rule declares what it is next to its check.

A rule is a function ``check(evidence, thresholds, context) -> Finding | None`` registered with
:func:`rule`, which records its finding code, family, precedence, the thresholds and signals
it reads, and the causes it defers to. The engine runs the families in :data:`FAMILIES` order
and applies the declarations; the list of finding codes, the precedence and the README table
are derived from here.

    >>> from mlflow_audiodiag.diagnosis.rules import RULES
    >>> RULES[0].family
    'numerics'
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

from mlflow_audiodiag.diagnosis.evidence import RunEvidence
from mlflow_audiodiag.diagnosis.findings import Finding, Severity
from mlflow_audiodiag.diagnosis.thresholds import Thresholds
from mlflow_audiodiag.signals import Signal

# Families in the order the engine runs them: broken numerics and optimization first (they
# invalidate every other signal), then the input pipeline, the data, generalization and the
# architecture; the symptom last, so that it can see the causes.
FAMILIES = (
    "numerics",
    "optimization",
    "input",
    "data",
    "generalization",
    "architecture",
    "symptom",
)
Family = Literal[
    "numerics", "optimization", "input", "data", "generalization", "architecture", "symptom"
]
Deference = Literal["suppress", "cap"]


class MissingSignal(Exception):
    """A check cannot run: the signal ``name`` was not recorded, or too little of it."""

    def __init__(self, name: str, reason: str = "not recorded") -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


class NotApplicable(Exception):
    """A check does not apply to this run (e.g. attention checks on a CNN)."""


@dataclass
class Context:
    """What the engine knows when a rule runs: the findings of the families before it."""

    found: dict[str, Finding] = field(default_factory=dict)

    def fired(self, *codes: str, at_least: Severity = Severity.WARNING) -> list[str]:
        """Which of ``codes`` fired with at least ``at_least`` severity."""
        return [
            c for c in codes if c in self.found and self.found[c].severity.rank >= at_least.rank
        ]


Check = Callable[[RunEvidence, Thresholds, Context], Finding | None]


@dataclass(frozen=True)
class Rule:
    """One finding code's check and what it declares about itself.

    ``defers_to``: causes that explain this finding better, by code or by family (a family
    name stands for every rule of that family, those added later included); when one of them
    fired (warning or worse) the engine drops this finding (``deference="suppress"``) or
    caps its score and lowers it to info (``"cap"``). ``plateau_cause``: when the finding
    fires on a run whose validation learned and then went flat, it makes that plateau a
    problem (stagnant) rather than convergence. ``symptom``: it describes the problem, not a cause.
    """

    code: str
    family: Family
    title: str
    check: Check
    precedence: int
    thresholds: tuple[str, ...]
    signals: tuple[Signal, ...]
    defers_to: tuple[str, ...] = ()
    deference: Deference = "suppress"
    plateau_cause: bool = True
    symptom: bool = False

    def __call__(
        self, evidence: RunEvidence, thresholds: Thresholds, context: Context | None = None
    ) -> Finding | None:
        return self.check(evidence, thresholds, context or Context())

    def upstream(self, rules: Iterable[Rule]) -> tuple[str, ...]:
        """The codes this rule defers to among ``rules``, families expanded (itself left out).

        >>> from mlflow_audiodiag.diagnosis.rules import RULES, REGISTRY
        >>> "lr_too_high" in REGISTRY["underfitting"].upstream(RULES)
        True
        """
        named = set(self.defers_to)
        return tuple(
            r.code for r in rules if r.code != self.code and (r.code in named or r.family in named)
        )


REGISTRY: dict[str, Rule] = {}


def rule(
    code: str,
    *,
    family: Family,
    title: str,
    precedence: int,
    thresholds: tuple[str, ...],
    signals: tuple[Signal, ...],
    defers_to: tuple[str, ...] = (),
    deference: Deference = "suppress",
    plateau_cause: bool = True,
    symptom: bool = False,
) -> Callable[[Check], Rule]:
    """Registers the decorated check as the rule for ``code`` (once per code)."""

    def register(check: Check) -> Rule:
        if code in REGISTRY:
            raise ValueError(f"finding code {code!r} is registered twice")
        registered = Rule(
            code=code,
            family=family,
            title=title,
            check=check,
            precedence=precedence,
            thresholds=thresholds,
            signals=signals,
            defers_to=defers_to,
            deference=deference,
            plateau_cause=plateau_cause,
            symptom=symptom,
        )
        REGISTRY[code] = registered
        return registered

    return register


def ordered(rules: list[Rule] | tuple[Rule, ...]) -> list[Rule]:
    """Rules in engine order: by family, then by precedence."""
    return sorted(rules, key=lambda r: (FAMILIES.index(r.family), r.precedence))
