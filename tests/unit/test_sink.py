"""DurableRunLogger against a real local sqlite tracking store (and a dead HTTP address)."""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from support.processes import spawned

from mlflow_audiodiag.cli.server import free_port
from mlflow_audiodiag.monitoring import spool
from mlflow_audiodiag.monitoring.sink import (
    DurableRunLogger,
    SinkConfig,
    default_spool_root,
    recover,
    validate_key,
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
    """Delivery only in flush()/close(), with its own spool root."""
    return SinkConfig(threaded=False, spool_root=tmp_path / "spool", **overrides)


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float, int]]:
    return sorted((m.step, m.value, m.timestamp) for m in client.get_metric_history(run_id, key))


def artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    return sorted(a.path for a in client.list_artifacts(run_id, path))


def test_points_arrive_with_their_steps_values_and_timestamps(client, run_id, tmp_path) -> None:
    sink = DurableRunLogger(run_id, client, manual(tmp_path))
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
    assert sink.close()


def test_batches_hold_at_most_max_batch_points(client, run_id, tmp_path) -> None:
    sink = DurableRunLogger(run_id, client, manual(tmp_path, max_batch=7))
    for step in range(25):
        sink.log("m", float(step), step)
    assert sink.flush()
    assert sink.tracking_calls == math.ceil(25 / 7)  # 7 + 7 + 7 + 4
    assert [step for step, _, _ in history(client, run_id, "m")] == list(range(25))
    assert sink.close()


def test_the_spool_holds_points_and_acks_and_is_removed_once_delivered(client, run_id) -> None:
    sink = DurableRunLogger(run_id, client, SinkConfig(threaded=False))
    assert sink.folder.parent == default_spool_root() / run_id
    sink.log_many({"a": 1.0, "b": 2.0}, step=3, timestamp_ms=42)
    assert sink.flush()
    lines = (sink.folder / spool.METRICS).read_text().splitlines()
    assert [json.loads(line) for line in lines] == [["a", 1.0, 42, 3], ["b", 2.0, 42, 3]]
    assert (sink.folder / spool.METRICS_ACKED).read_text().split() == ["2"]
    assert json.loads((sink.folder / spool.HEADER).read_text())["run_id"] == run_id

    assert sink.close()
    assert not sink.folder.exists() and not sink.folder.parent.exists()


def test_tables_tags_artifacts_and_the_end_of_the_run_arrive(client, run_id, tmp_path) -> None:
    sink = DurableRunLogger(run_id, client, manual(tmp_path))
    sink.append_rows("steps", pd.DataFrame({"step": [1, 2], "loss": [0.5, 0.4]}))
    parts = spool.table_parts(sink.folder / spool.TABLES / "steps")
    assert len(parts) == 1  # on disk when append_rows returns
    sink.append_rows("steps", pd.DataFrame({"step": [3], "loss": [0.3]}))
    sink.write_json("summary", {"labels/train/n": 10.0})
    sink.set_tag("audiodiag.live", "watching")
    sink.set_tag("audiodiag.live", "progressing")  # the latest value wins
    sink.log_text("hello", "notes/readme.txt")
    sink.publish()
    assert sink.flush()
    assert artifacts(client, run_id, "monitor") == ["monitor/summary.json"]  # published early
    assert client.get_run(run_id).data.tags["audiodiag.live"] == "progressing"

    sink.end_run("FINISHED")
    assert sink.close()
    assert artifacts(client, run_id, "monitor") == ["monitor/steps.parquet", "monitor/summary.json"]
    steps = pd.read_parquet(client.download_artifacts(run_id, "monitor/steps.parquet", tmp_path))
    assert steps["step"].tolist() == [1, 2, 3]
    assert Path(client.download_artifacts(run_id, "notes/readme.txt", tmp_path)).read_text() == (
        "hello"
    )
    assert client.get_run(run_id).info.status == "FINISHED"


def test_invalid_metric_names_are_rejected_at_log_time() -> None:
    validate_key("val/accuracy")
    for bad in ("", "a" * 251, "../x", "b/", "x<y", "/abs"):
        with pytest.raises(ValueError, match="metric name"):
            validate_key(bad)


