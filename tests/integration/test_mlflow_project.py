"""The MLflow Project end to end: ``mlflow run`` as a user runs it, and the CLI's errors."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from support import processes

from mlflow_audiodiag import schema

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _env(tracking_uri: str, cache_root: Path) -> dict[str, str]:
    return {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "AUDIODIAG_CACHE_DIR": str(cache_root),
    }


def _mlflow_run(
    entry_point: str, params: list[str], env: dict[str, str], cwd: Path, *options: str
) -> subprocess.CompletedProcess:
    """``mlflow run`` of this project's ``entry_point`` with ``-P`` ``params``, as users run it."""
    command = [
        sys.executable, "-m", "mlflow", "run", str(PROJECT_ROOT), "-e", entry_point,
        "--env-manager", "local", *options, *(arg for p in params for arg in ("-P", p)),
    ]  # fmt: skip
    return processes.run(command, env=env, cwd=cwd, timeout_s=600)


def test_mlflow_run_train_entry_point(tracking_uri, cache_root, tmp_path: Path) -> None:
    params = [
        "synthetic_classes=3", "synthetic_clips_per_class=10",
        "epochs=2", "dim=32", "heads=2", "layers=1",
    ]  # fmt: skip
    env = _env(tracking_uri, cache_root)
    done = _mlflow_run("train", params, env, tmp_path, "--experiment-name", "project-e2e")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "validation accuracy:" in done.stdout

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("project-e2e")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.info.run_id in done.stdout
    assert run.data.params["epochs"] == "2"  # the entry-point parameter, logged by MLflow
    assert run.data.params["loop.epochs"] == "2"  # the resolved config
    assert run.data.params["data.synthetic_classes"] == "3"
    assert "val/accuracy" in run.data.metrics
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in history] == [1, 2]
    models = client.search_logged_models(
        [experiment.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'"
    )
    assert [m.name for m in models] == [schema.ARTIFACT_MODEL]


def test_mlflow_run_prepare_data_entry_point(tracking_uri, tmp_path: Path) -> None:
    out = tmp_path / "corpus"
    params = [f"out={out}", "n_classes=2", "clips_per_class=6", "imbalance_ratio=2"]
    done = _mlflow_run("prepare_data", params, _env(tracking_uri, tmp_path / "cache"), tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = pd.read_csv(out / "manifest.csv")
    assert manifest.label.value_counts().sort_values().tolist() == [3, 6]
    assert all((out / p).is_file() for p in manifest.path)


def test_unreachable_tracking_server_fails_fast_with_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a free loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start = time.monotonic()
    done = processes.run(
        [sys.executable, "-m", "mlflow_audiodiag.cli.main", "train", "--epochs", "1"],
        env={**os.environ, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"},
        cwd=tmp_path, timeout_s=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert f"http://127.0.0.1:{port} is unreachable" in done.stderr
    assert "MLFLOW_TRACKING_URI" in done.stderr
    assert time.monotonic() - start < 60


def test_bad_user_data_fails_with_the_file_named(tmp_path: Path, tracking_uri) -> None:
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,label,split\nmissing.wav,dog,train\nalso_missing.wav,cat,train\n")
    done = processes.run(
        [sys.executable, "-m", "mlflow_audiodiag.cli.main", "train", "--manifest", str(manifest)],
        env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri},
        cwd=tmp_path, timeout_s=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert f"error: audio file {tmp_path / 'missing.wav'} does not exist" in done.stderr
    assert "on_bad_file=skip" in done.stderr


def test_mlflow_run_compare_entry_point_logs_the_comparison(tracking_uri, cache_root, tmp_path):
    client = MlflowClient(tracking_uri)
    team = client.create_experiment("team")
    for verdict in ("stagnant", "healthy"):
        run_id = client.create_run(team, run_name=verdict).info.run_id
        client.set_tag(run_id, schema.TAG_VERDICT, verdict)
        client.set_terminated(run_id)
    params = [
        "experiment=team",
        f"filter=tags.`{schema.TAG_VERDICT}` = 'stagnant'",
        f"out={tmp_path / 'cmp'}",
    ]
    env = _env(tracking_uri, cache_root)
    done = _mlflow_run("compare", params, env, tmp_path, "--experiment-name", "comparisons")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "verdicts: stagnant 1" in done.stdout
    (run,) = client.search_runs([client.get_experiment_by_name("comparisons").experiment_id])
    files = {a.path for a in client.list_artifacts(run.info.run_id, "comparison")}
    assert "comparison/comparison.html" in files and "comparison/comparison.csv" in files
    assert (tmp_path / "cmp" / "comparison.html").exists()  # not in the project folder
