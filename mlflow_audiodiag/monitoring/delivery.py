"""Sending metric points to MLflow in batches, in a thread or in a separate delivery process.

:class:`BatchSender` owns a queue of points and sends it with ``MlflowClient.log_batch``: a
health check first on HTTP stores, exponential backoff while the store is down, one warning
per outage and one note when it is back.

:class:`DeliveryProcess` runs ``python -m mlflow_audiodiag.monitoring.delivery SPOOL`` at low
CPU priority: that process follows the spool file the training process appends to, sends what
it reads and records acks. The training process then spends nothing on the tracking store's
writes (about 60 µs of Python per point for a local sqlite store) and never competes for its
own interpreter lock with them. Commands reach the process on its stdin (``flush``, ``close
SECONDS``; end of input counts as ``close``), its counters come back on stdout as one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import os
import queue
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlparse

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from mlflow_audiodiag.monitoring.spool import Point, SpoolReader, ack_path_of, read_acked

logger = logging.getLogger("mlflow_audiodiag.monitoring.sink")

_POLL_S = 0.05  # how often the delivery process looks for new points and commands
_NICENESS = 19


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


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else "no message"


def iter_batches(points: list[Point], size: int) -> Iterator[list[Point]]:
    for start in range(0, len(points), size):
        yield points[start : start + size]


class BatchSender:
    """A queue of points delivered in order, ``max_batch`` per ``log_batch`` call.

    ``lock`` guards the queue (share it with whoever appends to it); ``on_delivered(n)`` runs
    under it after each accepted batch with the number of points accepted so far. ``spool``
    names where the points are kept for the outage warning.
    """

    def __init__(
        self,
        run_id: str,
        client: MlflowClient,
        *,
        max_batch: int,
        health_timeout_s: float,
        retry_backoff_s: tuple[float, float],
        spool: str,
        lock: threading.Lock | None = None,
        on_delivered: Callable[[int], None] | None = None,
    ) -> None:
        self.run_id = run_id
        self.client = client
        self.tracking_uri = str(client.tracking_uri)
        self.max_batch = max_batch
        self.health_timeout_s = health_timeout_s
        self.retry_backoff_s = retry_backoff_s
        self.spool = spool
        self.lock = lock or threading.Lock()
        self.on_delivered = on_delivered
        self.queue: deque[Point] = deque()
        self.points_delivered = 0
        self.tracking_calls = 0
        self.flush_seconds = 0.0
        self.retry_at = 0.0
        self.stopped = False  # set to abandon a delivery in progress
        self._http = is_http_uri(self.tracking_uri)
        self._send_lock = threading.Lock()
        self._failures = 0
        self._outage_since: float | None = None

    @property
    def failing(self) -> bool:
        return self._failures > 0

    def attempt(self, force: bool) -> bool:
        """One delivery attempt of everything queued now (``force`` ignores the backoff);
        ``True`` when nothing is left."""
        with self._send_lock:
            if not self.queue:
                return True
            if not force and time.monotonic() < self.retry_at:
                return False
            started = time.perf_counter()
            try:
                return self._deliver_pending()
            finally:
                self.flush_seconds += time.perf_counter() - started

    def _deliver_pending(self) -> bool:
        todo = len(self.queue)
        if self._http:
            problem = check_health(self.tracking_uri, self.health_timeout_s)
            if problem is not None:
                self._on_failure(f"tracking server {self.tracking_uri} unreachable ({problem})")
                return False
        sent = 0
        while sent < todo and not self.stopped:
            with self.lock:
                batch = list(itertools.islice(self.queue, min(self.max_batch, todo - sent)))
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
                    f"({type(error).__name__}: {first_line(error)})"
                )
                return False
            with self.lock:
                for _ in batch:
                    self.queue.popleft()
                self.points_delivered += len(batch)
                if self.on_delivered is not None:
                    self.on_delivered(self.points_delivered)
            sent += len(batch)
        self._finish_outage(sent)
        return not self.queue

    def _on_failure(self, problem: str) -> None:
        first, largest = self.retry_backoff_s
        self._failures += 1
        delay = min(largest, first * 2 ** (self._failures - 1))
        self.retry_at = time.monotonic() + delay
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            logger.warning(
                "%s; %d points kept in memory and in spool file %s; "
                "delivery resumes when it is back",
                problem,
                len(self.queue),
                self.spool,
            )
        else:
            logger.debug("%s; retrying in %.1f s", problem, delay)

    def _finish_outage(self, delivered: int) -> None:
        self._failures = 0
        self.retry_at = 0.0
        if self._outage_since is not None:
            logger.info(
                "tracking server %s is back after %.1f s; delivered %d points late",
                self.tracking_uri,
                time.monotonic() - self._outage_since,
                delivered,
            )
            self._outage_since = None


def _child_environment() -> dict[str, str]:
    """The trainer's environment, with this package importable even when the trainer found it
    on its own ``sys.path`` (a source checkout run without installing)."""
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    paths = [package_root, *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


# A delivery process that dies this often in a row without delivering a point is not restarted.
MAX_FUTILE_STARTS = 3


def _scheduler_times(pid: int) -> tuple[float, float] | None:
    """Seconds a process's main thread has run on a CPU and waited, runnable, for one (Linux
    ``/proc/<pid>/schedstat``); None where that is not available."""
    try:
        fields = Path(f"/proc/{pid}/schedstat").read_text().split()
        return int(fields[0]) / 1e9, int(fields[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


class DeliveryProcess:
    """The training side's handle on the delivery process of one spool."""

    def __init__(self, spool_path: Path, settings: dict) -> None:
        self.spool_path = spool_path
        self.ack_path = ack_path_of(spool_path)
        self.settings = settings
        self.stats: dict = {}
        self.closing = False
        self._acked = 0
        self._restart_lock = threading.Lock()
        self._futile_starts = 0  # deaths in a row without any point delivered
        self._acked_at_start = 0
        self.given_up = False
        self._watch: tuple[float, int, tuple[float, float]] | None = None
        self.process = self._start()

    def _start(self) -> subprocess.Popen:
        command = [
            sys.executable,
            "-m",
            "mlflow_audiodiag.monitoring.delivery",
            str(self.spool_path),
            "--settings",
            json.dumps(self.settings),
        ]
        return subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            close_fds=True,
            env=_child_environment(),
        )

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def acked(self) -> int:
        """Points acknowledged so far (the last count read stays after the spool is gone)."""
        self._acked = max(self._acked, read_acked(self.ack_path))
        return self._acked

    def restart_if_dead(self) -> bool:
        """Starts a new delivery process (it resumes after the last ack) if this one died;
        returns whether it had to."""
        with self._restart_lock:
            if self.closing or self.given_up or self.alive:
                return False
            progress = self.acked() > self._acked_at_start
            self._futile_starts = 0 if progress else self._futile_starts + 1
            if self._futile_starts >= MAX_FUTILE_STARTS:
                self.given_up = True
                logger.warning(
                    "metric delivery process for %s ended %d times in a row without delivering "
                    "anything (last exit code %s; its error is above); the training process "
                    "delivers the spool itself from now on",
                    self.spool_path,
                    self._futile_starts,
                    self.process.returncode,
                )
                return False
            self._restart()
            return True

    def _restart(self) -> None:
        logger.warning(
            "metric delivery process for %s ended unexpectedly (exit code %s); restarting it",
            self.spool_path,
            self.process.returncode,
        )
        self._acked_at_start = self.acked()
        self._watch = None
        self.process = self._start()

    def request_flush(self) -> None:
        self._send("flush")

    def request_close(self, timeout_s: float) -> None:
        """Asks the process to deliver everything within ``timeout_s`` and exit."""
        self.closing = True
        self._send(f"close {max(timeout_s, 0.0)}")

    def finish_close(self, timeout_s: float = 5.0) -> None:
        """Waits for the process to exit (stops it after ``timeout_s``) and reads its
        counters; what it delivered stays acknowledged, the rest stays in the spool."""
        self.closing = True
        try:
            out, _ = self.process.communicate(timeout=timeout_s)
        except (subprocess.TimeoutExpired, ValueError, OSError):
            self.stop()
            out = ""
        for line in (out or "").splitlines():
            with contextlib.suppress(ValueError):
                self.stats = json.loads(line)

    def stop(self) -> None:
        """Kills the process and waits for it."""
        with contextlib.suppress(OSError):
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5.0)
        for pipe in (self.process.stdin, self.process.stdout):
            with contextlib.suppress(OSError, ValueError):
                pipe.close()

    def starved(self, window_s: float) -> bool:
        """Whether the process has been runnable but kept off the CPU for most of the last
        ``window_s`` seconds without delivering anything: idle-priority scheduling on a
        machine that other work keeps busy. Call it while waiting for delivery. A process
        that sleeps (in a retry backoff, or on the network) is not starved."""
        sample = (time.monotonic(), self.acked(), _scheduler_times(self.process.pid))
        if sample[2] is None or self._watch is None or self._watch[1] != sample[1]:
            self._watch = sample  # the first sample, or the process made progress
            return False
        started, _, (cpu0, wait0) = self._watch
        elapsed = sample[0] - started
        if elapsed < window_s:
            return False
        cpu, wait = sample[2]
        self._watch = sample
        return wait - wait0 > 0.5 * elapsed and cpu - cpu0 < 0.1 * elapsed

    def _send(self, command: str) -> None:
        try:
            self.process.stdin.write(command + "\n")
            self.process.stdin.flush()
        except (OSError, ValueError):  # it died; restart_if_dead() takes care of it
            pass


