"""Durable, non-blocking metric logging to MLflow.

``DurableMetricLogger.log`` only appends to an in-memory queue and to an append-only spool file;
a background thread sends the points with ``MlflowClient.log_batch``. When the tracking server
is down, points stay queued and spooled, one warning is logged, and delivery resumes with
exponential backoff. A spool left behind by a crashed process is re-sent with
``DurableMetricLogger.recover`` or ``python -m mlflow_audiodiag.monitoring.sink recover DIR``.

Spool format (one logger = one ``metrics-*.jsonl`` file plus a ``.acked`` sibling):
the first line is a JSON header with the run id; every further line is a JSON list
``[key, value, timestamp_ms, step]``. The ``.acked`` file is append-only; each line is the
number of points (from the start of the spool) that the tracking store has accepted. Points are
delivered in order, so everything after the largest acknowledged count is undelivered. Re-sending
an acknowledged point is harmless: MLflow's SQL store de-duplicates identical metric points.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import itertools
import json
import logging
import os
import posixpath
import re
import ssl
import threading
import time
import urllib.error
import urllib.request
import uuid
import weakref
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from mlflow_audiodiag.data.synthetic import default_cache_root
from mlflow_audiodiag.errors import AudioDiagError

logger = logging.getLogger(__name__)

SPOOL_FORMAT = "mlflow-audiodiag-metric-spool"
SPOOL_VERSION = 1
_SPOOL_GLOB = "metrics-*.jsonl"
_ACK_SUFFIX = ".acked"
_RECOVER_COMMAND = "python -m mlflow_audiodiag.monitoring.sink recover"
_KEY_PATTERN = re.compile(r"^[/\w.\- :]*$")
_MAX_KEY_LENGTH = 250
_SPOOL_BUFFER_BYTES = 1 << 16

Point = tuple[str, float, int, int]  # key, value, timestamp_ms, step


class SpoolRecoveryError(AudioDiagError):
    """Spooled metric points could not be re-sent to the tracking store."""


@dataclass(frozen=True)
class SinkConfig:
    """How often and how much to send, where to spool, and how to back off."""

    flush_interval_s: float = 5.0
    max_batch: int = 1000  # MLflow's log_batch limit for metrics
    spool_dir: Path | None = None  # default: <cache root>/spool/<run_id>
    health_timeout_s: float = 2.0
    retry_backoff_s: tuple[float, float] = (1.0, 30.0)  # first and largest retry delay
    background: bool = True

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


def default_spool_root() -> Path:
    """``<cache root>/spool``; the cache root is ``$AUDIODIAG_CACHE_DIR`` or ``~/.cache/...``."""
    return default_cache_root() / "spool"


def is_http_uri(uri: str) -> bool:
    return urlparse(uri).scheme in ("http", "https")


def check_health(uri: str, timeout_s: float) -> str | None:
    """``None`` when the server at ``uri`` answers ``/health`` within ``timeout_s``, else why not.

    Only a dead or overloaded server counts: a 5xx answer, a refused or timed-out connection.
    Any other answer (a 404 behind a proxy, a certificate MLflow is configured to accept) is
    left for ``log_batch`` to judge.
    """
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s):
            return None
    except urllib.error.HTTPError as error:
        return f"HTTP {error.code}" if error.code >= 500 else None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        return None if isinstance(reason, ssl.SSLError) else str(reason)


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


class DurableMetricLogger:
    """Queues metric points, spools them to disk and delivers them to MLflow in batches.

    ``log``/``log_many`` never block on the network and never raise because of the server.
    Counters for benchmarks: ``points_logged``, ``points_delivered``, ``tracking_calls``,
    ``flush_seconds`` and ``pending``.
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
        self._http = is_http_uri(self.tracking_uri)

        self.points_logged = 0
        self.points_delivered = 0
        self.tracking_calls = 0
        self.flush_seconds = 0.0

        self._lock = threading.Lock()
        self._delivered = threading.Condition(self._lock)
        self._send_lock = threading.Lock()
        self._queue: deque[Point] = deque()
        self._known_keys: set[str] = set()
        self._closed = False
        self._force = False
        self._failures = 0
        self._retry_at = 0.0
        self._outage_since: float | None = None

        self._default_dir = config.spool_dir is None
        self.spool_dir = Path(config.spool_dir or default_spool_root() / run_id)
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        stem = f"metrics-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.spool_path = self.spool_dir / f"{stem}.jsonl"
        self.ack_path = self.spool_dir / f"{stem}{_ACK_SUFFIX}"
        self._spool = self.spool_path.open("w", encoding="utf-8", buffering=_SPOOL_BUFFER_BYTES)
        self._acks = self.ack_path.open("w", encoding="utf-8")
        header = {
            "format": SPOOL_FORMAT,
            "version": SPOOL_VERSION,
            "run_id": run_id,
            "tracking_uri": self.tracking_uri,
            "pid": os.getpid(),
        }
        self._spool.write(json.dumps(header) + "\n")
        self._spool.flush()
        self._spool_ok = True
        self._spool_flushed_at = time.monotonic()

        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        if config.background:
            self._thread = threading.Thread(
                target=self._run, name=f"metric-sink-{run_id[:8]}", daemon=True
            )
            self._thread.start()
        _LIVE_LOGGERS.add(self)

    # --- training-thread side -------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Points logged but not yet accepted by the tracking store."""
        return len(self._queue)

    def log(self, key: str, value: float, step: int, timestamp_ms: int | None = None) -> None:
        """Queues one point; the timestamp is fixed now so re-sending it cannot duplicate it."""
        self.log_many({key: value}, step, timestamp_ms)

    def log_many(
        self, metrics: Mapping[str, float], step: int, timestamp_ms: int | None = None
    ) -> None:
        """Queues several points sharing one step and timestamp."""
        timestamp = int(time.time() * 1000) if timestamp_ms is None else int(timestamp_ms)
        step = int(step)
        points = []
        for key, value in metrics.items():
            if key not in self._known_keys:
                validate_key(key)
                self._known_keys.add(key)
            points.append((key, float(value), timestamp, step))
        if not points:
            return
        lines = "".join(json.dumps(point) + "\n" for point in points)
        max_batch = self.config.max_batch
        with self._lock:
            if self._closed:
                raise RuntimeError(f"metric logger for run {self.run_id} is closed")
            before = len(self._queue)
            self._queue.extend(points)
            self.points_logged += len(points)
            self._write_spool(lines)
            if time.monotonic() - self._spool_flushed_at >= self.config.flush_interval_s:
                self._flush_spool()
        crossed = before // max_batch != (before + len(points)) // max_batch
        if crossed and self._thread is not None and self._failures == 0:
            self._wake.set()

    def _write_spool(self, lines: str) -> None:
        if self._closed or not self._spool_ok:
            return
        try:
            self._spool.write(lines)
        except (OSError, ValueError) as error:
            self._spool_failed(error)

    def _flush_spool(self) -> None:
        """Pushes buffered spool lines to the OS. Caller holds ``_lock``."""
        self._spool_flushed_at = time.monotonic()
        if self._closed or not self._spool_ok:
            return
        try:
            self._spool.flush()
        except (OSError, ValueError) as error:
            self._spool_failed(error)

    def _spool_failed(self, error: Exception) -> None:
        self._spool_ok = False
        logger.error(
            "cannot write metric spool %s (%s); points for run %s are now kept in memory only",
            self.spool_path,
            error,
            self.run_id,
        )

    # --- delivery ---------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._next_wait())
            self._wake.clear()
            with self._lock:
                self._flush_spool()
                force, self._force = self._force, False
            try:
                self._attempt(force)
            except Exception:  # keep delivering whatever went wrong this time
                logger.exception("metric delivery for run %s failed unexpectedly", self.run_id)

    def _next_wait(self) -> float:
        interval = max(self.config.flush_interval_s, 0.01)
        if self._failures:
            return max(0.01, min(interval, self._retry_at - time.monotonic()))
        return interval

    def _attempt(self, force: bool) -> bool:
        """One delivery attempt of everything pending now; ``True`` when nothing is left."""
        with self._send_lock:
            if not self._queue:
                return True
            if not force and time.monotonic() < self._retry_at:
                return False
            started = time.perf_counter()
            try:
                return self._deliver_pending()
            finally:
                self.flush_seconds += time.perf_counter() - started
                with self._delivered:
                    self._delivered.notify_all()

    def _deliver_pending(self) -> bool:
        todo = len(self._queue)
        if self._http:
            problem = check_health(self.tracking_uri, self.config.health_timeout_s)
            if problem is not None:
                self._on_failure(f"tracking server {self.tracking_uri} unreachable ({problem})")
                return False
        sent = 0
        while sent < todo and not self._closed:
            with self._lock:
                batch = list(itertools.islice(self._queue, min(self.config.max_batch, todo - sent)))
            if not batch:
                break
            metrics = [Metric(key, value, timestamp, step) for key, value, timestamp, step in batch]
            self.tracking_calls += 1
            try:
                self.client.log_batch(self.run_id, metrics=metrics)
            except Exception as error:  # any failure keeps the points queued
                if sent:
                    self._finish_outage(sent)
                self._on_failure(
                    f"tracking server {self.tracking_uri} did not accept log_batch "
                    f"({type(error).__name__}: {_first_line(error)})"
                )
                return False
            with self._lock:
                for _ in batch:
                    self._queue.popleft()
                self.points_delivered += len(batch)
                self._record_ack()
            sent += len(batch)
        self._finish_outage(sent)
        return not self._queue

    def _record_ack(self) -> None:
        """Appends the delivered count to the ack file. Caller holds ``_lock``."""
        if self._closed or not self._spool_ok:
            return
        try:
            self._acks.write(f"{self.points_delivered}\n")
            self._acks.flush()
        except (OSError, ValueError) as error:
            self._spool_failed(error)

    def _on_failure(self, problem: str) -> None:
        first, largest = self.config.retry_backoff_s
        self._failures += 1
        delay = min(largest, first * 2 ** (self._failures - 1))
        self._retry_at = time.monotonic() + delay
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            logger.warning(
                "%s; %d points kept in memory and in spool file %s; "
                "delivery resumes when it is back",
                problem,
                len(self._queue),
                self.spool_path,
            )
        else:
            logger.debug("%s; retrying in %.1f s", problem, delay)

    def _finish_outage(self, delivered: int) -> None:
        self._failures = 0
        self._retry_at = 0.0
        if self._outage_since is not None:
            logger.info(
                "tracking server %s is back after %.1f s; delivered %d points late",
                self.tracking_uri,
                time.monotonic() - self._outage_since,
                delivered,
            )
            self._outage_since = None

    # --- flush and close --------------------------------------------------------------------

    def flush(self, timeout_s: float | None = None) -> bool:
        """Blocks until every pending point is delivered or ``timeout_s`` passes.

        Tries once immediately (even during a backoff), then keeps to the retry schedule.
        Returns whether everything was delivered. ``None`` waits without limit.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._lock:
            self._flush_spool()
        if self._thread is None or not self._thread.is_alive():
            return self._flush_here(deadline)
        with self._delivered:
            self._force = True
            self._wake.set()
            while self._queue:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._delivered.wait(remaining)
            return True

    def _flush_here(self, deadline: float | None) -> bool:
        force = True
        while not self._attempt(force):
            force = False
            wait = max(0.0, self._retry_at - time.monotonic())
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                wait = min(wait, remaining)
            time.sleep(wait)
        return True

    def close(self, timeout_s: float = 30.0) -> bool:
        """Final flush, stops the thread; removes the spool if everything was delivered.

        Returns whether everything was delivered; otherwise logs an ERROR that names the spool
        and how to re-send it.
        """
        if self._closed:
            return not self._queue
        delivered = self.flush(timeout_s)
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=max(1.0, self.config.health_timeout_s + 1.0))
        with self._lock:
            self._flush_spool()
            self._closed = True
            for handle in (self._spool, self._acks):
                try:
                    handle.close()
                except OSError as error:
                    logger.error("cannot close metric spool file %s (%s)", handle.name, error)
        _LIVE_LOGGERS.discard(self)
        if delivered and not self._queue:
            self._remove_spool()
            return True
        logger.error(
            "%d metric points for run %s were not delivered to %s. They are kept in %s; "
            "re-send them when the server is back with `%s %s` "
            "(or DurableMetricLogger.recover(%r)).",
            len(self._queue),
            self.run_id,
            self.tracking_uri,
            self.spool_path if self._spool_ok else "memory only (the spool could not be written)",
            _RECOVER_COMMAND,
            self.spool_dir,
            str(self.spool_dir),
        )
        return False

    def _remove_spool(self) -> None:
        for path in (self.spool_path, self.ack_path):
            path.unlink(missing_ok=True)
        if self._default_dir:
            with contextlib.suppress(OSError):  # other spools are still there
                self.spool_dir.rmdir()

    def __enter__(self) -> DurableMetricLogger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- recovery ---------------------------------------------------------------------------

    @classmethod
    def recover(
        cls,
        spool_dir: Path | str,
        client: MlflowClient | None = None,
        max_batch: int = 1000,
        health_timeout_s: float = 2.0,
    ) -> int:
        """Re-sends the undelivered points of every spool under ``spool_dir`` (or one spool file).

        Meant for spools left by a process that ended without delivering everything. A spool is
        removed once all its points are accepted. Returns the number of points sent. ``client``
        defaults to one for the tracking URI recorded in each spool.
        """
        root = Path(spool_dir)
        paths = [root] if root.is_file() else sorted(root.rglob(_SPOOL_GLOB))
        total = 0
        for path in paths:
            if path.resolve() in _open_spools():
                logger.info("skipping %s: a logger in this process is still writing it", path)
                continue
            total += _recover_file(path, client, max_batch, health_timeout_s)
        return total


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else "no message"


_LIVE_LOGGERS: weakref.WeakSet[DurableMetricLogger] = weakref.WeakSet()


def _open_spools() -> set[Path]:
    return {logger_.spool_path.resolve() for logger_ in list(_LIVE_LOGGERS)}


@atexit.register
def _close_live_loggers() -> None:
    """At interpreter exit (also after Ctrl-C) a short last delivery try, then close."""
    for live in list(_LIVE_LOGGERS):
        try:
            live.close(timeout_s=2.0)
        except Exception as error:  # never fail interpreter shutdown
            logger.error("closing metric logger for run %s failed: %s", live.run_id, error)


def _read_spool(path: Path) -> tuple[dict, list[Point]]:
    with path.open(encoding="utf-8") as handle:
        try:
            header = json.loads(handle.readline())
        except ValueError:
            header = {}
        if not isinstance(header, dict) or header.get("format") != SPOOL_FORMAT:
            raise SpoolRecoveryError(f"{path} is not a metric spool: its first line is no header")
        points: list[Point] = []
        for line in handle:
            try:
                key, value, timestamp, step = json.loads(line)
            except ValueError:
                break  # a line cut short when the process died; nothing follows it
            points.append((key, float(value), int(timestamp), int(step)))
    return header, points


def _read_acked(path: Path) -> int:
    if not path.exists():
        return 0
    counts = [int(line) for line in path.read_text(encoding="utf-8").split() if line.isdigit()]
    return max(counts, default=0)


def _iter_batches(points: list[Point], size: int) -> Iterator[list[Point]]:
    for start in range(0, len(points), size):
        yield points[start : start + size]


def _recover_file(
    path: Path, client: MlflowClient | None, max_batch: int, health_timeout_s: float
) -> int:
    header, points = _read_spool(path)
    ack_path = path.with_suffix(_ACK_SUFFIX)
    acked = _read_acked(ack_path)
    run_id = header["run_id"]
    client = client or MlflowClient(header["tracking_uri"])
    uri = str(client.tracking_uri)
    undelivered = points[acked:]
    if undelivered and is_http_uri(uri):
        problem = check_health(uri, health_timeout_s)
        if problem is not None:
            raise SpoolRecoveryError(
                f"tracking server {uri} unreachable ({problem}); {len(undelivered)} points of "
                f"run {run_id} stay in {path}. Retry when it is back."
            )
    sent = 0
    with ack_path.open("a", encoding="utf-8") as acks:
        for batch in _iter_batches(undelivered, max_batch):
            metrics = [Metric(key, value, timestamp, step) for key, value, timestamp, step in batch]
            try:
                client.log_batch(run_id, metrics=metrics)
            except Exception as error:
                raise SpoolRecoveryError(
                    f"re-sending {path} to {uri} failed after {sent} of {len(undelivered)} "
                    f"points ({type(error).__name__}: {_first_line(error)}); the rest stay there"
                ) from error
            sent += len(batch)
            acks.write(f"{acked + sent}\n")
            acks.flush()
    path.unlink()
    ack_path.unlink(missing_ok=True)
    logger.info("re-sent %d metric points of run %s from %s to %s", sent, run_id, path, uri)
    return sent


def main(argv: list[str] | None = None) -> int:
    """``python -m mlflow_audiodiag.monitoring.sink recover [DIR] [--tracking-uri URI]``."""
    parser = argparse.ArgumentParser(
        prog="python -m mlflow_audiodiag.monitoring.sink",
        description="Re-send metric points spooled while the MLflow tracking server was down.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    recover = commands.add_parser("recover", help="re-send undelivered spooled points")
    recover.add_argument(
        "spool", nargs="?", type=Path, default=None, help="spool folder or file (default: all)"
    )
    recover.add_argument(
        "--tracking-uri", default=None, help="default: the URI recorded in each spool"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    client = MlflowClient(args.tracking_uri) if args.tracking_uri else None
    try:
        sent = DurableMetricLogger.recover(args.spool or default_spool_root(), client)
    except SpoolRecoveryError as error:
        logger.error("%s", error)
        return 1
    print(f"re-sent {sent} metric points")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
