"""Child processes that never outlive their test: own session, killed by PID at the end."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from typing import Any


@contextlib.contextmanager
def run_process(
    command: Sequence[str], timeout_s: float, **popen: Any
) -> Iterator[subprocess.Popen]:
    """Starts ``command`` in its own session and yields it; on leaving the block (normally,
    on an exception, or once ``timeout_s`` has passed) its whole process group is terminated,
    then killed, and waited for."""
    popen.setdefault("text", True)
    child = subprocess.Popen(command, start_new_session=True, **popen)
    started = time.monotonic()
    try:
        yield child
    finally:
        stop(child, grace_s=2.0 if time.monotonic() - started < timeout_s else 0.0)


def stop(child: subprocess.Popen, grace_s: float = 2.0) -> None:
    """Terminates the child's process group (SIGTERM, then SIGKILL) and reaps the child."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, sig)
        try:
            child.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    for stream in (child.stdin, child.stdout, child.stderr):
        if stream is not None:
            with contextlib.suppress(OSError, ValueError):
                stream.close()
