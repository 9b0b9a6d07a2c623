"""DurableMetricLogger against a real local sqlite tracking store (and a dead HTTP address)."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from support.mlflow_server import free_port

from mlflow_audiodiag.monitoring import delivery as delivery_module
from mlflow_audiodiag.monitoring import spool as spool_module
from mlflow_audiodiag.monitoring.sink import (
    DurableMetricLogger,
    SinkConfig,
    default_spool_root,
)

SINK_LOGGER = "mlflow_audiodiag.monitoring.sink"


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A freshly initialised sqlite store, made once: creating the schema takes seconds."""
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def client(tracking_uri: str, empty_store: Path) -> MlflowClient:
    shutil.copyfile(empty_store, tracking_uri.removeprefix("sqlite:///"))
    return MlflowClient(tracking_uri)


@pytest.fixture
def run_id(client: MlflowClient) -> str:
    return client.create_run(client.create_experiment("sink")).info.run_id


def manual(tmp_path: Path, **overrides) -> SinkConfig:
    return SinkConfig(delivery="caller", spool_dir=tmp_path / "spool", **overrides)


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float, int]]:
    return sorted((m.step, m.value, m.timestamp) for m in client.get_metric_history(run_id, key))


def run_dying_trainer(script: str, run_id: str, spool: Path) -> None:
    """Runs ``script`` (it logs to ``run_id`` and dies with status 3) in a new process."""
    child = subprocess.run(
        [sys.executable, "-c", script, run_id, str(spool)],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),
    )
    assert child.returncode == 3, child.stderr


def spool_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("metrics-*")) if directory.exists() else []


def test_points_arrive_with_their_steps_values_and_timestamps(client, run_id, tmp_path) -> None:
    sink = DurableMetricLogger(run_id, client, manual(tmp_path))
    sink.log("train/loss", 0.5, step=0, timestamp_ms=1_000)
    sink.log_many({"train/loss": 0.25, "train/accuracy": 0.75}, step=1, timestamp_ms=2_000)
    before = int(time.time() * 1000)
    sink.log("train/loss", 0.125, step=2)
    after = int(time.time() * 1000)
    assert sink.points_delivered == 0 and sink.pending == 4  # nothing sent before flush()

    assert sink.flush()
    loss = history(client, run_id, "train/loss")
    assert [(step, value) for step, value, _ in loss] == [(0, 0.5), (1, 0.25), (2, 0.125)]
    assert [timestamp for _, _, timestamp in loss[:2]] == [1_000, 2_000]
    assert before <= loss[2][2] <= after
    assert history(client, run_id, "train/accuracy") == [(1, 0.75, 2_000)]
    assert (sink.points_logged, sink.points_delivered, sink.pending) == (4, 4, 0)
    assert sink.tracking_calls == 1
    assert sink.flush_seconds > 0
    assert sink.close()


def test_batches_hold_at_most_max_batch_points(client, run_id, tmp_path) -> None:
    sink = DurableMetricLogger(run_id, client, manual(tmp_path, max_batch=7))
    for step in range(25):
        sink.log("m", float(step), step)
    assert sink.flush()
    assert sink.tracking_calls == math.ceil(25 / 7)  # 7 + 7 + 7 + 4
    assert [step for step, _, _ in history(client, run_id, "m")] == list(range(25))
    assert sink.close()


def test_spool_records_points_and_acks_then_is_removed(client, run_id) -> None:
    sink = DurableMetricLogger(run_id, client, SinkConfig(delivery="caller"))
    assert sink.spool_dir == default_spool_root() / run_id
    sink.log_many({"a": 1.0, "b": 2.0}, step=3, timestamp_ms=42)
    assert sink.flush()
    lines = sink.spool_path.read_text().splitlines()
    assert json.loads(lines[0])["run_id"] == run_id
    assert [json.loads(line) for line in lines[1:]] == [["a", 1.0, 42, 3], ["b", 2.0, 42, 3]]
    assert sink.ack_path.read_text().split() == ["2"]

    assert sink.close()
    assert not sink.spool_path.exists() and not sink.ack_path.exists()
    assert not sink.spool_dir.exists()


