"""Shared fixtures: an isolated cache directory and a real local MLflow tracking store."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import pytest


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One feature/dataset cache for the whole session (generated data is reused)."""
    return tmp_path_factory.mktemp("audiodiag-cache")


@pytest.fixture(autouse=True)
def _isolated_cache(cache_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIODIAG_CACHE_DIR", str(cache_root))


@pytest.fixture
def tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fresh sqlite-backed MLflow tracking store with artifacts under ``tmp_path``."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)  # ids belong to another store
    monkeypatch.chdir(tmp_path)  # the default artifact root is relative to the working dir
    mlflow.set_tracking_uri(uri)
    yield uri
    if mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)
    # An experiment a test made active (mlflow.set_experiment) belongs to this store only.
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
    mlflow.tracking.fluent._active_experiment_id = None
