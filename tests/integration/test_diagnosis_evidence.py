"""``load_evidence`` against a real sqlite-backed MLflow store."""

from __future__ import annotations

import math

import mlflow
import pytest
from mlflow import MlflowClient

from mlflow_audiodiag.diagnosis.engine import diagnose
from mlflow_audiodiag.diagnosis.evidence import load_evidence, series_kind

pytestmark = pytest.mark.integration


def test_load_evidence_splits_series_from_once_logged_metrics(tracking_uri: str) -> None:
    with mlflow.start_run() as active:
        run_id = active.info.run_id
        mlflow.log_params({"optim.lr": 0.001, "loop.class_balance": "none"})
        for epoch, acc in enumerate([0.2, 0.4, 0.5], start=1):
            mlflow.log_metric("val/accuracy", acc, step=epoch)
            mlflow.log_metric("train/loss", 2.0 / epoch, step=epoch)
            mlflow.log_metric("attention_entropy/layer0", 0.9, step=epoch)
        for step in (3, 1, 2):  # logged out of order
            mlflow.log_metric("grad_norm/head", float(step), step=step)
            mlflow.log_metric("grad_norm/encoder.10", 1.0, step=step)
            mlflow.log_metric("grad_norm/encoder.2", 1.0, step=step)
            mlflow.log_metric("grad_norm/total", 2.0, step=step)
            mlflow.log_metric("train/step_loss", 1.0 / step, step=step)
        mlflow.log_metric("grad_norm/embedding", 5.0, step=1)
        mlflow.log_metric("grad_norm/embedding", 7.0, step=1)  # same step again: last wins
        mlflow.log_metric("nonfinite/loss", 0.0, step=3)
        mlflow.log_metric("train/loss", math.nan, step=4)
        mlflow.log_metric("labels/train/imbalance_ratio", 4.0, step=0)
        mlflow.log_metric("features/normalized/train/mean", 0.01, step=0)
        mlflow.log_metric("data/val_majority_accuracy", 0.125, step=0)

        client = MlflowClient()
        running = load_evidence(client, run_id)
        assert running.status == "RUNNING"

    ev = load_evidence(client, run_id)
    assert ev.status == "FINISHED" and ev.run_id == run_id
    assert ev.params == {"optim.lr": "0.001", "loop.class_balance": "none"}
    assert set(ev.epoch_metrics) == {"val/accuracy", "train/loss", "attention_entropy/layer0"}
    assert set(ev.step_metrics) == {
        "grad_norm/head",
        "grad_norm/encoder.10",
        "grad_norm/encoder.2",
        "grad_norm/total",
        "grad_norm/embedding",
        "train/step_loss",
        "nonfinite/loss",
    }
    assert ev.summary == {
        "labels/train/imbalance_ratio": 4.0,
        "features/normalized/train/mean": 0.01,
        "data/val_majority_accuracy": 0.125,
    }
    assert ev.series("val/accuracy").tolist() == [[1, 0.2], [2, 0.4], [3, 0.5]]
    assert ev.series("grad_norm/head").tolist() == [[1, 1.0], [2, 2.0], [3, 3.0]]
    assert ev.series("grad_norm/embedding").tolist() == [[1, 7.0]]
    assert math.isnan(ev.latest("train/loss"))
    assert ev.latest("labels/train/imbalance_ratio") == 4.0
    assert ev.groups("grad_norm/") == ["embedding", "encoder.2", "encoder.10", "head"]
    assert ev.n_epochs == 3

    result = diagnose(ev)  # a NaN epoch loss is a divergence
    assert result.verdict == "diverged"


@pytest.mark.parametrize("status", ["FAILED", "KILLED"])
def test_load_evidence_of_ended_runs_without_signals(tracking_uri: str, status: str) -> None:
    with mlflow.start_run() as active:
        run_id = active.info.run_id
    MlflowClient().set_terminated(run_id, status=status)
    ev = load_evidence(MlflowClient(), run_id)
    assert ev.status == status
    assert (ev.epoch_metrics, ev.step_metrics, ev.summary, ev.params) == ({}, {}, {}, {})
    result = diagnose(ev)
    assert result.verdict == "inconclusive"
    assert result.findings == [] and result.skipped_checks


def test_series_kinds_follow_the_schema_prefixes() -> None:
    assert series_kind("train/step_loss") == "step"
    assert series_kind("nonfinite/grads") == "step"
    assert series_kind("lr/decay") == "step"
    assert series_kind("update_ratio/head") == "step"
    assert series_kind("train/lr") == "epoch"
    assert series_kind("val_recall/dog") == "epoch"
    assert series_kind("val_pred/top_class_fraction") == "epoch"
    assert series_kind("frozen_fraction/head") is None
    assert series_kind("test/accuracy") is None
    assert series_kind("best/val_accuracy") is None
