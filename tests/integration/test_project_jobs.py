"""The project's job entry points (``diagnose``, ``compare``) leave runs people can read: no
empty extra run, outputs outside the checkout, runs named after what they did."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from support.processes import spawned

from mlflow_audiodiag import schema

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _mlflow_run(entry_point: str, params: list[str], env: dict, cwd: Path, *options: str):
    command = [
        sys.executable, "-m", "mlflow", "run", str(PROJECT_ROOT), "-e", entry_point,
        "--env-manager", "local", *options, *(arg for p in params for arg in ("-P", p)),
    ]  # fmt: skip
    with spawned(
        command, text=True, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as child:
        out, err = child.communicate(timeout=600)
    return child.returncode, out, err


def _stagnant_run() -> str:
    with mlflow.start_run(run_name="flat-run") as run:
        mlflow.log_metric("data/val_majority_accuracy", 0.25, step=0)
        for epoch in range(1, 9):
            mlflow.log_metrics({"val/accuracy": 0.25, "val/loss": 1.39}, step=epoch)
    return run.info.run_id


def test_the_diagnose_entry_point_files_its_run_under_the_diagnosed_one(
    tracking_uri, cache_root, tmp_path
) -> None:
    target = _stagnant_run()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "AUDIODIAG_CACHE_DIR": str(cache_root),
    }
    code, out, err = _mlflow_run("diagnose", [f"run_id={target}"], env, tmp_path)
    assert code == 0, err[-3000:]
    assert "audiodiag verdict: stagnant" in out
    client = MlflowClient(tracking_uri)
    (job,) = [r for r in client.search_runs(["0"]) if r.info.run_id != target]
    assert job.data.tags["mlflow.parentRunId"] == target  # shown under the diagnosed run
    assert job.info.run_name == "diagnose flat-run"
    assert job.data.tags[schema.TAG_JOB] == "diagnose"
    assert {a.path for a in client.list_artifacts(job.info.run_id, "diagnosis")} == {
        schema.ARTIFACT_FINDINGS
    }
    assert client.get_run(target).data.tags[schema.TAG_VERDICT] == "stagnant"


def test_compare_writes_outside_the_checkout_and_names_its_run(
    tracking_uri, cache_root, tmp_path
) -> None:
    _stagnant_run()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "AUDIODIAG_CACHE_DIR": str(cache_root),
    }
    before = set(os.listdir(PROJECT_ROOT))
    code, out, err = _mlflow_run(
        "compare", ["experiment=Default"], env, tmp_path, "--experiment-name", "comparisons"
    )
    assert code == 0, err[-3000:]
    assert set(os.listdir(PROJECT_ROOT)) == before  # nothing written into the checkout
    written = Path(out.split("written: ")[1].split(",")[0])
    assert written.is_relative_to(cache_root / "comparisons")
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("comparisons").experiment_id])
    assert run.info.run_name == "compare Default"
