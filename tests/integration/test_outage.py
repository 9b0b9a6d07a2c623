"""A real training loop keeps going through a tracking-server outage and loses no metric point."""

from __future__ import annotations

import logging
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from mlflow.tracking import MlflowClient
from torch import nn
from torch.nn import functional as F  # noqa: N812

from mlflow_audiodiag.monitoring import spool
from mlflow_audiodiag.monitoring.sink import DurableRunLogger, SinkConfig

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SINK_LOGGER = "mlflow_audiodiag.monitoring.sink"
KEYS = ("train/loss", "train/accuracy", "train/grad_norm", "train/lr")
STOP_AT, RESTART_AT, STEPS_AFTER_RECOVERY = 100, 200, 50


class TinyTrainer:
    """A small MLP learning a fixed rule on random data, one optimiser step per ``step()``."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.features = torch.randn(1024, 16, generator=generator)
        self.labels = self.features[:, :4].argmax(dim=1)
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.2)

    def step(self) -> dict[str, float]:
        batch = torch.randint(0, len(self.labels), (64,))
        logits = self.model(self.features[batch])
        loss = F.cross_entropy(logits, self.labels[batch])
        self.optimizer.zero_grad()
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), 5.0)
        self.optimizer.step()
        accuracy = (logits.argmax(dim=1) == self.labels[batch]).float().mean()
        lr = self.optimizer.param_groups[0]["lr"]
        return dict(zip(KEYS, (loss.item(), accuracy.item(), grad_norm.item(), lr), strict=True))


def test_training_survives_a_server_outage_and_every_point_arrives_once(
    mlflow_server, tmp_path, caplog
) -> None:
    client = MlflowClient(mlflow_server.uri)
    run_id = client.create_run(client.create_experiment("outage")).info.run_id
    config = SinkConfig(
        flush_interval_s=0.2, retry_backoff_s=(0.2, 2.0), spool_root=tmp_path / "spool"
    )
    caplog.set_level(logging.INFO, logger=SINK_LOGGER)
    sink = DurableRunLogger(run_id, client, config)
    metrics_file = sink.folder / spool.METRICS
    trainer = TinyTrainer()
    logged: dict[int, dict[str, float]] = {}
    log_seconds_while_down: list[float] = []

    def train_step(step: int) -> float:
        """One optimiser step, logged; returns how long ``log_many`` took."""
        logged[step] = trainer.step()
        started = time.perf_counter()
        sink.log_many(logged[step], step)
        seconds = time.perf_counter() - started
        time.sleep(0.01)  # paces the loop so the outage spans several flush intervals
        return seconds

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]

    for step in range(STOP_AT):
        train_step(step)
    assert sink.flush(timeout_s=60)
    mlflow_server.stop()  # mid-training, with points still in flight or queued
    assert not mlflow_server.healthy()

    for step in range(STOP_AT, RESTART_AT):
        log_seconds_while_down.append(train_step(step))
    deadline = time.monotonic() + 60
    while not warnings():
        assert time.monotonic() < deadline, "no outage warning within 60 s"
        time.sleep(0.1)
    assert sink.points_delivered <= STOP_AT * len(KEYS)
    assert sink.pending >= (RESTART_AT - STOP_AT) * len(KEYS)
    deadline = time.monotonic() + 30  # the spool reaches the disk once per flush interval
    while len(metrics_file.read_text().splitlines()) < sink.points_logged:
        assert time.monotonic() < deadline, "the spool does not hold every point"
        time.sleep(0.05)
    assert len(metrics_file.read_text().splitlines()) == sink.points_logged
    assert statistics.median(log_seconds_while_down) < 0.005
    assert max(log_seconds_while_down) < 0.25

    with ThreadPoolExecutor(max_workers=1) as pool:
        restart = pool.submit(mlflow_server.start)  # training goes on while the server boots
        step = RESTART_AT
        while not restart.done():
            train_step(step)
            step += 1
        restart.result()
    assert mlflow_server.healthy()
    steps = step + STEPS_AFTER_RECOVERY
    for late_step in range(step, steps):
        train_step(late_step)

    assert sink.close(timeout_s=30)
    assert sink.points_logged == sink.points_delivered == steps * len(KEYS)
    assert not sink.folder.exists()

    assert len(warnings()) == 1 and "unreachable" in warnings()[0]
    assert any("points late" in r.getMessage() for r in caplog.records)

    for key in KEYS:
        history = client.get_metric_history(run_id, key)
        assert len(history) == steps, key
        assert sorted(m.step for m in history) == list(range(steps)), key
        by_step = {m.step: m.value for m in history}
        assert by_step == pytest.approx({s: logged[s][key] for s in range(steps)}), key
    first = statistics.mean(logged[s]["train/loss"] for s in range(20))
    last = statistics.mean(logged[s]["train/loss"] for s in range(steps - 20, steps))
    assert last < first  # it really trained through the outage


def test_an_outage_over_the_end_of_training_delays_the_uploads_and_the_run_still_finishes(
    mlflow_server, monkeypatch, tmp_path
) -> None:
    """The server goes away as training ends (before the confusion matrix, model and tables
    are uploaded) and comes back 3 s later: the run ends FINISHED with everything in it."""
    import threading

    import mlflow
    import mlflow.pytorch

    from mlflow_audiodiag import schema
    from mlflow_audiodiag.training import artifacts, run
    from mlflow_audiodiag.training.config import TrainConfig

    original = artifacts.log_confusion_matrix

    def outage_then_log(*args, **kwargs):
        mlflow_server.stop()
        threading.Timer(3.0, mlflow_server.start).start()
        return original(*args, **kwargs)

    monkeypatch.setattr(run.artifacts, "log_confusion_matrix", outage_then_log)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    mlflow.set_tracking_uri(mlflow_server.uri)
    options = {
        "synthetic_classes": 3,
        "synthetic_clips_per_class": 10,
        "epochs": 2,
        "dim": 16,
        "heads": 2,
        "layers": 1,
        "progress": False,
    }
    try:
        result = run.train(TrainConfig.from_flat(options))
    finally:
        mlflow.set_tracking_uri(None)
    client = MlflowClient(mlflow_server.uri)
    finished = client.get_run(result.run_id)
    assert finished.info.status == "FINISHED"
    paths = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"evaluation", "monitor", "diagnosis"} <= paths
    assert schema.TAG_VERDICT in finished.data.tags
    mlflow.set_tracking_uri(mlflow_server.uri)
    try:  # the model was logged once the server answered again
        model = mlflow.pytorch.load_model(f"runs:/{result.run_id}/{schema.ARTIFACT_MODEL}")
    finally:
        mlflow.set_tracking_uri(None)
    assert model is not None
