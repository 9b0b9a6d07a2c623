"""Processes that start side by side and name the same new experiment all log into it."""

from __future__ import annotations

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from mlflow.tracking._tracking_service.client import TrackingServiceClient

from mlflow_audiodiag.cli.tracking import use_experiment

pytestmark = pytest.mark.integration


def _lose_the_create_race(monkeypatch: pytest.MonkeyPatch, uri: str, name: str) -> None:
    """The first lookup misses, and another process creates the experiment just after it."""
    lookup = TrackingServiceClient.get_experiment_by_name
    calls = {"n": 0}

    def racing_lookup(self, experiment_name):
        calls["n"] += 1
        if calls["n"] == 1:
            MlflowClient(uri).create_experiment(experiment_name)  # the other process wins
            return None
        return lookup(self, experiment_name)

    monkeypatch.setattr(TrackingServiceClient, "get_experiment_by_name", racing_lookup)


def test_use_experiment_activates_an_experiment_another_process_just_created(
    tracking_uri, monkeypatch
) -> None:
    _lose_the_create_race(monkeypatch, tracking_uri, "team")
    experiment_id = use_experiment("team")
    with mlflow.start_run() as run:
        pass
    team = MlflowClient(tracking_uri).get_experiment_by_name("team")
    assert experiment_id == team.experiment_id
    assert run.info.experiment_id == team.experiment_id
