"""The run's dataset input against a real sqlite store, when a SQL store reports a race."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.exceptions import RestException
from mlflow.tracking import MlflowClient

from mlflow_audiodiag.training import artifacts

CONFLICT = {
    "error_code": "BAD_REQUEST",
    "message": "(psycopg.errors.UniqueViolation) duplicate key value violates unique "
    'constraint "dataset_pk"',
}


def _table() -> pd.DataFrame:
    return pd.DataFrame(
        {"path": ["a.wav", "b.wav"], "label": ["yes", "no"], "split": ["train", "val"]}
    )


def test_a_concurrent_insert_of_the_same_dataset_is_retried_and_linked(
    tracking_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_log_input = mlflow.log_input
    calls = []

    def racing_log_input(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:  # what a PostgreSQL store answers the slower of two runs
            raise RestException(CONFLICT)
        return real_log_input(*args, **kwargs)

    monkeypatch.setattr(mlflow, "log_input", racing_log_input)
    with mlflow.start_run() as run:
        artifacts.log_dataset_input(_table(), f"synthetic:{tmp_path / 'clips'}")
    inputs = MlflowClient().get_run(run.info.run_id).inputs.dataset_inputs
    assert len(calls) == 2
    assert [entry.dataset.name for entry in inputs] == ["clips"]


def test_other_store_errors_are_not_retried(
    tracking_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def refusing_log_input(*args, **kwargs):
        calls.append(1)
        raise RestException({"error_code": "PERMISSION_DENIED", "message": "no"})

    monkeypatch.setattr(mlflow, "log_input", refusing_log_input)
    with mlflow.start_run(), pytest.raises(RestException, match="no"):
        artifacts.log_dataset_input(_table(), f"synthetic:{tmp_path / 'clips'}")
    assert len(calls) == 1
