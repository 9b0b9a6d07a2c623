"""The test helper that starts child processes leaves none behind: not on success, not on an
error in the test, not on a timeout, not even a child that ignores SIGTERM and has spawned a
grandchild."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.processes import group_members, run, spawned

# Ignores SIGTERM, starts a grandchild that ignores it too, writes both PIDs, then sleeps.
STUBBORN = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
grandchild = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
with open(sys.argv[1], "w") as handle:
    handle.write(f"{os.getpid()} {grandchild.pid}")
print("started", flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _pids(path: Path, timeout_s: float = 60.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and len(text := path.read_text().split()) == 2:
            return [int(pid) for pid in text]
        time.sleep(0.05)
    raise AssertionError(f"the child never wrote {path}")


pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")


def test_a_timed_out_child_that_ignores_sigterm_is_gone_with_its_grandchild(tmp_path) -> None:
    pids_file = tmp_path / "pids"
    start = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        run([sys.executable, "-c", STUBBORN, str(pids_file)], timeout_s=3)
    child, grandchild = _pids(pids_file)
    assert not _alive(child) and not _alive(grandchild)
    assert group_members(child) == []
    assert time.monotonic() - start < 30


def test_an_error_in_the_test_stops_the_group(tmp_path) -> None:
    pids_file = tmp_path / "pids"
    with pytest.raises(RuntimeError, match="the test failed"):  # noqa: SIM117
        with spawned([sys.executable, "-c", STUBBORN, str(pids_file)]):
            _pids(pids_file)
            raise RuntimeError("the test failed")
    assert not any(_alive(pid) for pid in _pids(pids_file))


def test_a_grandchild_left_by_a_finished_child_is_stopped(tmp_path) -> None:
    leave = (
        "import subprocess, sys; "
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], "
        "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
        "print(p.pid)"
    )
    done = run([sys.executable, "-c", leave], timeout_s=60)
    assert done.returncode == 0
    assert not _alive(int(done.stdout))


def test_run_returns_like_subprocess_run() -> None:
    done = run(
        [sys.executable, "-c", "import os, sys; print(os.environ['X']); sys.exit(3)"],
        timeout_s=60,
        env={**os.environ, "X": "value"},
    )
    assert (done.returncode, done.stdout.strip()) == (3, "value")
