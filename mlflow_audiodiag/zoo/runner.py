"""Runs zoo scenarios as MLflow runs and tabulates what the evaluator diagnosed."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import mlflow

from mlflow_audiodiag import schema
from mlflow_audiodiag.training.run import train
from mlflow_audiodiag.zoo.scenarios import SCENARIOS, scenario_config

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ZooResult:
    scenario: str
    expected_cause: str | None
    run_id: str
    verdict: str | None
    primary_cause: str | None
    best_val_accuracy: float

    @property
    def matches(self) -> bool:
        if self.expected_cause is None:
            return self.verdict == "healthy"
        return self.primary_cause == self.expected_cause


def run_scenario(name: str, nested: bool = False, **overrides: Any) -> ZooResult:
    """Trains scenario ``name`` in a run named ``zoo-<name>`` (inside the active run when
    ``nested``; the run ``mlflow run`` created otherwise, if any) and diagnoses it."""
    scenario = SCENARIOS[name]
    config = scenario_config(name, **overrides)
    with mlflow.start_run(run_name=f"zoo-{name}", nested=nested) as run:
        mlflow.set_tags(
            {
                "mlflow.runName": f"zoo-{name}",
                schema.TAG_ZOO_SCENARIO: name,
                schema.TAG_ZOO_EXPECTED: scenario.expected_cause or "none",
                schema.TAG_ZOO_FAULT: scenario.fault,
            }
        )
        result = train(config)
    logger.info("zoo %s: %s (%s)", name, result.verdict, result.primary_cause)
    return ZooResult(
        name,
        scenario.expected_cause,
        run.info.run_id,
        result.verdict,
        result.primary_cause,
        result.best_val_accuracy,
    )


def run_zoo(names: list[str], **overrides: Any) -> list[ZooResult]:
    """Every scenario in ``names`` as a child run of one parent run that gets the table."""
    with mlflow.start_run(run_name="zoo") as parent:
        mlflow.set_tag(schema.TAG_ZOO_SCENARIO, "all" if len(names) > 1 else names[0])
        results = [run_scenario(name, nested=True, **overrides) for name in names]
        mlflow.log_text(confusion_markdown(results), schema.ARTIFACT_ZOO_TABLE)
        mlflow.log_metric(
            schema.METRIC_ZOO_MATCHED, sum(r.matches for r in results) / max(len(results), 1)
        )
    del parent
    return results


def confusion_markdown(results: list[ZooResult]) -> str:
    """Scenario x diagnosed cause: one row per scenario, the diagnosed cause marked
    (``none``: no primary cause, as a healthy run should have)."""
    expected = [r.expected_cause or "none" for r in results]
    extra = sorted({r.primary_cause or "none" for r in results} - set(expected))
    causes = list(dict.fromkeys(expected)) + extra  # scenario order: matches on the diagonal
    header = "| scenario | verdict | " + " | ".join(causes) + " | match |"
    lines = [header, "|" + "---|" * (len(causes) + 3)]
    for r in results:
        cells = ["**x**" if (r.primary_cause or "none") == c else "" for c in causes]
        mark = "yes" if r.matches else "NO"
        lines.append(f"| {r.scenario} | {r.verdict} | " + " | ".join(cells) + f" | {mark} |")
    return "\n".join(lines) + "\n"
