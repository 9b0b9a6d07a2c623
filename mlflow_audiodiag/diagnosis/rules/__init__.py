"""Every diagnosis rule, registered by family (see :mod:`.registry`).

Importing this package registers the built-in rules; :data:`RULES` lists them in engine order
and :data:`FINDING_CODES` their codes. A new finding is one function with the
:func:`~.registry.rule` decorator in a family module (or a module of your own, passed to
``diagnose(..., rules=[*RULES, my_rule])``), plus its test and fault-zoo scenario.
"""

from __future__ import annotations

from mlflow_audiodiag.diagnosis.rules import (  # noqa: F401 - registers the rules
    architecture,
    data,
    generalization,
    inputs,
    numerics,
    optimization,
    symptom,
)
from mlflow_audiodiag.diagnosis.rules.architecture import ATTENTION_COLLAPSE
from mlflow_audiodiag.diagnosis.rules.data import (
    CLASS_IMBALANCE,
    LABEL_NOISE,
    MAJORITY_CLASS_COLLAPSE,
)
from mlflow_audiodiag.diagnosis.rules.generalization import OVERFITTING, UNDERFITTING
from mlflow_audiodiag.diagnosis.rules.inputs import (
    NORMALIZATION_MISMATCH,
    UNNORMALIZED_FEATURES,
)
from mlflow_audiodiag.diagnosis.rules.numerics import INVALID_TARGETS, NON_FINITE
from mlflow_audiodiag.diagnosis.rules.optimization import (
    EXPLODING_GRADIENTS,
    LR_TOO_HIGH,
    LR_TOO_LOW,
    NO_WEIGHT_UPDATES,
    VANISHING_GRADIENTS,
    WEIGHT_DECAY_TOO_HIGH,
)
from mlflow_audiodiag.diagnosis.rules.registry import (
    FAMILIES,
    REGISTRY,
    Context,
    MissingSignal,
    NotApplicable,
    Rule,
    ordered,
    rule,
)
from mlflow_audiodiag.diagnosis.rules.symptom import STAGNANT_VALIDATION

RULES: tuple[Rule, ...] = tuple(ordered(list(REGISTRY.values())))
FINDING_CODES: tuple[str, ...] = tuple(r.code for r in RULES)
SYMPTOM_CODES: frozenset[str] = frozenset(r.code for r in RULES if r.symptom)
# Among causes whose severity and score tie, the earlier one here is the primary cause.
CAUSE_PRECEDENCE: tuple[str, ...] = tuple(r.code for r in RULES if not r.symptom)

__all__ = [
    "ATTENTION_COLLAPSE",
    "CAUSE_PRECEDENCE",
    "CLASS_IMBALANCE",
    "EXPLODING_GRADIENTS",
    "FAMILIES",
    "FINDING_CODES",
    "INVALID_TARGETS",
    "LABEL_NOISE",
    "LR_TOO_HIGH",
    "LR_TOO_LOW",
    "MAJORITY_CLASS_COLLAPSE",
    "NON_FINITE",
    "NORMALIZATION_MISMATCH",
    "NO_WEIGHT_UPDATES",
    "OVERFITTING",
    "REGISTRY",
    "RULES",
    "STAGNANT_VALIDATION",
    "SYMPTOM_CODES",
    "UNDERFITTING",
    "UNNORMALIZED_FEATURES",
    "VANISHING_GRADIENTS",
    "WEIGHT_DECAY_TOO_HIGH",
    "Context",
    "MissingSignal",
    "NotApplicable",
    "Rule",
    "rule",
]


def docs_table() -> str:
    """The rules as a Markdown table (the README embeds it)."""
    rows = ["| finding | family | what it detects | defers to |", "|---|---|---|---|"]
    for r in RULES:
        doc = " ".join((r.check.__doc__ or "").split())
        defers = (
            ", ".join(f"every {c} cause" if c in FAMILIES else f"`{c}`" for c in r.defers_to) or "-"
        )
        rows.append(f"| `{r.code}` | {r.family} | {doc} | {defers} |")
    return "\n".join(rows)