def test_an_unreachable_server_keeps_everything_in_the_spool_and_recover_delivers_it(
    client, run_id, tmp_path, caplog
) -> None:
    dead = MlflowClient(f"http://127.0.0.1:{free_port()}")
    config = manual(tmp_path, health_timeout_s=0.2, retry_backoff_s=(0.05, 0.1))
    sink = DurableRunLogger(run_id, dead, config)
    caplog.set_level(logging.INFO, logger=SINK_LOGGER)
    started = time.perf_counter()
    for step in range(50):
        sink.log_many({"loss": 1.0 / (step + 1)}, step)
    assert time.perf_counter() - started < 0.5  # logging never waits for the server
    sink.append_rows("steps", pd.DataFrame({"step": [1], "loss": [1.0]}))
    sink.log_text("kept", "notes/kept.txt")
    sink.end_run("FINISHED")
    assert not sink.close(timeout_s=0.5)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "unreachable" in warnings[0].getMessage()
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("50 metric points" in e and "recover" in e and str(sink.folder) in e for e in errors)
    assert (sink.folder / spool.METRICS).exists()

    results = recover(sink.folder, client)  # the server (here: the real store) is back
    assert [(r.points, r.uploads, r.status) for r in results] == [(50, 2, "FINISHED")]
    assert len(client.get_metric_history(run_id, "loss")) == 50
    assert artifacts(client, run_id, "monitor") == ["monitor/steps.parquet"]
    assert artifacts(client, run_id, "notes") == ["notes/kept.txt"]
    assert client.get_run(run_id).info.status == "FINISHED"
    assert not sink.folder.exists()


DYING_WRITER = textwrap.dedent(
    """
    import os, sys, time
    import pandas as pd
    from mlflow.tracking import MlflowClient
    from mlflow_audiodiag.monitoring.sink import DurableRunLogger, SinkConfig
    run_id, root, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    sink = DurableRunLogger(run_id, MlflowClient(), SinkConfig(threaded=False, spool_root=root,
                                                              flush_interval_s=0))
    for step in range(30):
        sink.log_many({"loss": float(step)}, step)
    sink.append_rows("steps", pd.DataFrame({"step": [1, 2], "loss": [0.5, 0.4]}))
    print(sink.folder, flush=True)
    if mode == "die":
        os._exit(3)  # like kill -9: nothing is closed or delivered
    time.sleep(600)  # a writer that is still running
    """
)


def test_recover_takes_spools_of_dead_writers_and_ends_their_runs_killed(
    client, run_id, tmp_path
) -> None:
    root = tmp_path / "spool"
    command = [sys.executable, "-c", DYING_WRITER, run_id, str(root), "die"]
    with spawned(command, text=True, stdout=subprocess.PIPE) as child:
        out, _ = child.communicate(timeout=120)
    assert child.returncode == 3
    assert client.get_run(run_id).info.status == "RUNNING"
    results = recover(root, client)
    assert [(r.run_id, r.points, r.tables, r.status) for r in results] == [
        (run_id, 30, 1, "KILLED")
    ]
    assert len(client.get_metric_history(run_id, "loss")) == 30
    assert artifacts(client, run_id, "monitor") == ["monitor/steps.parquet"]
    assert client.get_run(run_id).info.status == "KILLED"
    assert not Path(out.strip()).exists()


def test_recover_reads_parquet_parts_of_earlier_versions_with_arrow_parts_in_order(
    client, run_id, tmp_path
) -> None:
    root = tmp_path / "spool"
    command = [sys.executable, "-c", DYING_WRITER, run_id, str(root), "die"]
    with spawned(command, text=True, stdout=subprocess.PIPE) as child:
        out, _ = child.communicate(timeout=120)
    parts = Path(out.strip()) / spool.TABLES / "steps"
    assert [p.name for p in spool.table_parts(parts)] == ["part-000001.arrow"]
    pd.DataFrame({"step": [0], "loss": [0.9]}).to_parquet(parts / "part-000000.parquet")
    (result,) = recover(root, client)
    assert result.tables == 1
    steps = pd.read_parquet(client.download_artifacts(run_id, "monitor/steps.parquet", tmp_path))
    assert steps["step"].tolist() == [0, 1, 2]
    assert steps["loss"].tolist() == [0.9, 0.5, 0.4]


def test_recover_leaves_the_spool_of_a_running_writer_alone(client, run_id, tmp_path) -> None:
    root = tmp_path / "spool"
    command = [sys.executable, "-c", DYING_WRITER, run_id, str(root), "live"]
    with spawned(command, text=True, stdout=subprocess.PIPE) as child:
        folder = Path(child.stdout.readline().strip())
        assert recover(root, client) == []  # the writer holds the lock
        assert (folder / spool.METRICS).exists()
        assert client.get_metric_history(run_id, "loss") == []
        live_here = DurableRunLogger(run_id, client, manual(tmp_path))
        assert recover(live_here.folder, client) == []  # nor a logger of this process
        assert live_here.close()
    results = recover(root, client)  # the writer is gone now
    assert [r.points for r in results] == [30]


