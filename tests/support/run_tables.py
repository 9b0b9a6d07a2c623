"""Reading back what the monitor recorded in a run: its tables and summary."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.tracking import MlflowClient

from mlflow_audiodiag import schema


def monitor_table(client: MlflowClient, run_id: str, path: str) -> pd.DataFrame:
    """``schema.ARTIFACT_STEPS`` or ``schema.ARTIFACT_EPOCHS`` of a run as a frame."""
    with tempfile.TemporaryDirectory() as tmp:
        return pd.read_parquet(client.download_artifacts(run_id, path, tmp))


def monitor_json(client: MlflowClient, run_id: str, path: str = schema.ARTIFACT_SUMMARY) -> Any:
    with tempfile.TemporaryDirectory() as tmp:
        return json.loads(Path(client.download_artifacts(run_id, path, tmp)).read_text())


def steps(client: MlflowClient, run_id: str) -> pd.DataFrame:
    return monitor_table(client, run_id, schema.ARTIFACT_STEPS).set_index("step")


def epochs(client: MlflowClient, run_id: str) -> pd.DataFrame:
    return monitor_table(client, run_id, schema.ARTIFACT_EPOCHS).set_index("epoch")
