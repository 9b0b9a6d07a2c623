"""Real training runs against a real local MLflow tracking store (sqlite + local artifacts)."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from support.run_tables import monitor_json, steps

from mlflow_audiodiag import schema, signals
from mlflow_audiodiag.data.audio_io import read_audio
from mlflow_audiodiag.training.config import TrainConfig
from mlflow_audiodiag.training.loop import Trainer
from mlflow_audiodiag.training.run import train

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TINY = {
    "synthetic_classes": 4,
    "synthetic_clips_per_class": 12,
    "epochs": 2,
    "batch_size": 8,
    "dim": 32,
    "heads": 2,
    "layers": 1,
    "progress": False,
}


def test_training_run_logs_params_metrics_artifacts_and_a_loadable_model(
    tracking_uri, monkeypatch
) -> None:
    # MLflow samples system metrics every 10 s by default; this run may be shorter than that.
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
    result = train(TrainConfig.from_flat(TINY))
    client = MlflowClient()
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"

    params = run.data.params
    assert params["optim.lr"] == "0.001"
    assert params["model.layers"] == "1"
    assert params["data.synthetic_classes"] == "4"
    assert len(params) == len(TrainConfig().to_params())

    for name in ("train/loss", "train/accuracy", "val/loss", "val/accuracy", "val/macro_f1"):
        history = client.get_metric_history(result.run_id, name)
        assert [m.step for m in history] == [1, 2], name
    metrics = run.data.metrics
    assert metrics[schema.METRIC_BEST_VAL_ACCURACY] == pytest.approx(result.best_val_accuracy)
    assert "test/accuracy" in metrics
    assert metrics[signals.MAJORITY_BASELINE.name] == pytest.approx(0.25, abs=0.1)
    assert len(metrics) <= 40  # the keys a person charts; the rest is in monitor/ tables
    assert any(key.startswith("system/") for key in metrics)  # MLflow's system metrics
    (dataset,) = run.inputs.dataset_inputs  # the run page's Datasets panel
    assert dataset.tags[0].value == "training"
    assert run.data.tags[schema.TAG_FRONT_END] == "bundled"
    assert run.data.tags[schema.TAG_LIVE].startswith("finished after 2 epochs")
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags[schema.TAG_EXPERIMENT_KIND] == schema.EXPERIMENT_KIND_TRAINING
    monitor = {a.path for a in client.list_artifacts(result.run_id, "monitor")}
    assert {schema.ARTIFACT_STEPS, schema.ARTIFACT_EPOCHS, schema.ARTIFACT_SUMMARY} <= monitor

    artifacts = {a.path for a in client.list_artifacts(result.run_id, "data")}
    assert {schema.ARTIFACT_NORMALIZATION, schema.ARTIFACT_CLASSES} <= artifacts
    evaluation = {a.path for a in client.list_artifacts(result.run_id, "evaluation")}
    assert {schema.ARTIFACT_CONFUSION_CSV, schema.ARTIFACT_CONFUSION_PNG} <= evaluation
    classes = json.loads(
        Path(client.download_artifacts(result.run_id, schema.ARTIFACT_CLASSES)).read_text()
    )["classes"]
    assert classes == result.classes and len(classes) == 4

    model = mlflow.pytorch.load_model(f"runs:/{result.run_id}/{schema.ARTIFACT_MODEL}")
    source = run.data.tags[schema.TAG_DATA_SOURCE].removeprefix("synthetic:")
    manifest = pd.read_csv(Path(source) / "manifest.csv")
    waves = np.stack([read_audio(Path(source) / p, 16000) for p in manifest.path[:3]])
    with torch.no_grad():
        logits = model(torch.from_numpy(waves))
    assert logits.shape == (3, 4) and torch.isfinite(logits).all()


def test_skipped_files_are_logged_with_reasons(tracking_uri, tmp_path: Path) -> None:
    from mlflow_audiodiag.data.synthetic import SyntheticConfig, generate_dataset

    manifest = generate_dataset(
        tmp_path / "data", SyntheticConfig(n_classes=3, clips_per_class=10), progress=False
    )
    table = pd.read_csv(manifest)
    bad = tmp_path / "data" / table.path[0]
    bad.write_bytes(b"not audio at all")
    result = train(TrainConfig.from_flat({**TINY, "source": str(manifest), "on_bad_file": "skip"}))
    client = MlflowClient()
    assert client.get_run(result.run_id).data.metrics[schema.METRIC_SKIPPED_FILES] == 1
    listing = Path(client.download_artifacts(result.run_id, schema.ARTIFACT_SKIPPED)).read_text()
    assert str(bad) in listing and "not a readable audio file" in listing


@pytest.mark.parametrize(
    ("error", "status"), [(KeyboardInterrupt, "KILLED"), (RuntimeError, "FAILED")]
)
def test_a_run_stopped_mid_training_keeps_its_points_and_status(
    tracking_uri, monkeypatch, error, status
) -> None:
    evaluations = []
    original = Trainer.evaluate

    def stop_in_second_validation(self, loader):  # fault injection, like Ctrl-C mid-run
        evaluations.append(1)
        if len(evaluations) == 2:
            raise error("stopped")
        return original(self, loader)

    monkeypatch.setattr(Trainer, "evaluate", stop_in_second_validation)
    with pytest.raises(error):
        train(TrainConfig.from_flat({**TINY, "epochs": 3}))
    client = MlflowClient()
    (run,) = client.search_runs(["0"])
    assert run.info.status == status
    clips = monitor_json(client, run.info.run_id, schema.ARTIFACT_DATA_SUMMARY)["clips"]
    steps_per_epoch = -(-clips["train"] // TINY["batch_size"])
    recorded = steps(client, run.info.run_id).index.tolist()
    assert recorded == list(range(1, 2 * steps_per_epoch + 1))  # both epochs' steps arrived
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/accuracy")] == [1]


def test_live_check_tags_the_run_and_can_stop_a_stagnant_training(tracking_uri) -> None:
    config = TrainConfig.from_flat(
        {**TINY, "epochs": 20, "lr": 1e-8, "scheduler": "constant", "stop_on_stagnation": True}
    )
    result = train(config)
    run = MlflowClient().get_run(result.run_id)
    stop_reason = run.data.tags[schema.TAG_STOP_REASON]
    assert stop_reason.startswith("stopped at epoch")
    live = run.data.tags[schema.TAG_LIVE]  # the final state, with the same plateau window
    assert live.startswith("finished after") and "stagnant" in live
    window = stop_reason.split(": ", 1)[1].split(" over ")[-1]
    assert window in live
    epochs = [m.step for m in MlflowClient().get_metric_history(result.run_id, "val/accuracy")]
    assert len(epochs) < 20  # stopped once stagnation was confirmed
    assert run.data.metrics[schema.METRIC_STOPPED_EARLY] == 1.0
    assert run.data.tags[schema.TAG_VERDICT] == "stagnant"


def test_sigterm_ends_the_run_killed_with_its_points_and_no_leftovers(
    tracking_uri, tmp_path: Path
) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    from support.processes import spawned

    options = ["--synthetic-classes", "4", "--synthetic-clips-per-class", "12", "--epochs", "200"]
    options += ["--dim", "16", "--heads", "2", "--layers", "1", "--progress", "false"]
    command = [sys.executable, "-m", "mlflow_audiodiag.cli.main", "train", *options]
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    client = MlflowClient()
    with spawned(command, text=True, env=env, stderr=subprocess.PIPE, cwd=tmp_path) as child:
        deadline = time.monotonic() + 300
        while True:
            assert child.poll() is None, child.stderr.read()
            assert time.monotonic() < deadline, "no epoch recorded within 300 s"
            runs = client.search_runs(["0"])
            if runs and "val/accuracy" in runs[0].data.metrics:
                break
            time.sleep(0.5)
        child.send_signal(signal.SIGTERM)
        _, stderr = child.communicate(timeout=120)
    assert child.returncode == 130, stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr
    run = client.get_run(runs[0].info.run_id)
    assert run.info.status == "KILLED"
    assert len(steps(client, run.info.run_id)) > 0  # the steps recorded so far arrived
    spool_root = Path(os.environ["AUDIODIAG_CACHE_DIR"]) / "spool"
    assert not spool_root.exists() or not list(spool_root.glob(f"{run.info.run_id}/*"))
