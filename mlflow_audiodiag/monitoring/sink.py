"""Durable, non-blocking metric logging to MLflow.

``DurableMetricLogger.log`` only appends to an append-only spool file (see
:mod:`~mlflow_audiodiag.monitoring.spool`). By default a separate delivery process running on
idle CPU time only follows that file and sends the points with ``MlflowClient.log_batch``, so
the training process spends nothing on the tracking store; ``delivery="thread"`` sends them from a
background thread instead (points then also wait in memory), ``delivery="caller"`` only on
``flush``/``close``. When the tracking server is down, points stay spooled, one warning is
logged, and delivery resumes with exponential backoff. A spool left behind by a crashed
process is re-sent with ``DurableMetricLogger.recover`` or
``python -m mlflow_audiodiag.monitoring.sink recover DIR``.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import logging
import os
import posixpath
import re
import threading
import time
import uuid
import weakref
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from mlflow_audiodiag.data.synthetic import default_cache_root
from mlflow_audiodiag.monitoring.delivery import (
    BatchSender,
    DeliveryProcess,
    check_health,
    first_line,
    is_http_uri,
    iter_batches,
)
from mlflow_audiodiag.monitoring.spool import (
    ACK_SUFFIX,
    SPOOL_GLOB,
    SpoolRecoveryError,
    header_line,
    point_line,
    read_acked,
    read_spool,
)

__all__ = [
    "DELIVERY_MODES",
    "DurableMetricLogger",
    "SinkConfig",
    "SpoolRecoveryError",
    "check_health",
    "default_spool_root",
    "is_http_uri",
    "validate_key",
]

logger = logging.getLogger(__name__)

DELIVERY_MODES = ("process", "thread", "caller")
_RECOVER_COMMAND = "python -m mlflow_audiodiag.monitoring.sink recover"
_KEY_PATTERN = re.compile(r"^[/\w.\- :]*$")
_MAX_KEY_LENGTH = 250
_SPOOL_BUFFER_BYTES = 1 << 16
_WAIT_POLL_S = 0.02
# A delivery process kept off the CPU this long while the trainer waits is taken over.
_STARVED_WINDOW_S = 2.0


@dataclass(frozen=True)
class SinkConfig:
    """How and how often to send, where to spool, and how to back off.

    ``delivery``: ``"process"`` (a separate low-priority process follows the spool),
    ``"thread"`` (a background thread of this process) or ``"caller"`` (only on ``flush`` and
    ``close``, in the calling thread).
    """

    flush_interval_s: float = 5.0
    max_batch: int = 1000  # MLflow's log_batch limit for metrics
    spool_dir: Path | None = None  # default: <cache root>/spool/<run_id>
    health_timeout_s: float = 2.0
    retry_backoff_s: tuple[float, float] = (1.0, 30.0)  # first and largest retry delay
    delivery: str = "process"
    close_timeout_s: float = 60.0  # how long an orphaned delivery process keeps trying

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
        if self.delivery not in DELIVERY_MODES:
            raise ValueError(f"delivery must be one of {DELIVERY_MODES}, got {self.delivery!r}")


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


class DurableMetricLogger:
    """Spools metric points to disk and has them delivered to MLflow in batches.

    ``log``/``log_many`` never block on the network and never raise because of the server.
    Counters for benchmarks: ``points_logged``, ``points_delivered``, ``tracking_calls``,
    ``flush_seconds`` and ``pending`` (with process delivery, the last two include the
    delivery process's share once it has closed).
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
        self.points_logged = 0

        self._lock = threading.Lock()
        self._known_keys: set[str] = set()
        self._closed = False
        self._spooled = 0  # points written to the spool file

        self._default_dir = config.spool_dir is None
        self.spool_dir = Path(config.spool_dir or default_spool_root() / run_id)
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        stem = f"metrics-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.spool_path = self.spool_dir / f"{stem}.jsonl"
        self.ack_path = self.spool_dir / f"{stem}{ACK_SUFFIX}"
        self._spool = self.spool_path.open("w", encoding="utf-8", buffering=_SPOOL_BUFFER_BYTES)
        self._acks = self.ack_path.open("w", encoding="utf-8")
        self._spool.write(header_line(run_id, self.tracking_uri, os.getpid()))
        self._spool.flush()
        self._spool_ok = True
        self._spool_flushed_at = time.monotonic()

        # Points the delivery process cannot see (all of them with thread or caller delivery;
        # with process delivery only those the spool could not take) wait in this queue.
        self._sender = BatchSender(
            run_id,
            self.client,
            max_batch=config.max_batch,
            health_timeout_s=config.health_timeout_s,
            retry_backoff_s=config.retry_backoff_s,
            spool=str(self.spool_path),
            lock=self._lock,
            on_delivered=self._record_ack,
        )
        self._delivered = threading.Condition(self._lock)
        self._force = False
        self._process: DeliveryProcess | None = None
        self._ack_base = 0  # points the delivery process acknowledged before a take-over
        if config.delivery == "process":
            self._process = self._start_process()

        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        if config.delivery != "caller":
            self._thread = threading.Thread(
                target=self._run, name=f"metric-sink-{run_id[:8]}", daemon=True
            )
            self._thread.start()
        _LIVE_LOGGERS.add(self)

    def _start_process(self) -> DeliveryProcess | None:
        settings = {**asdict(self.config), "tracking_uri": self.tracking_uri}
        settings["spool_dir"] = str(self.spool_dir)
        try:
            return DeliveryProcess(self.spool_path, settings)
        except OSError as error:
            logger.warning(
                "cannot start the metric delivery process (%s); delivering from a thread", error
            )
            return None

    # --- counters -----------------------------------------------------------------------

    @property
    def points_delivered(self) -> int:
        """Points the tracking store has accepted."""
        return self._process_acked() + self._sender.points_delivered

    @property
    def pending(self) -> int:
        """Points logged but not yet accepted by the tracking store."""
        return self.points_logged - self.points_delivered

    @property
    def tracking_calls(self) -> int:
        child = self._process.stats.get("tracking_calls", 0) if self._process else 0
        return self._sender.tracking_calls + child

    @property
    def flush_seconds(self) -> float:
        child = self._process.stats.get("flush_seconds", 0.0) if self._process else 0.0
        return self._sender.flush_seconds + child

    def _process_acked(self) -> int:
        return self._process.acked() if self._process is not None else self._ack_base

    def _keep_delivering(self, waiting: bool = False) -> None:
        """Restarts a dead delivery process; takes over its spool once it keeps dying or,
        while this process is ``waiting`` for delivery, when it ended after a close or gets
        no CPU time at all."""
        process = self._process
        if process is None or self._closed:
            return
        process.restart_if_dead()
        if waiting and not process.given_up:
            if process.closing and not process.alive and self.pending > 0:
                process.given_up = True  # it closed with points left: go on from here
            elif process.alive and process.starved(_STARVED_WINDOW_S):
                logger.info(
                    "metric delivery process for %s gets no CPU time (other work keeps "
                    "every core busy); delivering the rest from the training process",
                    self.spool_path,
                )
                process.stop()
                process.given_up = True
        if process.given_up:
            self._take_over_spool(process)

    def _take_over_spool(self, process: DeliveryProcess) -> None:
        """Queues the spooled points the delivery process never acknowledged for this
        logger's own thread (or caller) delivery, ahead of any points the spool missed."""
        with self._lock:
            if self._process is not process:
                return
            self._flush_spool()
            acked = process.acked()
            _, spooled = read_spool(self.spool_path)
            self._sender.queue.extendleft(reversed(spooled[acked : self._spooled]))
            self._ack_base = acked
            self._process = None

    # --- training-thread side -------------------------------------------------------------

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
        lines = "".join(map(point_line, points))
        max_batch = self.config.max_batch
        with self._lock:
            if self._closed:
                raise RuntimeError(f"metric logger for run {self.run_id} is closed")
            before = self.points_logged
            self.points_logged += len(points)
            spooled = self._write_spool(lines)
            if spooled:
                self._spooled += len(points)
            if self._process is None or not spooled:
                self._sender.queue.extend(points)
            crossed = before // max_batch != self.points_logged // max_batch
            if crossed or time.monotonic() - self._spool_flushed_at >= self.config.flush_interval_s:
                self._flush_spool()  # a full batch or an old one: the delivery process sees it
        if crossed and self._thread is not None and not self._sender.failing:
            self._wake.set()

    def _write_spool(self, lines: str) -> bool:
        if self._closed or not self._spool_ok:
            return False
        try:
            self._spool.write(lines)
        except (OSError, ValueError) as error:
            self._spool_failed(error)
            return False
        return True

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

    def _record_ack(self, delivered: int) -> None:
        """Appends the delivered count to the ack file (thread and caller delivery, where the
        queue holds the spool's points in order). Caller holds ``_lock``."""
        if self._process is not None or self._closed or not self._spool_ok:
            return
        try:
            self._acks.write(f"{self._ack_base + delivered}\n")
            self._acks.flush()
        except (OSError, ValueError) as error:
            self._spool_failed(error)

    # --- delivery -----------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._next_wait())
            self._wake.clear()
            with self._lock:
                self._flush_spool()
                force, self._force = self._force, False
            try:
                self._keep_delivering()
                self._attempt(force)
            except Exception:  # keep delivering whatever went wrong this time
                logger.exception("metric delivery for run %s failed unexpectedly", self.run_id)

    def _next_wait(self) -> float:
        interval = max(self.config.flush_interval_s, 0.01)
        if self._sender.failing:
            return max(0.01, min(interval, self._sender.retry_at - time.monotonic()))
        return interval

    def _attempt(self, force: bool) -> bool:
        try:
            return self._sender.attempt(force)
        finally:
            with self._delivered:
                self._delivered.notify_all()

    # --- flush and close --------------------------------------------------------------------

    def flush(self, timeout_s: float | None = None) -> bool:
        """Blocks until every pending point is delivered or ``timeout_s`` passes.

        Tries once immediately (even during a backoff), then keeps to the retry schedule.
        Returns whether everything was delivered. ``None`` waits without limit.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._lock:
            self._flush_spool()
        if self._process is not None:
            self._process.request_flush()
        if not self._deliver_queue(deadline):
            return False
        while self.pending > 0:
            if self._process is not None:
                self._keep_delivering(waiting=True)
                if self._process is None and not self._deliver_queue(deadline):
                    return False  # the spool was just taken over from the delivery process
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(_WAIT_POLL_S)
        return True

    def _deliver_queue(self, deadline: float | None) -> bool:
        """Delivers this logger's own queue, on its thread or (without one) right here."""
        if not self._sender.queue:
            return True
        if self._thread is None or not self._thread.is_alive():
            return self._flush_here(deadline)
        return self._wait_for_thread(deadline)

    def _wait_for_thread(self, deadline: float | None) -> bool:
        with self._delivered:
            self._force = True
            self._wake.set()
            while self._sender.queue:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._delivered.wait(remaining)
        return True

    def _flush_here(self, deadline: float | None) -> bool:
        force = True
        while not self._attempt(force):
            force = False
            wait = max(0.0, self._sender.retry_at - time.monotonic())
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                wait = min(wait, remaining)
            time.sleep(wait)
        return True

    def close(self, timeout_s: float = 30.0) -> bool:
        """Final flush, stops delivery; removes the spool if everything was delivered.

        Returns whether everything was delivered; otherwise logs an ERROR that names the spool
        and how to re-send it.
        """
        if self._closed:
            return self.pending == 0
        started = time.monotonic()
        with self._lock:
            self._flush_spool()
        self._keep_delivering()
        if self._process is not None:
            self._process.request_close(timeout_s)
        delivered = self.flush(timeout_s)
        if self._process is not None:
            remaining = max(0.0, timeout_s - (time.monotonic() - started))
            self._process.finish_close(timeout_s=min(remaining, 5.0) + 1.0)
        self._sender.stopped = True
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
        pending = self.pending
        if delivered and pending == 0:
            self._remove_spool()
            return True
        logger.error(
            "%d metric points for run %s were not delivered to %s. They are kept in %s; "
            "re-send them when the server is back with `%s %s` "
            "(or DurableMetricLogger.recover(%r)).",
            pending,
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
        paths = [root] if root.is_file() else sorted(root.rglob(SPOOL_GLOB))
        total = 0
        for path in paths:
            if path.resolve() in _open_spools():
                logger.info("skipping %s: a logger in this process is still writing it", path)
                continue
            total += _recover_file(path, client, max_batch, health_timeout_s)
        return total


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


def _recover_file(
    path: Path, client: MlflowClient | None, max_batch: int, health_timeout_s: float
) -> int:
    header, points = read_spool(path)
    ack_path = path.with_suffix(ACK_SUFFIX)
    acked = read_acked(ack_path)
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
        for batch in iter_batches(undelivered, max_batch):
            metrics = [Metric(key, value, timestamp, step) for key, value, timestamp, step in batch]
            try:
                client.log_batch(run_id, metrics=metrics)
            except Exception as error:
                raise SpoolRecoveryError(
                    f"re-sending {path} to {uri} failed after {sent} of {len(undelivered)} "
                    f"points ({type(error).__name__}: {first_line(error)}); the rest stay there"
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
