"""Durable, non-blocking delivery of a run's metrics, tags, tables and artifacts to MLflow.

:class:`DurableRunLogger` writes everything first to a spool on local disk (see
:mod:`~mlflow_audiodiag.monitoring.spool`) and delivers it from a background thread: metric
points in ``log_batch`` calls of at most 1,000, tags, staged artifacts and appended tables (one
Parquet file each). While the tracking server is down or refuses the requests, training goes on,
one warning says where everything is kept, and delivery resumes with exponential backoff.
``close()`` waits for an outage to end (``close_timeout_s``) before it gives up; what is left
stays in the spool, and ``python -m mlflow_audiodiag.monitoring.sink recover`` delivers it later
and ends the run. A spool whose writer process is gone is also delivered by the next logger that
starts for the same tracking store.

    sink = DurableRunLogger(run_id)
    sink.log_many({"train/step_loss": 0.7}, step=1)
    sink.append_rows("steps", frame)              # durable at once, uploaded as steps.parquet
    sink.log_text("...", "notes/readme.txt")
    sink.close()
"""

from __future__ import annotations

import argparse
import atexit
import itertools
import json
import logging
import math
import posixpath
import re
import shutil
import ssl
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.feather as feather
from mlflow.entities import Metric, RunStatus
from mlflow.tracking import MlflowClient

from mlflow_audiodiag.cache import default_cache_root
from mlflow_audiodiag.monitoring import spool
from mlflow_audiodiag.monitoring.spool import Point, SpoolRecoveryError, WriterLock

__all__ = [
    "DurableRunLogger",
    "SinkConfig",
    "SpoolRecoveryError",
    "check_health",
    "default_spool_root",
    "is_http_uri",
    "recover",
    "validate_key",
]

logger = logging.getLogger(__name__)

RECOVER_COMMAND = "python -m mlflow_audiodiag.monitoring.sink recover"
_KEY_PATTERN = re.compile(r"^[/\w.\- :]*$")
_MAX_KEY_LENGTH = 250
_SPOOL_BUFFER_BYTES = 1 << 16


@dataclass(frozen=True)
class SinkConfig:
    """How often to send, where to spool, how to back off and how long to wait at the end.

    ``threaded=False`` delivers only in ``flush()`` and ``close()`` (in the calling thread).
    ``memory_points`` bounds the points kept in memory when the spool cannot be written.
    """

    flush_interval_s: float = 5.0
    max_batch: int = 1000  # MLflow's log_batch limit for metrics
    spool_root: Path | None = None  # default: <cache root>/spool
    health_timeout_s: float = 2.0
    retry_backoff_s: tuple[float, float] = (1.0, 30.0)  # first and largest retry delay
    close_timeout_s: float = 120.0
    table_dir: str = "monitor"  # artifact folder of appended and written tables
    publish_interval_s: float = 30.0  # written tables are uploaded at most this often
    memory_points: int = 1_000_000
    sweep_orphans: bool = True
    threaded: bool = True

    def __post_init__(self) -> None:
        if self.flush_interval_s < 0:
            raise ValueError(f"flush_interval_s must be >= 0, got {self.flush_interval_s}")
        if not 1 <= self.max_batch <= 1000:
            raise ValueError(f"max_batch must be in [1, 1000], got {self.max_batch}")
        first, largest = self.retry_backoff_s
        if not 0 < first <= largest:
            raise ValueError(
                f"retry_backoff_s must be (first, largest) with 0 < first <= largest, "
                f"got {self.retry_backoff_s}"
            )
        if self.close_timeout_s < 0 or self.memory_points < 1:
            raise ValueError("close_timeout_s must be >= 0 and memory_points >= 1")


def default_spool_root() -> Path:
    """``<cache root>/spool``; the cache root is ``$AUDIODIAG_CACHE_DIR`` or ``~/.cache/...``."""
    return default_cache_root() / "spool"


def validate_key(key: str) -> None:
    """Rejects a metric name MLflow would refuse, at log time rather than at delivery time."""
    if not isinstance(key, str) or not key or len(key) > _MAX_KEY_LENGTH:
        raise ValueError(f"metric name must be a non-empty string of <= 250 characters: {key!r}")
    norm = posixpath.normpath(key)
    if not _KEY_PATTERN.match(key) or norm != key or norm.startswith(("..", "/")):
        raise ValueError(
            f"invalid metric name {key!r}: use letters, digits, '_', '-', '.', ' ', ':' and '/' "
            "without empty, '.' or '..' path segments"
        )


