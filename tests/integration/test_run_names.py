"""Runs of the bundled training on a local store get their own names, while the seed keeps
the training itself reproducible."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from mlflow_audiodiag.training.config import TrainConfig
from mlflow_audiodiag.training.run import train

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TINY = {
    "synthetic_classes": 3,
    "synthetic_clips_per_class": 8,
    "epochs": 1,
    "batch_size": 8,
    "dim": 16,
    "heads": 2,
    "layers": 1,
    "progress": False,
}


def test_two_runs_with_the_same_seed_get_different_names(tracking_uri) -> None:
    first = train(TrainConfig.from_flat(TINY))
    second = train(TrainConfig.from_flat(TINY))
    client = MlflowClient()
    names = [client.get_run(r.run_id).info.run_name for r in (first, second)]
    assert names[0] and names[1] and names[0] != names[1], names
    assert first.best_val_accuracy == second.best_val_accuracy  # still the same training