def _read_commands(commands: queue.Queue) -> None:
    for line in sys.stdin:
        commands.put(line.split())
    commands.put(["eof"])  # the training process closed its end, or died


def follow(spool_path: Path, settings: dict) -> dict:
    """Delivers the points of a spool as they are appended, until told to close; returns the
    counters. Resumes after the largest ack, so a restarted process sends nothing twice."""
    reader = SpoolReader(spool_path)
    ack_path = ack_path_of(spool_path)
    start = read_acked(ack_path)
    acks = ack_path.open("a", encoding="utf-8")

    def record(delivered: int) -> None:
        acks.write(f"{start + delivered}\n")
        acks.flush()

    client = MlflowClient(settings.get("tracking_uri") or reader.header["tracking_uri"])
    sender = BatchSender(
        reader.header["run_id"],
        client,
        max_batch=settings["max_batch"],
        health_timeout_s=settings["health_timeout_s"],
        retry_backoff_s=tuple(settings["retry_backoff_s"]),
        spool=str(spool_path),
        on_delivered=record,
    )
    skip = start

    def take_new() -> None:
        nonlocal skip
        points = reader.read_new()
        dropped = min(skip, len(points))
        skip -= dropped
        sender.queue.extend(points[dropped:])

    commands: queue.Queue = queue.Queue()
    threading.Thread(target=_read_commands, args=(commands,), daemon=True).start()
    interval = settings["flush_interval_s"]
    last_send = time.monotonic()
    deadline: float | None = None
    orphaned = False
    while True:
        take_new()
        force = False
        with contextlib.suppress(queue.Empty):
            while True:
                command = commands.get_nowait() or ["flush"]
                force = True
                if command[0] in ("close", "eof") and deadline is None:
                    orphaned = command[0] == "eof"
                    wait = float(command[1]) if len(command) > 1 else settings["close_timeout_s"]
                    deadline = time.monotonic() + wait
                    take_new()  # the training process flushed the spool before closing
        due = len(sender.queue) >= sender.max_batch or time.monotonic() - last_send >= interval
        if sender.queue and (force or due or deadline is not None):
            last_send = time.monotonic()
            sender.attempt(force)
        if deadline is not None and (not sender.queue or time.monotonic() >= deadline):
            break
        time.sleep(_POLL_S)
    reader.close()
    acks.close()
    if orphaned and not sender.queue and not reader.broken:
        # The training process died without closing: everything it spooled has arrived.
        spool_path.unlink(missing_ok=True)
        ack_path.unlink(missing_ok=True)
    return {
        "points_delivered": sender.points_delivered,
        "tracking_calls": sender.tracking_calls,
        "flush_seconds": sender.flush_seconds,
        "pending": len(sender.queue),
    }


def _yield_cpu_to_training() -> None:
    """Runs this process on idle CPU time only: the training process comes first.

    On Linux ``SCHED_IDLE`` gives way to any waking thread at once; a nice value alone lets
    this process keep a core for a scheduler slice while a training thread waits for it.
    """
    with contextlib.suppress(AttributeError, OSError):
        os.nice(_NICENESS)
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def main(argv: list[str] | None = None) -> int:
    """``python -m mlflow_audiodiag.monitoring.delivery SPOOL --settings JSON``."""
    parser = argparse.ArgumentParser(
        prog="python -m mlflow_audiodiag.monitoring.delivery",
        description="Deliver the metric points of a spool file as a training process writes it.",
    )
    parser.add_argument("spool", type=Path)
    parser.add_argument("--settings", required=True, help="JSON: the sink's delivery settings")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    _yield_cpu_to_training()
    result, sys.stdout = sys.stdout, sys.stderr  # stdout carries the counters only
    stats = follow(args.spool, json.loads(args.settings))
    print(json.dumps(stats), file=result, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