def test_a_new_logger_delivers_a_leftover_spool_of_an_ended_process(
    client, run_id, tmp_path
) -> None:
    root = tmp_path / "spool"
    with spawned(
        [sys.executable, "-c", DYING_WRITER, run_id, str(root), "die"], text=True
    ) as child:
        child.communicate(timeout=120)
    other = client.create_run(client.get_run(run_id).info.experiment_id).info.run_id
    sink = DurableRunLogger(other, client, SinkConfig(spool_root=root, flush_interval_s=0.05))
    deadline = time.monotonic() + 60
    while len(client.get_metric_history(run_id, "loss")) < 30:
        assert time.monotonic() < deadline, "the leftover spool was not delivered"
        time.sleep(0.05)
    assert sink.close()
    assert client.get_run(run_id).info.status == "KILLED"
    assert spool.spool_dirs(root) == []


def test_a_full_disk_keeps_points_in_memory_and_says_so(client, run_id, tmp_path, caplog) -> None:
    sink = DurableRunLogger(run_id, client, manual(tmp_path, flush_interval_s=0))

    def full(*_: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    sink._metrics.write = full  # the disk fills up under the spool
    caplog.set_level(logging.INFO, logger=SINK_LOGGER)
    for step in range(40):
        sink.log_many({"loss": float(step)}, step)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "memory only" in errors[0] and "lost" in errors[0]
    assert sink.close()  # the server is up: every point arrives from memory
    assert len(client.get_metric_history(run_id, "loss")) == 40


def test_points_lost_to_a_full_disk_and_an_outage_are_counted_not_promised(
    run_id, tmp_path, caplog
) -> None:
    dead = MlflowClient(f"http://127.0.0.1:{free_port()}")
    config = manual(tmp_path, health_timeout_s=0.2, retry_backoff_s=(0.05, 0.1), memory_points=25)
    sink = DurableRunLogger(run_id, dead, config)
    sink._metrics.write = lambda *_: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full"))
    caplog.set_level(logging.INFO, logger=SINK_LOGGER)
    for step in range(40):
        sink.log_many({"loss": float(step)}, step)
    assert not sink.close(timeout_s=0.3)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("40 metric points" in e and "lost" in e and "15 of them" in e for e in errors)
    assert not any("re-send" in e or "deliver them" in e for e in errors[1:])


def test_loggers_of_one_process_get_separate_spools(client, run_id, tmp_path) -> None:
    first = DurableRunLogger(run_id, client, manual(tmp_path))
    second = DurableRunLogger(run_id, client, manual(tmp_path))
    assert first.folder != second.folder
    first.log("a", 1.0, 0)
    second.log("b", 2.0, 0)
    assert first.close() and second.close()
    assert os.path.exists(tmp_path / "spool") and spool.spool_dirs(tmp_path / "spool") == []


def test_non_finite_values_in_a_written_json_become_null(client, run_id, tmp_path) -> None:
    sink = DurableRunLogger(run_id, client, manual(tmp_path))
    sink.write_json(
        "summary", {"features/input/train/mean": float("nan"), "n": [1.0, float("inf")]}
    )
    assert sink.close()
    path = client.download_artifacts(run_id, "monitor/summary.json", str(tmp_path))
    assert json.loads(Path(path).read_text()) == {
        "features/input/train/mean": None,
        "n": [1.0, None],
    }


def test_listing_spools_survives_other_processes_removing_theirs(tmp_path) -> None:
    """Concurrent trainings share the spool root: a spool (or a staged file in it) removed
    while another logger lists the root for orphans is skipped, not an error."""
    import threading

    root = tmp_path / "spool"
    kept = spool.new_spool_dir(root, "a" * 32)
    spool.write_header(kept, "a" * 32, "http://127.0.0.1:1")
    stop = threading.Event()

    def churn() -> None:
        index = 0
        while not stop.is_set():
            folder = spool.new_spool_dir(root, "b" * 32)
            spool.write_header(folder, "b" * 32, "http://127.0.0.1:1")
            for part in range(20):
                (folder / "files" / f"{index:05d}" / str(part)).mkdir(parents=True)
            shutil.rmtree(folder)
            index += 1

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        for _ in range(300):
            assert kept in spool.spool_dirs(root)
    finally:
        stop.set()
        thread.join()