def test_background_thread_delivers_on_its_own(client, run_id, tmp_path) -> None:
    config = SinkConfig(flush_interval_s=0.05, spool_dir=tmp_path / "spool")
    with DurableMetricLogger(run_id, client, config) as sink:
        for step in range(20):
            sink.log("m", step * 0.5, step)
        deadline = time.monotonic() + 60  # the delivery process may still be starting
        while sink.points_delivered < 20 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sink.points_delivered == 20
    assert len(history(client, run_id, "m")) == 20
    assert spool_files(tmp_path / "spool") == []


def test_a_full_batch_is_sent_before_the_flush_interval(client, run_id, tmp_path) -> None:
    config = SinkConfig(flush_interval_s=60.0, max_batch=10, spool_dir=tmp_path / "spool")
    sink = DurableMetricLogger(run_id, client, config)
    for step in range(10):
        sink.log("m", 1.0, step)
    deadline = time.monotonic() + 60  # the delivery process may still be starting
    while sink.points_delivered < 10 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sink.points_delivered == 10
    assert sink.close(timeout_s=10)


def test_concurrent_loggers_lose_and_duplicate_nothing(client, run_id, tmp_path) -> None:
    config = SinkConfig(flush_interval_s=0.01, max_batch=50, spool_dir=tmp_path / "spool")
    sink = DurableMetricLogger(run_id, client, config)

    def produce(key: str) -> None:
        for step in range(200):
            sink.log(key, float(step), step)

    threads = [threading.Thread(target=produce, args=(f"t{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sink.close(timeout_s=30)
    assert sink.points_logged == sink.points_delivered == 800
    for i in range(4):
        assert [step for step, _, _ in history(client, run_id, f"t{i}")] == list(range(200))


def test_invalid_metric_names_fail_at_log_time(client, run_id, tmp_path) -> None:
    sink = DurableMetricLogger(run_id, client, manual(tmp_path))
    for bad in ("", "a//b", "../up", "/abs", 'quote"d', "x" * 251):
        with pytest.raises(ValueError):
            sink.log(bad, 1.0, 0)
    assert sink.pending == 0
    assert sink.close()


CRASHING_TRAINER = textwrap.dedent(
    """
    import os, sys
    from mlflow.tracking import MlflowClient
    from mlflow_audiodiag.monitoring.sink import DurableMetricLogger, SinkConfig

    run_id, spool = sys.argv[1], sys.argv[2]
    config = SinkConfig(delivery="caller", flush_interval_s=0.0, spool_dir=spool)
    sink = DurableMetricLogger(run_id, MlflowClient(), config)
    for step in range(10):
        sink.log("loss", 1.0 / (step + 1), step)
    assert sink.flush()
    for step in range(10, 15):
        sink.log("loss", 1.0 / (step + 1), step)
    os._exit(3)  # dies without close(): points 10..14 were never sent
    """
)


@pytest.mark.parametrize("acks_survive", [True, False], ids=["acks", "acks-lost"])
def test_recover_resends_an_abandoned_spool_exactly_once(
    client, run_id, tmp_path, acks_survive
) -> None:
    spool = tmp_path / "spool"
    run_dying_trainer(CRASHING_TRAINER, run_id, spool)
    assert [step for step, _, _ in history(client, run_id, "loss")] == list(range(10))
    (ack,) = spool.glob("*.acked")
    if not acks_survive:
        ack.unlink()  # as if the process died between delivering and recording it

    sent = DurableMetricLogger.recover(spool, client)

    assert sent == (5 if acks_survive else 15)
    loss = history(client, run_id, "loss")
    assert [step for step, _, _ in loss] == list(range(15))  # no duplicates
    assert [value for _, value, _ in loss] == pytest.approx([1 / (s + 1) for s in range(15)])
    assert spool_files(spool) == []
    assert DurableMetricLogger.recover(spool, client) == 0


@pytest.mark.parametrize("delivery", ["process", "thread"])
def test_unreachable_server_costs_the_trainer_nothing(
    client, run_id, tmp_path, caplog, capfd, delivery
) -> None:
    caplog.set_level(logging.INFO, logger=SINK_LOGGER)
    dead = MlflowClient(f"http://127.0.0.1:{free_port()}")
    config = SinkConfig(flush_interval_s=0.05, spool_dir=tmp_path / "spool", delivery=delivery)
    sink = DurableMetricLogger(run_id, dead, config)

    slowest = 0.0
    for step in range(300):
        started = time.perf_counter()
        sink.log_many({"loss": 1.0 / (step + 1), "lr": 1e-3}, step)
        slowest = max(slowest, time.perf_counter() - started)
        if step % 100 == 0:
            time.sleep(0.1)  # let the sender try and fail in between
    assert slowest < 0.05

    started = time.monotonic()
    assert sink.flush(timeout_s=1.0) is False
    assert sink.flush(timeout_s=0.5) is False
    assert time.monotonic() - started < 5
    assert sink.points_delivered == 0 and sink.pending == 600

    if delivery == "thread":
        records = caplog.records
        warnings = [r.getMessage() for r in records if r.name == SINK_LOGGER and r.levelno == 30]
    else:  # the delivery process warns on the stderr it shares with the training process
        prefix = f"WARNING {SINK_LOGGER}: "
        err, deadline = "", time.monotonic() + 60  # it may still be starting on a busy machine
        while prefix not in err and time.monotonic() < deadline:
            err += capfd.readouterr().err
            time.sleep(0.1)
        time.sleep(0.5)  # a second warning, if there were one, would show by now
        err += capfd.readouterr().err
        lines = err.splitlines()
        warnings = [line.removeprefix(prefix) for line in lines if line.startswith(prefix)]
    assert len(warnings) == 1
    assert "unreachable" in warnings[0]
    assert str(sink.spool_path) in warnings[0]

    assert sink.close(timeout_s=0.2) is False
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and str(sink.spool_path) in errors[0] and "recover" in errors[0]
    assert sink.spool_path.exists()

    # The server never came back: deliver the spool to the run's real store instead.
    assert DurableMetricLogger.recover(tmp_path / "spool", client) == 600
    assert [step for step, _, _ in history(client, run_id, "loss")] == list(range(300))
    assert spool_files(tmp_path / "spool") == []


@pytest.mark.parametrize(
    "point",
    [
        ("grad_norm/encoder.0", 1e-05, 1_700_000_000_000, 3),
        ("a b:c-d", float("nan"), 1, 2),
        ("x", float("inf"), 1, 2),
        ("x", float("-inf"), 1, 2),
        ("üms/ß", 0.1 + 0.2, 5, 6),
        ("k", 3.0, 0, -1),
    ],
)
def test_spool_lines_read_back_like_json_dumps(point: tuple) -> None:
    line = spool_module.point_line(point)
    assert line.endswith("\n")
    back, expected = json.loads(line), json.loads(json.dumps(point))
    assert back[0] == expected[0] and back[2:] == expected[2:]
    assert back[1] == expected[1] or (math.isnan(back[1]) and math.isnan(expected[1]))


def test_a_killed_delivery_process_is_restarted_and_sends_nothing_twice(
    client, run_id, tmp_path
) -> None:
    config = SinkConfig(flush_interval_s=0.05, max_batch=20, spool_dir=tmp_path / "spool")
    sink = DurableMetricLogger(run_id, client, config)
    for step in range(100):
        sink.log("m", float(step), step)
    assert sink.flush(timeout_s=30)
    first = sink._process.process
    first.kill()
    first.wait()
    for step in range(100, 200):
        sink.log("m", float(step), step)
    assert sink.close(timeout_s=30)
    assert sink._process.process is not first
    assert [step for step, _, _ in history(client, run_id, "m")] == list(range(200))
    assert sink.points_delivered == 200 and sink.pending == 0


def test_a_delivery_process_that_cannot_run_is_taken_over_by_the_trainer(
    client, run_id, tmp_path, monkeypatch, capfd, caplog
) -> None:
    caplog.set_level(logging.WARNING, logger=SINK_LOGGER)

    def broken_start(self) -> subprocess.Popen:  # e.g. its interpreter cannot import us
        return subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.exit('cannot start')"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip

    monkeypatch.setattr(delivery_module.DeliveryProcess, "_start", broken_start)
    config = SinkConfig(flush_interval_s=0.05, max_batch=20, spool_dir=tmp_path / "spool")
    sink = DurableMetricLogger(run_id, client, config)
    for step in range(50):
        sink.log("m", float(step), step)
    assert sink.flush(timeout_s=30)
    assert sink._process is None  # taken over after MAX_FUTILE_STARTS deaths
    for step in range(50, 80):
        sink.log("m", float(step), step)
    assert sink.close(timeout_s=30)
    assert [step for step, _, _ in history(client, run_id, "m")] == list(range(80))
    assert sink.points_delivered == 80 and sink.pending == 0
    assert spool_files(tmp_path / "spool") == []
    assert "ended 3 times in a row without delivering anything" in caplog.text
    assert "cannot start" in capfd.readouterr().err  # the process's own error is shown


def _busy_loops() -> list[subprocess.Popen]:
    """One CPU-bound process per core, at normal priority."""
    loop = "while True: pass"
    return [subprocess.Popen([sys.executable, "-c", loop]) for _ in range(os.cpu_count() or 1)]


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux scheduling policies")
def test_a_delivery_process_starved_of_cpu_is_taken_over_while_the_trainer_waits(
    client, run_id, tmp_path, caplog
) -> None:
    caplog.set_level(logging.INFO, logger=SINK_LOGGER)
    config = SinkConfig(flush_interval_s=60.0, spool_dir=tmp_path / "spool")
    sink = DurableMetricLogger(run_id, client, config)
    child = sink._process.process.pid
    deadline = time.monotonic() + 60
    while os.sched_getscheduler(child) != os.SCHED_IDLE:  # it has started following
        assert time.monotonic() < deadline, "the delivery process never went idle-priority"
        time.sleep(0.05)
    busy = _busy_loops()
    try:
        for step in range(50):
            sink.log("m", float(step), step)
        assert sink.flush(timeout_s=60)
        assert sink._process is None  # the trainer delivered
        assert "gets no CPU time" in caplog.text
    finally:
        for process in busy:
            process.kill()
            process.wait()
    assert sink.close(timeout_s=30)
    assert [step for step, _, _ in history(client, run_id, "m")] == list(range(50))


ORPHANING_TRAINER = textwrap.dedent(
    """
    import os, sys
    from mlflow.tracking import MlflowClient
    from mlflow_audiodiag.monitoring.sink import DurableMetricLogger, SinkConfig

    run_id, spool = sys.argv[1], sys.argv[2]
    config = SinkConfig(flush_interval_s=0.0, spool_dir=spool)
    sink = DurableMetricLogger(run_id, MlflowClient(), config)
    for step in range(15):
        sink.log("loss", 1.0 / (step + 1), step)
    os._exit(3)  # dies without close(); its delivery process carries on
    """
)


def test_the_delivery_process_outlives_a_crashed_trainer(client, run_id, tmp_path) -> None:
    spool = tmp_path / "spool"
    run_dying_trainer(ORPHANING_TRAINER, run_id, spool)
    deadline = time.monotonic() + 60
    while spool_files(spool) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert spool_files(spool) == []  # removed once everything had arrived
    loss = history(client, run_id, "loss")
    assert [step for step, _, _ in loss] == list(range(15))