def is_http_uri(uri: str) -> bool:
    return urlparse(uri).scheme in ("http", "https")


def check_health(uri: str, timeout_s: float) -> str | None:
    """``None`` when the server at ``uri`` answers ``/health`` within ``timeout_s``, else why not.

    Only a dead or overloaded server counts: a 5xx answer, a refused or timed-out connection.
    Any other answer is left for the tracking call itself to judge.
    """
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s):
            return None
    except urllib.error.HTTPError as error:
        return f"HTTP {error.code}" if error.code >= 500 else None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        return None if isinstance(reason, ssl.SSLError) else str(reason)


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else "no message"


_REFUSALS = {"401": "HTTP 401: the login was refused", "403": "HTTP 403: permission denied"}
_REFUSAL_CODES = {"UNAUTHENTICATED": "401", "PERMISSION_DENIED": "403"}


def refusal(error: BaseException) -> str | None:
    """What an authentication or permission refusal says, or ``None`` for any other error.

    >>> refusal(RuntimeError("failed with error code 403 != 200"))
    'HTTP 403: permission denied'
    """
    status = _REFUSAL_CODES.get(str(getattr(error, "error_code", "")))
    if status is None:
        match = re.search(r"error code (401|403)\b", str(error))
        status = match.group(1) if match else None
    return _REFUSALS[status] if status else None


class _Outage:
    """Exponential backoff with one warning per outage and one note when it ends."""

    def __init__(self, backoff: tuple[float, float], where: str) -> None:
        self.backoff = backoff
        self.where = where
        self.failures = 0
        self.retry_at = 0.0
        self.since: float | None = None

    @property
    def failing(self) -> bool:
        return self.failures > 0

    def failed(self, problem: str, pending: str) -> None:
        first, largest = self.backoff
        self.failures += 1
        delay = min(largest, first * 2 ** (self.failures - 1))
        self.retry_at = time.monotonic() + delay
        if self.since is None:
            self.since = time.monotonic()
            logger.warning(
                "%s; %s kept in %s; delivery is retried until it succeeds (or later with `%s`)",
                problem,
                pending,
                self.where,
                RECOVER_COMMAND,
            )
        else:
            logger.debug("%s; retrying in %.1f s", problem, delay)

    def succeeded(self, uri: str, delivered: str) -> None:
        if self.since is not None:
            logger.info(
                "tracking server %s is back after %.1f s; delivered %s late",
                uri,
                time.monotonic() - self.since,
                delivered,
            )
        self.failures = 0
        self.retry_at = 0.0
        self.since = None


