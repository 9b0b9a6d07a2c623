"""Tracking-server checks and hints printed to the user."""

from __future__ import annotations

import urllib.error
import urllib.request
from urllib.parse import urlparse

import mlflow

from mlflow_audiodiag.errors import AudioDiagError


class TrackingUnavailableError(AudioDiagError):
    """The configured MLflow tracking server does not answer."""


def check_tracking_server(uri: str | None = None, timeout_s: float = 5.0) -> str:
    """Fails fast with a clear message when an HTTP tracking server is unreachable.

    MLflow itself retries for minutes before giving up; a run that cannot log should say so
    before any work is done. Returns the tracking URI in use.
    """
    uri = uri or mlflow.get_tracking_uri()
    if urlparse(uri).scheme not in ("http", "https"):
        return uri
    health = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(health, timeout=timeout_s) as response:
            if response.status == 200:
                return uri
            problem = f"HTTP {response.status}"
    except (urllib.error.URLError, OSError) as error:
        problem = str(getattr(error, "reason", error))
    raise TrackingUnavailableError(
        f"MLflow tracking server {uri} is unreachable ({problem}). Start it "
        "(e.g. `mlflow server --host 127.0.0.1 --port 5000`), "
        "fix MLFLOW_TRACKING_URI, or unset it to log to the local sqlite:///mlflow.db."
    )


def use_experiment(name: str) -> str:
    """Makes ``name`` the active experiment, creating it if needed; returns its id.

    ``mlflow.set_experiment`` returns without activating the experiment when another process
    created it between its lookup and its create, so runs would land in the default experiment.
    Activating by id afterwards closes that race for processes starting side by side.
    """
    experiment = mlflow.set_experiment(name)
    mlflow.set_experiment(experiment_id=experiment.experiment_id)
    return experiment.experiment_id


def run_page_hint(experiment_id: str, run_id: str, uri: str | None = None) -> str:
    """How to open a run in the MLflow UI for the current tracking URI."""
    uri = uri or mlflow.get_tracking_uri()
    if urlparse(uri).scheme in ("http", "https"):
        return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return (
        f"mlflow ui --backend-store-uri {uri}   then open "
        f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/{run_id}"
    )
