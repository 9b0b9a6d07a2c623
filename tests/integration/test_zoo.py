"""The fault zoo: every scenario really produces its pattern and is diagnosed as expected."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mlflow_audiodiag import schema
from mlflow_audiodiag.cli.main import main
from mlflow_audiodiag.diagnosis import rules as codes
from mlflow_audiodiag.zoo.runner import ZooResult, confusion_markdown, run_scenario, run_zoo
from mlflow_audiodiag.zoo.scenarios import HEALTHY, SCENARIOS, scenario_options

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_there_is_one_scenario_per_cause_plus_healthy() -> None:
    causes = set(codes.FINDING_CODES) - codes.SYMPTOM_CODES
    assert {s.expected_cause for s in SCENARIOS.values()} == causes | {None}
    assert all(s.name == (s.expected_cause or HEALTHY) for s in SCENARIOS.values())
    with pytest.raises(KeyError, match="lr_too_high"):
        scenario_options("lr_to_high")


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario_is_diagnosed_with_its_cause(name: str, tracking_uri: str) -> None:
    result = run_scenario(name)
    run = MlflowClient().get_run(result.run_id)
    tags = run.data.tags
    assert tags[schema.TAG_ZOO_SCENARIO] == name
    assert tags[schema.TAG_VERDICT] == result.verdict
    found = tags[schema.TAG_FINDINGS].split(",")
    if name == HEALTHY:
        assert result.verdict == "healthy", found
        assert codes.STAGNANT_VALIDATION not in found
        assert tags[schema.TAG_PRIMARY_CAUSE] == "none"
    else:
        assert result.primary_cause == name, (result.verdict, found)
        assert tags[schema.TAG_PRIMARY_CAUSE] == name
        note = tags[schema.TAG_NOTE]
        assert name in note and "Fix" in note  # cause, evidence and fix on the run page
    assert result.matches


def test_confusion_table_marks_the_diagnosed_cause() -> None:
    results = [
        ZooResult("lr_too_low", "lr_too_low", "r1", "stagnant", "lr_too_low", 0.1),
        ZooResult("healthy", None, "r2", "healthy", None, 0.95),
        ZooResult("overfitting", "overfitting", "r3", "stagnant", "underfitting", 0.7),
    ]
    table = confusion_markdown(results).splitlines()
    # Columns follow the scenarios (matches on the diagonal), then other diagnosed causes.
    assert table[0] == (
        "| scenario | verdict | lr_too_low | none | overfitting | underfitting | match |"
    )
    assert table[1] == "|---|---|---|---|---|---|---|"
    assert table[2] == "| lr_too_low | stagnant | **x** |  |  |  | yes |"
    assert table[3] == "| healthy | healthy |  | **x** |  |  | yes |"
    assert table[4] == "| overfitting | stagnant |  |  |  | **x** | NO |"


def test_zoo_cli_runs_children_under_a_parent_with_the_table(tracking_uri, capsys) -> None:
    results = run_zoo(["lr_too_low", "no_weight_updates"])
    client = MlflowClient()
    parents = client.search_runs(
        [client.get_experiment_by_name("Default").experiment_id],
        filter_string=f"tags.`{schema.TAG_ZOO_SCENARIO}` = 'all'",
    )
    (parent,) = parents
    children = {r.run_id for r in results}
    for run_id in children:
        assert client.get_run(run_id).data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert parent.data.metrics[schema.METRIC_ZOO_MATCHED] == 1.0
    table = client.download_artifacts(parent.info.run_id, schema.ARTIFACT_ZOO_TABLE)
    assert "| lr_too_low | stagnant | **x** |" in Path(table).read_text()

    assert main(["zoo", "--scenario", "no_weight_updates"]) == 0
    out = capsys.readouterr().out
    assert "no_weight_updates" in out and "Fix" in out
    assert main(["zoo", "--scenario", "nope"]) == 2
    assert "unknown zoo scenario 'nope'" in capsys.readouterr().err
