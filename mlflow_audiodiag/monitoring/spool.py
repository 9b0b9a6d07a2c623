"""The on-disk spool of one run logger: everything that must reach MLflow, kept until it has.

One spool is a folder ``<root>/<run_id>/<stem>/``:

- ``header.json``: run id, tracking URI, writer pid and host;
- ``writer.lock``: held (``flock``) by the writing process for as long as it lives, so a spool
  whose lock can be taken belongs to a process that is gone;
- ``metrics.jsonl``: one JSON list ``[key, value, timestamp_ms, step]`` per point, and
  ``metrics.acked``: counts of points (from the start) the store accepted;
- ``uploads.jsonl``: one ``{"file": ..., "artifact_path": ...}`` per staged artifact (payloads
  under ``files/``), and ``uploads.acked``: counts of uploads done;
- ``tables/<name>/part-*.arrow``: rows appended durably (Arrow IPC files; earlier versions
  wrote ``part-*.parquet``), uploaded as one Parquet file;
- ``tags.json``: the latest value of every tag set; ``end.json``: how the writer wanted the run
  to end.

Points and uploads are delivered in order, so everything after the largest ack is undelivered.
Re-sending an acknowledged point is harmless: timestamps are fixed when a point is recorded and
MLflow's SQL store keeps identical points once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

from mlflow_audiodiag.errors import AudioDiagError

SPOOL_FORMAT = "mlflow-audiodiag-spool"
SPOOL_VERSION = 2
HEADER = "header.json"
LOCK = "writer.lock"
METRICS = "metrics.jsonl"
METRICS_ACKED = "metrics.acked"
UPLOADS = "uploads.jsonl"
UPLOADS_ACKED = "uploads.acked"
FILES = "files"
TABLES = "tables"
PART_SUFFIX = ".arrow"
TAGS = "tags.json"
END = "end.json"

Point = tuple[str, float, int, int]  # key, value, timestamp_ms, step

_NONFINITE_JSON = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


class SpoolRecoveryError(AudioDiagError):
    """Spooled points or artifacts could not be read or re-sent to the tracking store."""


def new_spool_dir(root: Path, run_id: str) -> Path:
    """A fresh spool folder for ``run_id`` under ``root``."""
    stem = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    path = Path(root) / run_id / stem
    path.mkdir(parents=True)
    return path


def write_header(folder: Path, run_id: str, tracking_uri: str) -> None:
    header = {
        "format": SPOOL_FORMAT,
        "version": SPOOL_VERSION,
        "run_id": run_id,
        "tracking_uri": tracking_uri,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "created": time.time(),
    }
    atomic_write(folder / HEADER, json.dumps(header))


def read_header(folder: Path) -> dict[str, Any]:
    try:
        header = json.loads((folder / HEADER).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise SpoolRecoveryError(f"{folder} is not a spool: {error}") from error
    if not isinstance(header, dict) or header.get("format") != SPOOL_FORMAT:
        raise SpoolRecoveryError(f"{folder} is not a spool: its header names no spool format")
    return header


def spool_dirs(root: Path) -> list[Path]:
    """Every spool folder under ``root`` (a spool folder itself, a run folder or a root).

    Spools are ``<root>/<run id>/<spool>``; other processes create and remove them meanwhile,
    so a folder that vanishes while it is listed is skipped rather than an error.
    """
    root = Path(root)
    if (root / HEADER).exists():
        return [root]
    found = [folder for folder in _subfolders(root) if (folder / HEADER).exists()]
    for run_folder in _subfolders(root):
        found += [folder for folder in _subfolders(run_folder) if (folder / HEADER).exists()]
    return sorted(found)


def _subfolders(folder: Path) -> list[Path]:
    try:
        with os.scandir(folder) as entries:
            return [Path(e.path) for e in entries if e.is_dir(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []


class WriterLock:
    """An exclusive ``flock`` on a spool's lock file; released when the process ends."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK
        self._handle: Any = None

    def acquire(self) -> bool:
        """Takes the lock without waiting; ``False`` when another open file holds it."""
        handle = self.path.open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        self._handle = handle
        return True

    def release(self) -> None:
        if self._handle is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


def point_line(point: Point) -> str:
    """``json.dumps(point) + "\\n"``, faster: keys are validated (no quotes, backslashes or
    control characters), so they need no escaping; non-finite values use JSON's extension."""
    key, value, timestamp, step = point
    number = repr(value)
    return f'["{key}", {_NONFINITE_JSON.get(number, number)}, {timestamp}, {step}]\n'


def read_points(path: Path) -> list[Point]:
    """Every complete point of a metrics file (a line cut short when a process died ends it)."""
    points: list[Point] = []
    if not path.exists():
        return points
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if not line.endswith("\n"):
                break
            try:
                key, value, timestamp, step = json.loads(line)
            except ValueError:
                break
            points.append((key, float(value), int(timestamp), int(step)))
    return points


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every complete JSON line of ``path`` (none when it does not exist)."""
    rows: list[dict[str, Any]] = []
    if not path.exists():
        return rows
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        if not line.endswith("\n"):
            break
        try:
            rows.append(json.loads(line))
        except ValueError:
            break
    return rows


def read_acked(path: Path) -> int:
    """The largest count in an ack file; 0 when there is none."""
    if not path.exists():
        return 0
    counts = [int(line) for line in path.read_text(encoding="utf-8").split() if line.isdigit()]
    return max(counts, default=0)


def table_parts(folder: Path) -> list[Path]:
    """The appended parts of one table, oldest first (Arrow parts and older Parquet parts)."""
    parts = [p for p in folder.glob("part-*") if p.suffix in (PART_SUFFIX, ".parquet")]
    return sorted(parts, key=lambda p: p.stem)


def atomic_write(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def remove_spool(folder: Path) -> None:
    """Deletes a delivered spool folder, and its run folder once empty."""
    for path in sorted(folder.rglob("*"), reverse=True):
        with contextlib.suppress(OSError):
            path.rmdir() if path.is_dir() else path.unlink()
    for path in (folder, folder.parent):
        with contextlib.suppress(OSError):
            path.rmdir()
