"""Tracking-server checks and hints printed to the user."""

from __future__ import annotations

import logging
import urllib.error
import urllib.request
from urllib.parse import urlparse

import mlflow

from mlflow_audiodiag.errors import AudioDiagError

logger = logging.getLogger(__name__)
LOGIN_TIMEOUT_S = 30.0


class TrackingUnavailableError(AudioDiagError):
    """The configured MLflow tracking server does not answer."""


class TrackingAuthError(AudioDiagError):
    """The tracking server wants a login this client does not have."""


def check_tracking_server(uri: str | None = None, timeout_s: float = 5.0) -> str:
    """Fails fast with a clear message when an HTTP tracking server is unreachable, or
    refuses this client (no login, a wrong one, a host name it does not serve).

    MLflow itself retries for minutes before giving up, and reports a refused login as a
    traceback from deep inside the run; a run that cannot log should say so before any work
    is done. Returns the tracking URI in use.
    """
    uri = uri or mlflow.get_tracking_uri()
    if urlparse(uri).scheme not in ("http", "https"):
        return uri
    health = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(health, timeout=timeout_s) as response:
            if response.status == 200:
                _check_login(uri, timeout_s)
                return uri
            problem = f"HTTP {response.status}"
    except (urllib.error.URLError, OSError) as error:
        problem = str(getattr(error, "reason", error))
    raise TrackingUnavailableError(
        f"MLflow tracking server {uri} is unreachable ({problem}). Start it "
        "(e.g. `mlflow server --host 127.0.0.1 --port 5000`), "
        "fix MLFLOW_TRACKING_URI, or unset it to log to the local sqlite:///mlflow.db."
    )


def _check_login(uri: str, timeout_s: float) -> None:
    """One authenticated request, with the credentials MLflow itself would send.

    A busy server may take a while (each login is a deliberately slow password hash); if it
    does not answer in time, the run goes on and MLflow's own retries take over.
    """
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    creds = get_default_host_creds(uri)
    try:
        response = http_request(
            creds,
            "/api/2.0/mlflow/experiments/search",
            "GET",
            params={"max_results": 1},
            max_retries=0,
            timeout=max(timeout_s, LOGIN_TIMEOUT_S),
            raise_on_status=False,
        )
    except Exception as error:  # a timeout or a dropped connection: not a refusal
        logger.warning("could not check the login at %s (%s); going on", uri, error)
        return
    if response.status_code == 401:
        if creds.username or creds.token:
            who = f"user {creds.username!r}" if creds.username else "MLFLOW_TRACKING_TOKEN"
            raise TrackingAuthError(
                f"MLflow tracking server {uri} refused the login of {who} (HTTP 401): check "
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or ask the server's "
                "admin to create the account"
            )
        raise TrackingAuthError(
            f"MLflow tracking server {uri} requires a login (HTTP 401): set "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (the server's admin "
            "creates accounts)"
        )
    if response.status_code == 403 and "Invalid Host header" in response.text:
        raise TrackingUnavailableError(
            f"MLflow tracking server {uri} refuses the host name {urlparse(uri).netloc!r} "
            "(403 Invalid Host header): its admin must add it to the server's --allowed-hosts"
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


# MLflow 3.17's UI opens experiments in its GenAI view unless the browser was switched to model
# training (its sidebar toggle, kept per browser); a link with this query switches it.
TRAINING_VIEW_QUERY = "?workflowType=machine_learning"


def run_page_hint(experiment_id: str, run_id: str, uri: str | None = None) -> str:
    """How to open a run in the MLflow UI (its model-training view) for the current tracking
    URI."""
    uri = uri or mlflow.get_tracking_uri()
    page = f"/#/experiments/{experiment_id}/runs/{run_id}{TRAINING_VIEW_QUERY}"
    if urlparse(uri).scheme in ("http", "https"):
        return f"{uri.rstrip('/')}{page}"
    return f"mlflow ui --backend-store-uri {uri}   then open http://127.0.0.1:5000{page}"
