"""``load_evidence`` against a real sqlite-backed MLflow store: the monitor's tables first, the
run's metrics (under contract names or common aliases) where the tables have nothing."""

from __future__ import annotations

import math

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from mlflow_audiodiag import schema
from mlflow_audiodiag.diagnosis.engine import diagnose
from mlflow_audiodiag.diagnosis.evidence import load_evidence

pytestmark = pytest.mark.integration


def test_the_monitor_tables_are_read_with_groups_in_forward_order(tracking_uri, tmp_path) -> None:
    steps = pd.DataFrame(
        {
            "step": [3, 1, 2],
            "grad_norm/head": [3.0, 1.0, 2.0],
            "grad_norm/stem": [1.0, 1.0, 1.0],
            "grad_norm/total": [2.0, 2.0, 2.0],
            "lr/0": [1e-3] * 3,
        }
    )
    epochs = pd.DataFrame({"epoch": [1, 2, 3], "val/accuracy": [0.2, 0.4, 0.5]})
    (tmp_path / "monitor").mkdir()
    steps.to_parquet(tmp_path / "monitor" / "steps.parquet")
    epochs.to_parquet(tmp_path / "monitor" / "epochs.parquet")
    (tmp_path / "monitor" / "summary.json").write_text('{"labels/train/imbalance_ratio": 4.0}')
    (tmp_path / "monitor" / "parameter_groups.json").write_text('{"order": ["stem", "head"]}')
    with mlflow.start_run() as active:
        mlflow.log_artifacts(str(tmp_path / "monitor"), "monitor")
        mlflow.log_params({"optim.lr": 0.001})
        mlflow.log_metric("grad_norm/total", 99.0, step=1)  # downsampled copy: table wins
        running = load_evidence(MlflowClient(), active.info.run_id)
        assert running.status == "RUNNING"
    ev = load_evidence(MlflowClient(), active.info.run_id)
    assert ev.status == "FINISHED" and ev.params == {"optim.lr": "0.001"}
    assert ev.series("grad_norm/head").tolist() == [[1, 1.0], [2, 2.0], [3, 3.0]]
    assert ev.series("grad_norm/total")[:, 1].tolist() == [2.0, 2.0, 2.0]
    assert ev.series("val/accuracy").tolist() == [[1, 0.2], [2, 0.4], [3, 0.5]]
    assert ev.latest("labels/train/imbalance_ratio") == 4.0
    from mlflow_audiodiag import signals

    assert ev.groups(signals.GRAD_NORM) == ["stem", "head"]  # total is not a group
    assert ev.n_epochs == 3


def test_runs_of_other_loggers_are_read_from_their_metrics_and_aliases(tracking_uri) -> None:
    with mlflow.start_run() as active:
        run_id = active.info.run_id
        for step, (acc, loss) in enumerate([(0.2, 2.0), (0.4, 1.5), (0.5, 1.2)], start=1):
            mlflow.log_metric("val_acc", acc, step=step * 100)  # Lightning: global steps
            mlflow.log_metric("eval_loss", loss, step=step * 100)
            mlflow.log_metric("train/loss", 2.0 / step, step=step)
        for step in (3, 1, 2):  # logged out of order
            mlflow.log_metric("grad_norm/head", float(step), step=step)
        mlflow.log_metric("grad_norm/embedding", 5.0, step=1)
        mlflow.log_metric("grad_norm/embedding", 7.0, step=1)  # same step again: last wins
        mlflow.log_metric("train/loss", math.nan, step=4)
        mlflow.log_metric("data/val_majority_accuracy", 0.125, step=0)
    ev = load_evidence(MlflowClient(), run_id)
    assert ev.series("val/accuracy").tolist() == [[1, 0.2], [2, 0.4], [3, 0.5]]
    assert ev.series("val/loss").tolist() == [[1, 2.0], [2, 1.5], [3, 1.2]]
    assert ev.series("grad_norm/head").tolist() == [[1, 1.0], [2, 2.0], [3, 3.0]]
    assert ev.series("grad_norm/embedding").tolist() == [[1, 7.0]]
    assert math.isnan(ev.epochs.columns["train/loss"][-1])
    assert ev.latest("data/val_majority_accuracy") == 0.125
    assert diagnose(ev).verdict == "diverged"  # a NaN epoch loss is a divergence


@pytest.mark.parametrize("status", ["FAILED", "KILLED"])
def test_load_evidence_of_ended_runs_without_signals(tracking_uri: str, status: str) -> None:
    with mlflow.start_run() as active:
        run_id = active.info.run_id
    MlflowClient().set_terminated(run_id, status=status)
    ev = load_evidence(MlflowClient(), run_id)
    assert ev.status == status
    assert (ev.epochs.columns, ev.steps.columns, ev.summary, ev.params) == ({}, {}, {}, {})
    result = diagnose(ev)
    assert result.verdict == "inconclusive"
    assert result.findings == [] and result.skipped_checks
    assert schema.TAG_VERDICT not in MlflowClient().get_run(run_id).data.tags
