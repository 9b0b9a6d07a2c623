"""The metric spool: an append-only file of points plus an append-only file of acks.

One spool is ``metrics-*.jsonl``: the first line is a JSON header with the run id and tracking
URI; every further line is a JSON list ``[key, value, timestamp_ms, step]``. Its ``.acked``
sibling holds one count per line: the number of points (from the start of the spool) that the
tracking store has accepted. Points are delivered in order, so everything after the largest
count is undelivered. Re-sending an acknowledged point is harmless: MLflow's SQL store
de-duplicates identical metric points.
"""

from __future__ import annotations

import json
from pathlib import Path

from mlflow_audiodiag.errors import AudioDiagError

SPOOL_FORMAT = "mlflow-audiodiag-metric-spool"
SPOOL_VERSION = 1
SPOOL_GLOB = "metrics-*.jsonl"
ACK_SUFFIX = ".acked"

Point = tuple[str, float, int, int]  # key, value, timestamp_ms, step

_NONFINITE_JSON = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


class SpoolRecoveryError(AudioDiagError):
    """Spooled metric points could not be read or re-sent to the tracking store."""


def header_line(run_id: str, tracking_uri: str, pid: int) -> str:
    header = {
        "format": SPOOL_FORMAT,
        "version": SPOOL_VERSION,
        "run_id": run_id,
        "tracking_uri": tracking_uri,
        "pid": pid,
    }
    return json.dumps(header) + "\n"


def point_line(point: Point) -> str:
    """``json.dumps(point) + "\\n"``, faster: keys are validated (no quotes, backslashes or
    control characters), so they need no escaping; non-finite values use JSON's extension."""
    key, value, timestamp, step = point
    number = repr(value)
    return f'["{key}", {_NONFINITE_JSON.get(number, number)}, {timestamp}, {step}]\n'


def parse_point(line: str) -> Point:
    """Raises ``ValueError`` for a line that is not a complete point."""
    key, value, timestamp, step = json.loads(line)
    return key, float(value), int(timestamp), int(step)


def ack_path_of(spool_path: Path) -> Path:
    return spool_path.with_suffix(ACK_SUFFIX)


def read_acked(path: Path) -> int:
    """The largest count in an ack file; 0 when there is none."""
    if not path.exists():
        return 0
    counts = [int(line) for line in path.read_text(encoding="utf-8").split() if line.isdigit()]
    return max(counts, default=0)


class SpoolReader:
    """Reads a spool's points as they are appended: each :meth:`read_new` returns the complete
    lines written since the last call (a line still being written waits for the next call)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._handle = self.path.open(encoding="utf-8")
        try:
            header = json.loads(self._handle.readline())
        except ValueError:
            header = {}
        if not isinstance(header, dict) or header.get("format") != SPOOL_FORMAT:
            self._handle.close()
            raise SpoolRecoveryError(
                f"{self.path} is not a metric spool: its first line is no header"
            )
        self.header: dict = header
        self._partial = ""
        self.broken = False  # a complete line that is no point: nothing after it is read

    def read_new(self) -> list[Point]:
        points: list[Point] = []
        if self.broken:
            return points
        for line in self._handle:
            if not line.endswith("\n"):
                self._partial += line
                break
            line, self._partial = self._partial + line, ""
            try:
                points.append(parse_point(line))
            except ValueError:
                self.broken = True  # a line cut short when a process died
                break
        return points

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> SpoolReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def read_spool(path: Path) -> tuple[dict, list[Point]]:
    """Header and every complete point of a spool that no process writes any more."""
    with SpoolReader(path) as reader:
        return reader.header, reader.read_new()
