"""Runs matrix cells in child processes, ``jobs`` at a time, each with a timeout.

Children are forked from a fork server that has imported torch, MLflow, Lightning and the
package once, so a run does not pay Python's start-up. Each child starts its own session;
a child that outlives its timeout is killed with its whole process group (its data-loader
workers included), and so are leftovers of a finished child.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.diagnosis_matrix.child import child_main
from benchmarks.diagnosis_matrix.spec import RunSpec

_PRELOAD = [
    "torch",
    "mlflow",
    "lightning.pytorch",
    "benchmarks.diagnosis_matrix.child",
    "benchmarks.diagnosis_matrix.user_loop",
    "benchmarks.diagnosis_matrix.lightning_loop",
    "mlflow_audiodiag.training.run",
]
_POLL_S = 0.2


@dataclass(frozen=True)
class RunnerConfig:
    out: Path
    tracking_uri: str
    experiment: str
    jobs: int = 2
    timeout_s: float = 600.0
    write_back: bool = True
    resume: bool = False


@dataclass
class _Running:
    spec: RunSpec
    process: mp.process.BaseProcess
    started: float
    result_path: Path


def result_path(out: Path, spec: RunSpec) -> Path:
    return out / "results" / f"{spec.key}.json"


def run_all(
    specs: list[RunSpec],
    config: RunnerConfig,
    on_result: Callable[[dict, int, int], None] | None = None,
) -> list[dict]:
    """Runs every spec (reusing earlier results with ``resume``); results in spec order."""
    (config.out / "results").mkdir(parents=True, exist_ok=True)
    (config.out / "logs").mkdir(parents=True, exist_ok=True)
    done: dict[str, dict] = {}
    pending: deque[RunSpec] = deque()
    for spec in specs:
        path = result_path(config.out, spec)
        if config.resume and path.is_file():
            done[spec.key] = json.loads(path.read_text())
        else:
            path.unlink(missing_ok=True)
            pending.append(spec)
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)
    running: list[_Running] = []
    total = len(specs)
    try:
        while pending or running:
            while pending and len(running) < config.jobs:
                running.append(_start(context, pending.popleft(), config))
            time.sleep(_POLL_S)
            for item in list(running):
                result = _poll(item, config)
                if result is None:
                    continue
                running.remove(item)
                done[item.spec.key] = result
                if on_result is not None:
                    on_result(result, len(done), total)
    finally:
        for item in running:  # interrupted: no child outlives the runner
            _kill_group(item.process)
    return [done[spec.key] for spec in specs if spec.key in done]


def _start(context: mp.context.BaseContext, spec: RunSpec, config: RunnerConfig) -> _Running:
    path = result_path(config.out, spec)
    process = context.Process(
        target=_child_entry,
        args=(
            spec.to_dict(),
            str(path),
            str(config.out / "logs" / f"{spec.key}.log"),
            config.tracking_uri,
            config.experiment,
            config.write_back,
        ),
        name=spec.key,
    )
    process.start()
    return _Running(spec, process, time.monotonic(), path)


def _child_entry(
    spec: dict, result: str, log: str, uri: str, experiment: str, write_back: bool
) -> None:
    """Sends the child's stdout and stderr to its log file, then runs it."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    child_main(spec, result, uri, experiment, write_back)


def _poll(item: _Running, config: RunnerConfig) -> dict | None:
    """The finished child's result, a timeout or crash result, or None while it runs."""
    elapsed = time.monotonic() - item.started
    if item.process.is_alive():
        if elapsed <= config.timeout_s:
            return None
        _kill_group(item.process)
        return _failure(item, "timeout", f"killed after {config.timeout_s:.0f} s", elapsed)
    item.process.join()
    _kill_group(item.process)  # stragglers of a finished child
    if item.result_path.is_file():
        return json.loads(item.result_path.read_text())
    return _failure(item, "crashed", f"exit code {item.process.exitcode}", elapsed)


def _failure(item: _Running, status: str, error: str, elapsed: float) -> dict:
    result = {
        **item.spec.to_dict(),
        "key": item.spec.key,
        "expected": item.spec.expected,
        "status": status,
        "error": error,
        "seconds": round(elapsed, 1),
    }
    item.result_path.write_text(json.dumps(result, indent=2))
    return result


def _kill_group(process: mp.process.BaseProcess) -> None:
    """SIGKILL to the child's process group (it leads its own session), else to the child."""
    if process.pid is None:
        return
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        if process.is_alive():
            process.kill()
    process.join(timeout=10)