class DurableRunLogger:
    """Spools a run's metrics, tags, tables and artifacts and delivers them to MLflow.

    Logging calls never block on the network and never raise because of the server. Counters
    for benchmarks: ``points_logged``, ``points_delivered``, ``pending``, ``tracking_calls`` and
    ``flush_seconds`` (time spent in tracking calls).
    """

    def __init__(
        self,
        run_id: str,
        client: MlflowClient | None = None,
        config: SinkConfig = SinkConfig(),  # noqa: B008 - frozen, so sharing it is safe
    ) -> None:
        self.run_id = run_id
        self.client = client or MlflowClient()
        self.config = config
        self.tracking_uri = str(self.client.tracking_uri)
        self.root = Path(config.spool_root or default_spool_root())
        self.folder = spool.new_spool_dir(self.root, run_id)
        self._lock_file = WriterLock(self.folder)
        self._lock_file.acquire()
        spool.write_header(self.folder, run_id, self.tracking_uri)

        self._lock = threading.RLock()
        self._send_lock = threading.Lock()
        self._delivered = threading.Condition(self._lock)
        self._points: deque[Point] = deque()
        self._uploads: deque[dict[str, str]] = deque()
        self._tags: dict[str, str] = {}
        self._all_tags: dict[str, str] = {}
        self._published: set[str] = set()
        self._memory_tables: dict[str, list[pd.DataFrame]] = {}
        self._parts: dict[str, int] = {}
        self._known_keys: set[str] = set()
        self._end_status: str | None = None
        self._closed = False
        self._spool_ok = True
        self._dropped = 0
        self._orphans: list[Path] = []
        self._staged = 0
        self._published_at = -float("inf")

        self.points_logged = 0
        self.points_delivered = 0
        self.uploads_done = 0
        self.tracking_calls = 0
        self.flush_seconds = 0.0
        self._outage = _Outage(config.retry_backoff_s, str(self.folder))
        self._http = is_http_uri(self.tracking_uri)

        self._metrics = (self.folder / spool.METRICS).open(
            "a", encoding="utf-8", buffering=_SPOOL_BUFFER_BYTES
        )
        self._acks = (self.folder / spool.METRICS_ACKED).open("a", encoding="utf-8")
        self._flushed_at = time.monotonic()
        if config.sweep_orphans:
            self._orphans = _orphaned_spools(self.root, self.tracking_uri, self.folder)

        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        if config.threaded:
            self._thread = threading.Thread(
                target=self._run, name=f"audiodiag-sink-{run_id[:8]}", daemon=True
            )
            self._thread.start()
        _LIVE.add(self)

    # --- counters -------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Points logged but not yet accepted by the tracking store."""
        return self.points_logged - self.points_delivered - self._dropped

    @property
    def spool_dir(self) -> Path:
        return self.folder

    def _pending_work(self) -> bool:
        return bool(self._points or self._uploads or self._tags or self._published)

    # --- logging (caller side) ---------------------------------------------------------------

    def log(self, key: str, value: float, step: int, timestamp_ms: int | None = None) -> None:
        """Queues one point; the timestamp is fixed now so re-sending it cannot duplicate it."""
        self.log_many({key: value}, step, timestamp_ms)

    def log_many(
        self, metrics: Mapping[str, float], step: int, timestamp_ms: int | None = None
    ) -> None:
        """Queues several points sharing one step and timestamp."""
        timestamp = int(time.time() * 1000) if timestamp_ms is None else int(timestamp_ms)
        points = []
        for key, value in metrics.items():
            if key not in self._known_keys:
                validate_key(key)
                self._known_keys.add(key)
            points.append((key, float(value), timestamp, int(step)))
        if not points:
            return
        with self._lock:
            self._check_open()
            self.points_logged += len(points)
            self._points.extend(points)
            self._spool_points(points)
            overflow = len(self._points) - self.config.memory_points
            if overflow > 0 and not self._spool_ok:
                for _ in range(overflow):
                    self._points.popleft()
                self._dropped += overflow
            full = len(self._points) >= self.config.max_batch
        if full:
            self._wake.set()

    def set_tag(self, key: str, value: str) -> None:
        """Sets a tag soon (the latest value of a key wins)."""
        with self._lock:
            self._check_open()
            self._tags[key] = str(value)
            self._all_tags[key] = str(value)
            self._write_quietly(self.folder / spool.TAGS, json.dumps(self._all_tags))

    def append_rows(self, table: str, rows: pd.DataFrame | Mapping[str, np.ndarray]) -> None:
        """Appends rows (a DataFrame, or equally long columns by name) to ``table``; they are
        on disk when this returns (an Arrow IPC part, quick to write) and reach the run as
        ``<table_dir>/<table>.parquet`` when the logger closes (or through ``recover``)."""
        arrow = (
            pa.Table.from_pandas(rows, preserve_index=False)
            if isinstance(rows, pd.DataFrame)
            else pa.table(dict(rows))
        )
        if arrow.num_rows == 0:
            return
        with self._lock:
            self._check_open()
            index = self._parts.get(table, 0) + 1
            folder = self.folder / spool.TABLES / table
            try:
                folder.mkdir(parents=True, exist_ok=True)
                tmp = folder / f".part-{index:06d}.tmp"
                feather.write_feather(arrow, tmp, compression="uncompressed")
                tmp.rename(folder / f"part-{index:06d}{spool.PART_SUFFIX}")
                self._parts[table] = index
            except OSError as error:
                self._spool_failed(error)
                self._memory_tables.setdefault(table, []).append(arrow.to_pandas())

    def write_table(self, table: str, frame: pd.DataFrame) -> None:
        """Replaces ``<table_dir>/<table>.parquet`` (uploaded on :meth:`publish` and close)."""
        path = self.folder / spool.TABLES / f"{table}.parquet"
        self._write_file(path, lambda tmp: frame.to_parquet(tmp, index=False))

    def write_json(self, name: str, payload: Any) -> None:
        """Replaces ``<table_dir>/<name>.json`` (uploaded on :meth:`publish` and close)."""
        text = json.dumps(_finite_json(payload), indent=2, allow_nan=False, default=_json_default)
        path = self.folder / spool.TABLES / f"{name}.json"
        self._write_file(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))

    def _write_file(self, path: Path, write: Callable[[Path], Any]) -> None:
        with self._lock:
            self._check_open()
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.tmp")
                write(tmp)
                tmp.replace(path)
            except OSError as error:
                self._spool_failed(error)

    def publish(self) -> None:
        """Uploads the written tables soon (e.g. at an epoch end, for a live view), at most
        once per ``publish_interval_s`` (the first time at once; close uploads the last)."""
        now = time.monotonic()
        if now - self._published_at < self.config.publish_interval_s:
            return
        self._published_at = now
        with self._lock:
            self._published.update(p.name for p in self._written_tables())
        self._wake.set()

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        """Stages a copy of a file or folder and uploads it under ``artifact_path``."""
        source = Path(local_path)

        def copy(staged: Path) -> None:
            if source.is_dir():
                shutil.copytree(source, staged)
            else:
                shutil.copy2(source, staged)

        self._stage(source.name, artifact_path, copy)

    def _stage(self, name: str, artifact_path: str | None, write: Callable[[Path], Any]) -> None:
        """Writes an upload's payload into the spool and queues it. When the spool cannot be
        written, the payload is uploaded right away, or reported lost."""
        with self._lock:
            self._check_open()
            self._staged += 1
            staged = self.folder / spool.FILES / f"{self._staged:05d}" / name
            record = {"file": str(staged.relative_to(self.folder)), "artifact_path": artifact_path}
            try:
                staged.parent.mkdir(parents=True, exist_ok=True)
                write(staged)
                with (self.folder / spool.UPLOADS).open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps(record) + "\n")
            except OSError as error:
                self._spool_failed(error)
                self._upload_now(name, artifact_path, write)
                return
            self._uploads.append(record)
        self._wake.set()

    def _upload_now(self, name: str, artifact_path: str | None, write: Callable) -> None:
        try:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / name
                write(path)
                self.client.log_artifact(self.run_id, str(path), artifact_path)
        except Exception as error:
            logger.error(
                "artifact %s of run %s could not be spooled or uploaded (%s): it is lost",
                f"{artifact_path}/{name}" if artifact_path else name,
                self.run_id,
                first_line(error),
            )

    def log_text(self, text: str, artifact_file: str) -> None:
        """Like ``mlflow.log_text``, through the spool."""
        self._log_via_file(artifact_file, lambda path: path.write_text(text, encoding="utf-8"))

    def log_dict(self, payload: Any, artifact_file: str) -> None:
        """Like ``mlflow.log_dict`` (JSON), through the spool."""
        text = json.dumps(payload, indent=2, default=_json_default)
        self.log_text(text, artifact_file)

    def log_figure(self, figure: Any, artifact_file: str, dpi: int = 100) -> None:
        """Like ``mlflow.log_figure`` for a matplotlib figure, through the spool."""
        self._log_via_file(artifact_file, lambda path: figure.savefig(path, dpi=dpi))

    def _log_via_file(self, artifact_file: str, write: Callable[[Path], Any]) -> None:
        directory, _, name = artifact_file.rpartition("/")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            write(path)
            self.log_artifact(path, directory or None)

    def end_run(self, status: str = "FINISHED") -> None:
        """Ends the run with ``status`` once everything else has been delivered (at close, or
        through ``recover`` if the server is down until then)."""
        RunStatus.from_string(status)  # rejects unknown statuses now
        with self._lock:
            self._end_status = status
            self._write_quietly(self.folder / spool.END, json.dumps({"status": status}))

    # --- spool writing ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"run logger for run {self.run_id} is closed")

    def _spool_points(self, points: list[Point]) -> None:
        if not self._spool_ok:
            return
        try:
            self._metrics.write("".join(map(spool.point_line, points)))
            if time.monotonic() - self._flushed_at >= self.config.flush_interval_s:
                self._flush_spool()
        except (OSError, ValueError) as error:
            self._spool_failed(error)

    def _flush_spool(self) -> None:
        self._flushed_at = time.monotonic()
        if self._spool_ok:
            try:
                self._metrics.flush()
            except (OSError, ValueError) as error:
                self._spool_failed(error)

    def _write_quietly(self, path: Path, text: str) -> None:
        try:
            spool.atomic_write(path, text)
        except OSError as error:
            self._spool_failed(error)

    def _spool_failed(self, error: Exception) -> None:
        if not self._spool_ok:
            return
        self._spool_ok = False
        logger.error(
            "cannot write the spool %s (%s). Points and table rows of run %s are kept in "
            "memory only (up to %d points) and reach MLflow while this process runs; if it "
            "ends before the tracking server has them, they are lost.",
            self.folder,
            error,
            self.run_id,
            self.config.memory_points,
        )

    # --- delivery -----------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._next_wait())
            self._wake.clear()
            with self._lock:
                self._flush_spool()
            try:
                self._attempt(force=False)
                if self._orphans and not self._outage.failing and not self._pending_work():
                    self._recover_orphan(self._orphans.pop(0))
            except Exception:  # keep delivering whatever went wrong this time
                logger.exception("delivery for run %s failed unexpectedly", self.run_id)

    def _next_wait(self) -> float:
        interval = max(self.config.flush_interval_s, 0.01)
        if self._outage.failing:
            return max(0.01, min(interval, self._outage.retry_at - time.monotonic()))
        return interval

    def _attempt(self, force: bool) -> bool:
        """One delivery attempt of everything pending; ``True`` when nothing is left."""
        with self._send_lock:
            if not self._pending_work():
                return True
            if not force and time.monotonic() < self._outage.retry_at:
                return False
            started = time.perf_counter()
            try:
                done = self._deliver()
            finally:
                self.flush_seconds += time.perf_counter() - started
                with self._delivered:
                    self._delivered.notify_all()
            return done

    def _deliver(self) -> bool:
        if self._http:
            problem = check_health(self.tracking_uri, self.config.health_timeout_s)
            if problem is not None:
                self._failed(f"tracking server {self.tracking_uri} unreachable ({problem})")
                return False
        sent = 0
        try:
            sent += self._deliver_points()
            self._deliver_tags()
            self._deliver_uploads()
            self._deliver_published()
        except Exception as error:  # any failure keeps the rest queued
            refused = refusal(error)
            if refused:
                problem = (
                    f"tracking server {self.tracking_uri} refused the run's data ({refused}; "
                    "check MLFLOW_TRACKING_USERNAME/PASSWORD and the user's permission on the "
                    "experiment)"
                )
            else:
                problem = (
                    f"tracking server {self.tracking_uri} did not accept the run's data "
                    f"({type(error).__name__}: {first_line(error)})"
                )
            self._failed(problem)
            return False
        self._outage.succeeded(self.tracking_uri, f"{sent} points")
        return not self._pending_work()

    def _failed(self, problem: str) -> None:
        with self._lock:
            pending = f"{len(self._points)} points and {len(self._uploads)} artifacts are"
        self._outage.failed(problem, pending)

    def _deliver_points(self) -> int:
        sent = 0
        while True:
            with self._lock:
                batch = list(itertools.islice(self._points, self.config.max_batch))
            if not batch:
                return sent
            metrics = [Metric(key, value, timestamp, step) for key, value, timestamp, step in batch]
            self.tracking_calls += 1
            self.client.log_batch(self.run_id, metrics=metrics)
            with self._lock:
                for _ in batch:
                    self._points.popleft()
                self.points_delivered += len(batch)
                sent += len(batch)
                if self._spool_ok:
                    try:
                        self._acks.write(f"{self.points_delivered}\n")
                        self._acks.flush()
                    except (OSError, ValueError) as error:
                        self._spool_failed(error)

    def _deliver_tags(self) -> None:
        while True:
            with self._lock:
                if not self._tags:
                    return
                key, value = next(iter(self._tags.items()))
            self.tracking_calls += 1
            self.client.set_tag(self.run_id, key, value)
            with self._lock:
                if self._tags.get(key) == value:
                    del self._tags[key]

    def _deliver_uploads(self) -> None:
        while True:
            with self._lock:
                if not self._uploads:
                    return
                record = self._uploads[0]
            _upload(self.client, self.run_id, self.folder, record)
            self.tracking_calls += 1
            with self._lock:
                self._uploads.popleft()
                self.uploads_done += 1
                self._write_quietly(self.folder / spool.UPLOADS_ACKED, f"{self.uploads_done}\n")

    def _deliver_published(self) -> None:
        with self._lock:
            names, self._published = set(self._published), set()
        try:
            for path in self._written_tables():
                if path.name in names:
                    self.tracking_calls += 1
                    self.client.log_artifact(self.run_id, str(path), self.config.table_dir)
        except Exception:
            with self._lock:
                self._published |= names
            raise

    def _written_tables(self) -> list[Path]:
        return _table_files(self.folder / spool.TABLES)

    def _recover_orphan(self, folder: Path) -> None:
        try:
            result = recover_spool(folder, health_timeout_s=self.config.health_timeout_s)
        except SpoolRecoveryError as error:
            logger.info("leftover spool %s not delivered yet: %s", folder, error)
            return
        if result is not None:
            logger.info("delivered the leftover spool of an ended process: %s", result)

    # --- flush and close ------------------------------------------------------------------------

    def flush(self, timeout_s: float | None = None) -> bool:
        """Blocks until everything queued is delivered or ``timeout_s`` passes (``None``: no
        limit). Tries once at once (even during a backoff), then keeps to the retry schedule."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._lock:
            self._flush_spool()
        force = True
        while not self._attempt(force):
            force = False
            wait = max(0.01, self._outage.retry_at - time.monotonic())
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                wait = min(wait, remaining)
            time.sleep(min(wait, 1.0))
        return True

    def close(self, timeout_s: float | None = None) -> bool:
        """Uploads the tables, delivers everything (waiting up to ``timeout_s``, default
        ``close_timeout_s``, for an outage to end), ends the run if :meth:`end_run` asked for
        it, and removes the spool. Returns whether everything arrived; otherwise logs an ERROR
        that says what is kept where and how to deliver it."""
        if self._closed:
            return self.pending == 0
        timeout_s = self.config.close_timeout_s if timeout_s is None else timeout_s
        self._finish_tables()
        delivered = self.flush(timeout_s)
        if delivered and self._end_status is not None:
            delivered = self._terminate()
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.config.health_timeout_s + 5.0)
        with self._lock:
            self._closed = True
            for handle in (self._metrics, self._acks):
                try:
                    handle.close()
                except OSError as error:
                    logger.error("cannot close spool file %s (%s)", handle.name, error)
        _LIVE.discard(self)
        if delivered:
            self._lock_file.release()
            spool.remove_spool(self.folder)
            return True
        self._report_left()
        self._lock_file.release()  # from now on `recover` may take the spool
        return False

    def _finish_tables(self) -> None:
        """Stages every appended table as one Parquet file, and every written table."""
        tables = self.folder / spool.TABLES
        for table in sorted(set(self._parts) | set(self._memory_tables)):
            frame = _concat_parts(tables / table, self._memory_tables.get(table))
            if frame is not None:
                self._stage(
                    f"{table}.parquet",
                    self.config.table_dir,
                    lambda path, frame=frame: frame.to_parquet(path, index=False),
                )
                self._write_quietly(tables / f"{table}.staged", "")
        for path in self._written_tables():
            self.log_artifact(path, self.config.table_dir)

    def _terminate(self) -> bool:
        try:
            self.client.set_terminated(self.run_id, self._end_status)
        except Exception as error:
            logger.error("could not end run %s: %s", self.run_id, first_line(error))
            return False
        return True

    def _report_left(self) -> None:
        pending, uploads = self.pending, len(self._uploads)
        if self._spool_ok:
            logger.error(
                "%d metric points and %d artifacts of run %s did not reach %s. They are kept in "
                "%s; deliver them when the server is back with `%s %s`.",
                pending,
                uploads,
                self.run_id,
                self.tracking_uri,
                self.folder,
                RECOVER_COMMAND,
                self.folder,
            )
        else:
            logger.error(
                "%d metric points of run %s did not reach %s and could not be spooled: they "
                "are lost%s.",
                pending + self._dropped,
                self.run_id,
                self.tracking_uri,
                f" ({self._dropped} of them dropped from memory earlier)" if self._dropped else "",
            )

    def __enter__(self) -> DurableRunLogger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


_LIVE: weakref.WeakSet[DurableRunLogger] = weakref.WeakSet()


@atexit.register
def _close_live_loggers() -> None:
    """At interpreter exit (also after Ctrl-C) a short last delivery try, then close."""
    for live in list(_LIVE):
        try:
            live.close(timeout_s=2.0)
        except Exception as error:  # never fail interpreter shutdown
            logger.error("closing the run logger of run %s failed: %s", live.run_id, error)


def _finite_json(value: Any) -> Any:
    """``value`` with NaN and infinities as ``null`` (JSON has no such numbers)."""
    if isinstance(value, dict):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _upload(client: MlflowClient, run_id: str, folder: Path, record: dict[str, str]) -> None:
    local = folder / record["file"]
    if local.is_dir():
        target = record.get("artifact_path")
        name = local.name if not target else f"{target}/{local.name}"
        client.log_artifacts(run_id, str(local), name)
    else:
        client.log_artifact(run_id, str(local), record.get("artifact_path"))


def _table_files(folder: Path) -> list[Path]:
    """The written (not appended) tables of a spool: ``<name>.parquet`` and ``<name>.json``."""
    if not folder.exists():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix in (".parquet", ".json") and not p.name.startswith(".")
    )


def _concat_parts(folder: Path, memory: list[pd.DataFrame] | None = None) -> pd.DataFrame | None:
    frames = [_read_part(p) for p in spool.table_parts(folder)]
    frames += memory or []
    return pd.concat(frames, ignore_index=True) if frames else None


def _read_part(path: Path) -> pd.DataFrame:
    if path.suffix == ".parquet":  # written by earlier versions
        return pd.read_parquet(path)
    return feather.read_table(path).to_pandas()


def _orphaned_spools(root: Path, tracking_uri: str, own: Path) -> list[Path]:
    """Spools of the same tracking store whose writer process is gone."""
    found = []
    for folder in spool.spool_dirs(root):
        if folder == own:
            continue
        try:
            header = spool.read_header(folder)
        except SpoolRecoveryError:
            continue
        if header.get("tracking_uri") != tracking_uri:
            continue
        lock = WriterLock(folder)
        if lock.acquire():
            lock.release()
            found.append(folder)
    return found


# --- recovery ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recovered:
    """What ``recover`` delivered from one spool."""

    run_id: str
    points: int
    uploads: int
    tables: int
    status: str | None

    def __str__(self) -> str:
        ended = f", run ended {self.status}" if self.status else ""
        return (
            f"run {self.run_id}: {self.points} metric points, {self.uploads} artifacts and "
            f"{self.tables} tables delivered{ended}"
        )


def recover_spool(
    folder: Path,
    client: MlflowClient | None = None,
    max_batch: int = 1000,
    health_timeout_s: float = 2.0,
    table_dir: str = "monitor",
) -> Recovered | None:
    """Delivers one spool whose writer is gone and ends its run; ``None`` (nothing touched)
    when a live process still holds the spool. The spool is removed once delivered."""
    lock = WriterLock(folder)
    if not lock.acquire():
        return None
    try:
        return _recover_locked(folder, client, max_batch, health_timeout_s, table_dir)
    finally:
        lock.release()


def _recover_locked(
    folder: Path,
    client: MlflowClient | None,
    max_batch: int,
    health_timeout_s: float,
    table_dir: str,
) -> Recovered:
    header = spool.read_header(folder)
    run_id = header["run_id"]
    client = client or MlflowClient(header["tracking_uri"])
    uri = str(client.tracking_uri)
    if is_http_uri(uri):
        problem = check_health(uri, health_timeout_s)
        if problem is not None:
            raise SpoolRecoveryError(
                f"tracking server {uri} unreachable ({problem}); the data of run {run_id} stays "
                f"in {folder}. Retry when it is back."
            )
    try:
        points = _resend_points(client, run_id, folder, max_batch)
        uploads = _resend_uploads(client, run_id, folder)
        tables = _resend_tables(client, run_id, folder, table_dir)
        tags_path = folder / spool.TAGS
        if tags_path.exists():
            for key, value in json.loads(tags_path.read_text(encoding="utf-8")).items():
                client.set_tag(run_id, key, value)
        status = _end_status(client, run_id, folder)
    except SpoolRecoveryError:
        raise
    except Exception as error:
        raise SpoolRecoveryError(
            f"delivering {folder} to {uri} failed ({type(error).__name__}: "
            f"{first_line(error)}); what was not delivered stays there"
        ) from error
    spool.remove_spool(folder)
    return Recovered(run_id, points, uploads, tables, status)


def _resend_points(client: MlflowClient, run_id: str, folder: Path, max_batch: int) -> int:
    points = spool.read_points(folder / spool.METRICS)
    ack_path = folder / spool.METRICS_ACKED
    acked = spool.read_acked(ack_path)
    sent = 0
    with ack_path.open("a", encoding="utf-8") as acks:
        for start in range(acked, len(points), max_batch):
            batch = points[start : start + max_batch]
            client.log_batch(run_id, metrics=[Metric(*point) for point in batch])
            sent += len(batch)
            acks.write(f"{acked + sent}\n")
            acks.flush()
    return sent


def _resend_uploads(client: MlflowClient, run_id: str, folder: Path) -> int:
    records = spool.read_jsonl(folder / spool.UPLOADS)
    ack_path = folder / spool.UPLOADS_ACKED
    done = spool.read_acked(ack_path)
    for index in range(done, len(records)):
        _upload(client, run_id, folder, records[index])
        spool.atomic_write(ack_path, f"{index + 1}\n")
    return len(records) - done


def _resend_tables(client: MlflowClient, run_id: str, folder: Path, table_dir: str) -> int:
    """Appended tables the writer never staged, and written tables (they are small)."""
    tables = folder / spool.TABLES
    if not tables.exists():
        return 0
    count = 0
    with tempfile.TemporaryDirectory() as tmp:
        for part_folder in sorted(p for p in tables.iterdir() if p.is_dir()):
            if (tables / f"{part_folder.name}.staged").exists():
                continue
            frame = _concat_parts(part_folder)
            if frame is not None:
                path = Path(tmp) / f"{part_folder.name}.parquet"
                frame.to_parquet(path, index=False)
                client.log_artifact(run_id, str(path), table_dir)
                count += 1
        for path in _table_files(tables):
            client.log_artifact(run_id, str(path), table_dir)
            count += 1
    return count


def _end_status(client: MlflowClient, run_id: str, folder: Path) -> str | None:
    """The status the writer asked for; a run still RUNNING whose writer died ends KILLED."""
    end = folder / spool.END
    status = json.loads(end.read_text(encoding="utf-8"))["status"] if end.exists() else None
    if status is None and client.get_run(run_id).info.status == "RUNNING":
        status = "KILLED"
    if status is not None:
        client.set_terminated(run_id, status)
    return status


def recover(
    path: Path | str | None = None,
    client: MlflowClient | None = None,
    health_timeout_s: float = 2.0,
) -> list[Recovered]:
    """Delivers every spool under ``path`` (default: the spool root) whose writer process is
    gone; spools of running processes are left alone. Raises :class:`SpoolRecoveryError` for
    the first spool that cannot be delivered (after trying the others)."""
    done: list[Recovered] = []
    errors: list[str] = []
    for folder in spool.spool_dirs(Path(path) if path else default_spool_root()):
        try:
            result = recover_spool(folder, client, health_timeout_s=health_timeout_s)
        except SpoolRecoveryError as error:
            errors.append(str(error))
            continue
        if result is None:
            logger.info("skipping %s: the process writing it is still running", folder)
        else:
            logger.info("%s (from %s)", result, folder)
            done.append(result)
    if errors:
        raise SpoolRecoveryError("; ".join(errors))
    return done


def main(argv: list[str] | None = None) -> int:
    """``python -m mlflow_audiodiag.monitoring.sink recover [PATH] [--tracking-uri URI]``."""
    parser = argparse.ArgumentParser(
        prog="python -m mlflow_audiodiag.monitoring.sink",
        description="Deliver what runs spooled while the MLflow tracking server was down.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser(
        "recover", help="deliver the spools of processes that have ended, and end their runs"
    )
    command.add_argument(
        "spool", nargs="?", type=Path, default=None, help="a spool or run folder (default: all)"
    )
    command.add_argument(
        "--tracking-uri", default=None, help="default: the URI recorded in each spool"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    client = MlflowClient(args.tracking_uri) if args.tracking_uri else None
    try:
        results = recover(args.spool, client)
    except SpoolRecoveryError as error:
        logger.error("%s", error)
        return 1
    for result in results:
        print(result)
    print(f"delivered {len(results)} spool(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
