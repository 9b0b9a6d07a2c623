"""What a long run costs the tracking store and the diagnosis, with the monitor's bounded
logging and with every-step metric logging, measured side by side in one process.

An instrumented run of ``--steps`` optimizer steps (default 100,000) of a 48-layer MLP (48
parameter groups; 100 epochs) writes its per-step signals to the step table and a bounded
number of downsampled points to MLflow. Printed for it: rows written to the store's metrics
table, tracking calls, the size of the step table artifact, the time to diagnose (read the
evidence and run the rules; and with the report written back), the time of ``search_runs``
and of reading every metric history of the run (what the run page loads).

Every-step logging (each per-step signal of each step as an MLflow metric point, what the
monitor did before) is measured on ``--every-step-steps`` steps of the same run (default
2,000, since 100,000 would write about ten million rows) and its store rows, tracking calls
and logging time are shown per step and scaled to ``--steps``, marked as scaled.

    python benchmarks/long_run_logging.py [--steps 100000] [--every-step-steps 2000]
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from pathlib import Path

import mlflow
import torch
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from torch import nn
from torch.nn import functional as F  # noqa: N812

from mlflow_audiodiag import schema
from mlflow_audiodiag.diagnosis.engine import diagnose
from mlflow_audiodiag.diagnosis.evidence import load_evidence
from mlflow_audiodiag.monitoring.monitor import MonitorConfig, TrainingMonitor
from mlflow_audiodiag.reporting.writeback import diagnose_run

WIDTH, LAYERS, CLASSES, BATCH = 8, 48, 8, 16


def _model() -> nn.Module:
    layers: list[nn.Module] = []
    for _ in range(LAYERS - 1):
        layers += [nn.Linear(WIDTH, WIDTH), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(WIDTH, CLASSES))


def _rows(db: Path, run_id: str) -> int:
    with sqlite3.connect(db) as connection:
        (count,) = connection.execute(
            "SELECT COUNT(*) FROM metrics WHERE run_uuid = ?", (run_id,)
        ).fetchone()
    return int(count)


def _train(steps: int, steps_per_epoch: int, every_step: MlflowClient | None) -> tuple[str, dict]:
    """One instrumented run; with ``every_step`` each step's signals are also logged as metric
    points (one log_batch per step, as before). Returns the run id and the timings."""
    torch.manual_seed(0)
    model = _model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x_val, y_val = torch.randn(256, WIDTH), torch.randint(0, CLASSES, (256,))
    figures = {"every_step_calls": 0, "every_step_seconds": 0.0}
    with mlflow.start_run() as run:
        monitor = TrainingMonitor(model, optimizer, config=MonitorConfig(buffer_steps=1024))
        started = time.perf_counter()
        for step in range(1, steps + 1):
            x, y = torch.randn(BATCH, WIDTH), torch.randint(0, CLASSES, (BATCH,))
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            monitor.after_backward(loss)
            optimizer.step()
            monitor.after_step()
            if every_step is not None:
                _log_every_step(every_step, run.info.run_id, model, step, loss, figures)
            if step % steps_per_epoch == 0:
                with torch.no_grad():
                    monitor.end_epoch(step // steps_per_epoch, y_val, model(x_val))
        monitor.close()
        figures["train_seconds"] = time.perf_counter() - started
        figures["tracking_calls"] = monitor.sink.tracking_calls
    return run.info.run_id, figures


def _log_every_step(
    client: MlflowClient, run_id: str, model: nn.Module, step: int, loss: torch.Tensor, out: dict
) -> None:
    """The old scheme: every per-step signal of this step as a metric point (grad norm and
    update ratio per layer, total norm, LR, loss), in one log_batch call."""
    now = int(time.time() * 1000)
    metrics = [Metric("every_step/loss", float(loss.detach()), now, step)]
    metrics.append(Metric("every_step/lr", 1e-3, now, step))
    norms = [float(p.grad.norm()) for p in model.parameters() if p.grad is not None]
    metrics.append(
        Metric("every_step/grad_norm_total", sum(n * n for n in norms) ** 0.5, now, step)
    )
    for i, value in enumerate(norms[::2]):
        metrics.append(Metric(f"every_step/grad_norm/{i}", value, now, step))
        metrics.append(Metric(f"every_step/update_ratio/{i}", value * 1e-3, now, step))
    started = time.perf_counter()
    client.log_batch(run_id, metrics=metrics)
    out["every_step_seconds"] += time.perf_counter() - started
    out["every_step_calls"] += 1


def _timed(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--every-step-steps", type=int, default=2_000)
    args = parser.parse_args()
    torch.set_num_threads(1)  # a tiny model: threads would only contend
    steps_per_epoch = max(1, args.steps // 100)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "mlflow.db"
        mlflow.set_tracking_uri(f"sqlite:///{db}")
        mlflow.set_experiment("long-run-logging")
        client = MlflowClient()

        run_id, figures = _train(args.steps, steps_per_epoch, None)
        rows = _rows(db, run_id)
        run = client.get_run(run_id)
        keys = list(run.data.metrics)
        table = Path(client.download_artifacts(run_id, schema.ARTIFACT_STEPS, tmp))
        evidence = load_evidence(client, run_id)
        n_groups = len(evidence.group_order)
        read_and_rules = _timed(lambda: diagnose(load_evidence(client, run_id)))
        rules_only = _timed(lambda: diagnose(evidence))
        with_report = _timed(lambda: diagnose_run(run_id, client), repeat=1)
        search = _timed(lambda: client.search_runs([run.info.experiment_id]))
        histories = _timed(lambda: [client.get_metric_history(run_id, k) for k in keys])
        print(f"bounded logging, {args.steps:,} steps x {n_groups} parameter groups:")
        print(f"  training with the monitor: {figures['train_seconds']:.0f} s")
        print(f"  metric rows in the store: {rows:,} ({len(keys)} metric keys)")
        print(f"  tracking calls: {figures['tracking_calls']:,}")
        print(f"  step table artifact: {table.stat().st_size / 1e6:.1f} MB")
        print(f"  diagnosis (read the evidence + rules): {read_and_rules:.2f} s")
        print(f"  diagnosis rules alone: {rules_only:.2f} s")
        print(f"  diagnosis written back with report and plots: {with_report:.2f} s")
        print(f"  search_runs: {search:.3f} s")
        print(f"  every metric history of the run (the run page): {histories:.2f} s")

        n = args.every_step_steps
        every_id, every = _train(n, max(1, n // 10), client)
        every_rows = _rows(db, every_id) - _rows_of_bounded(db, every_id)
        per_step = every_rows / n
        scale = args.steps / n
        print(
            f"every-step logging, measured on {n:,} steps, scaled to {args.steps:,} (x{scale:g}):"
        )
        print(f"  metric rows per step: {per_step:.0f} -> {per_step * args.steps:,.0f} rows")
        print(
            f"  tracking calls: {every['every_step_calls']:,} -> "
            f"{every['every_step_calls'] * scale:,.0f}"
        )
        print(
            f"  time in log_batch: {every['every_step_seconds']:.1f} s -> "
            f"{every['every_step_seconds'] * scale / 60:.0f} min"
        )
        every_keys = [k for k in client.get_run(every_id).data.metrics if k.startswith("every_")]
        hist = _timed(lambda: [client.get_metric_history(every_id, k) for k in every_keys], 1)
        print(
            f"  every metric history of the run: {hist:.2f} s for {n:,} steps -> "
            f"{hist * scale:.0f} s"
        )


def _rows_of_bounded(db: Path, run_id: str) -> int:
    """Rows of the monitor's own (bounded) points in the every-step run."""
    with sqlite3.connect(db) as connection:
        (count,) = connection.execute(
            "SELECT COUNT(*) FROM metrics WHERE run_uuid = ? AND key NOT LIKE 'every_step/%'",
            (run_id,),
        ).fetchone()
    return int(count)


if __name__ == "__main__":
    main()
