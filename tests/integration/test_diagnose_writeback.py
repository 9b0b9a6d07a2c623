"""Diagnosis written back to real runs in a real sqlite store: tags, description, metrics,
artifacts; idempotent; and the ``diagnose`` command."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from support import processes

from mlflow_audiodiag import schema
from mlflow_audiodiag.reporting.writeback import NOTE_START, diagnose_run

pytestmark = pytest.mark.integration


def _log_stagnant_run(run_name: str) -> str:
    """A run whose validation accuracy sits at the majority fraction while predictions
    collapse onto one class."""
    with mlflow.start_run(run_name=run_name) as run:
        mlflow.set_tag(schema.TAG_NOTE, "My own notes about this run.")
        mlflow.log_metrics(
            {
                "labels/train/majority_fraction": 0.8,
                "labels/train/imbalance_ratio": 16.0,
                "labels/val/majority_fraction": 0.8,
                "data/val_majority_accuracy": 0.8,
            },
            step=0,
        )
        for epoch in range(1, 13):
            mlflow.log_metrics(
                {
                    "train/loss": 0.5 - 0.001 * epoch,
                    "val/loss": 0.5,
                    "train/accuracy": 0.8,
                    "val/accuracy": 0.8,
                    "val/balanced_accuracy": 0.2,
                    "val_pred/top_class_fraction": 1.0,
                },
                step=epoch,
            )
    return run.info.run_id


def test_diagnosis_is_written_back_and_rewriting_replaces_it(tracking_uri) -> None:
    run_id = _log_stagnant_run('<script>alert("x")</script> run')
    client = MlflowClient()
    first = diagnose_run(run_id)
    second = diagnose_run(run_id)
    assert first.to_dict() == second.to_dict()
    assert first.verdict == "stagnant"

    tags = client.get_run(run_id).data.tags
    assert tags[schema.TAG_VERDICT] == "stagnant"
    assert tags[schema.TAG_PRIMARY_CAUSE] == first.primary_cause
    assert first.primary_cause in ("class_imbalance", "majority_class_collapse")
    shown = {f.code for f in first.findings if f.severity != "info"}
    assert set(tags[schema.TAG_FINDINGS].split(",")) == shown
    note = tags[schema.TAG_NOTE]
    assert note.startswith("My own notes about this run.")
    assert note.count(NOTE_START) == 1
    assert first.finding(first.primary_cause).fix.split()[0] in note

    found = client.search_runs(
        [client.get_run(run_id).info.experiment_id],
        filter_string=f"tags.`{schema.TAG_VERDICT}` = 'stagnant'",
    )
    assert [r.info.run_id for r in found] == [run_id]

    metrics = client.get_run(run_id).data.metrics
    assert metrics[schema.METRIC_DIAGNOSIS_FINDINGS] == len(shown)

    paths = {a.path for a in client.list_artifacts(run_id, schema.ARTIFACT_DIR_DIAGNOSIS)}
    assert {schema.ARTIFACT_FINDINGS, schema.ARTIFACT_REPORT} <= paths
    stored = json.loads(
        Path(client.download_artifacts(run_id, schema.ARTIFACT_FINDINGS)).read_text()
    )
    assert stored == first.to_dict()
    report = Path(client.download_artifacts(run_id, schema.ARTIFACT_REPORT)).read_text()
    assert "<script" not in report
    assert "&lt;script&gt;" in report


def test_diagnose_command_prints_json_and_fails_on_request(tracking_uri, tmp_path) -> None:
    run_id = _log_stagnant_run("plain")
    command = [sys.executable, "-m", "mlflow_audiodiag.cli.main", "diagnose", run_id]
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    done = processes.run([*command, "--json"], env=env, timeout_s=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["verdict"] == "stagnant"
    failing = processes.run(
        [*command, "--fail-on", "stagnant", "--no-write"], env=env, timeout_s=120, cwd=tmp_path
    )
    assert failing.returncode == 1
    assert "stagnant" in failing.stdout
    unknown = "0123456789abcdef0123456789abcdef"
    missing = processes.run(
        [sys.executable, "-m", "mlflow_audiodiag.cli.main", "diagnose", unknown],
        env=env, timeout_s=120, cwd=tmp_path,
    )  # fmt: skip
    assert missing.returncode == 2
    assert "0123456789abcdef0123456789abcdef" in missing.stderr


def test_mlflow_discovers_the_evaluator_plugin_and_evaluate_diagnoses_the_run(
    tracking_uri,
) -> None:
    import pandas as pd
    from mlflow.models.evaluation.evaluator_registry import _model_evaluation_registry

    assert _model_evaluation_registry.is_registered("audiodiag")  # loaded from entry points
    run_id = _log_stagnant_run("evaluated")
    with mlflow.start_run(run_id=run_id):
        result = mlflow.models.evaluate(
            model=None,
            data=pd.DataFrame({"x": [0.0]}),
            model_type="audiodiag",
            evaluators=["audiodiag"],
        )
    assert result.metrics[schema.METRIC_DIAGNOSIS_FINDINGS] >= 2
    tags = MlflowClient().get_run(run_id).data.tags
    assert tags[schema.TAG_VERDICT] == "stagnant"


def test_a_new_diagnosis_replaces_the_scores_and_count_of_an_earlier_one(tracking_uri) -> None:
    from mlflow_audiodiag.diagnosis.evidence import load_evidence
    from mlflow_audiodiag.diagnosis.findings import Diagnosis, Finding, Severity
    from mlflow_audiodiag.reporting.writeback import write_diagnosis

    run_id = _log_stagnant_run("rediagnosed")
    client = MlflowClient()
    evidence = load_evidence(client, run_id)
    old = Finding("label_noise", Severity.CRITICAL, "t", {}, {}, "f", score=0.7)
    write_diagnosis(client, run_id, Diagnosis("stagnant", "label_noise", [old]), evidence)
    write_diagnosis(client, run_id, Diagnosis("healthy", None, []), evidence)
    run = client.get_run(run_id)
    assert run.data.tags[schema.TAG_VERDICT] == "healthy"
    assert run.data.metrics[schema.METRIC_DIAGNOSIS_FINDINGS] == 0
    assert run.data.metrics[schema.DIAGNOSIS_SCORE_PREFIX + "label_noise"] == 0  # not stale
