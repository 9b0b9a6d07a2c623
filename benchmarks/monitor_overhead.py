"""Cost of the training monitor, measured side by side in one process.

Trains two identical copies of the bundled transformer on the embedded dataset's cached
training features: one plain, one instrumented with ``TrainingMonitor`` (every step: per-group
gradient norms, total norm, update ratios, learning rates, loss; durable batched logging to a
real sqlite-backed MLflow run). Blocks of steps alternate between the two so that machine
drift hits both alike. Prints the overhead ratio (instrumented step time / plain step time),
then the logging figures of a ``--steps``-step instrumented run: metric points, tracking calls
and time spent flushing.

    python benchmarks/monitor_overhead.py [--blocks 20] [--block-steps 10] [--steps 1000]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
import torch
import torch.nn.functional as F

from mlflow_audiodiag.data.synthetic import default_cache_root
from mlflow_audiodiag.features.normalization import FeatureNormalizer, fit_normalization
from mlflow_audiodiag.features.store import build_feature_store
from mlflow_audiodiag.model.transformer import AudioTransformer
from mlflow_audiodiag.monitoring.monitor import TrainingMonitor
from mlflow_audiodiag.monitoring.sink import DurableMetricLogger, SinkConfig
from mlflow_audiodiag.training.config import TrainConfig
from mlflow_audiodiag.training.dataset_source import resolve_clip_table
from mlflow_audiodiag.training.optim import build_optimizer


def _batches(features: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            index = order[start : start + batch_size]
            yield features[index], labels[index]


MONITOR_SECONDS = [0.0]  # time spent inside the monitor's per-step calls


def _step(model, optimizer, batch, monitor: TrainingMonitor | None, clip: float) -> None:
    inputs, targets = batch
    loss = F.cross_entropy(model(inputs), targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if monitor is not None:
        start = time.perf_counter()
        monitor.after_backward(loss)
        MONITOR_SECONDS[0] += time.perf_counter() - start
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    if monitor is not None:
        start = time.perf_counter()
        monitor.after_step()
        MONITOR_SECONDS[0] += time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=20)
    parser.add_argument("--block-steps", type=int, default=10)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument(
        "--deliver-after",
        action="store_true",
        help="deliver points only at close (isolates the monitor's compute cost from the "
        "tracking store's write cost, which otherwise runs in a background thread)",
    )
    args = parser.parse_args()

    config = TrainConfig()
    table, _ = resolve_clip_table(config.data, config.features, progress=False)
    store = build_feature_store(table, config.features, default_cache_root(), progress=False)
    train = store.split("train")
    raw = torch.from_numpy(np.array(train.features))
    normalizer = FeatureNormalizer(fit_normalization([raw], config.data.normalization))
    features = normalizer(raw)
    labels = torch.from_numpy(train.labels)
    n_classes = len(store.classes)
    clip = config.optim.grad_clip

    torch.manual_seed(0)
    plain = AudioTransformer(features.shape[1], features.shape[2], n_classes, config.model)
    instrumented = copy.deepcopy(plain)
    plain_opt = build_optimizer(plain, config.optim)
    inst_opt = build_optimizer(instrumented, config.optim)

    with tempfile.TemporaryDirectory() as tmp:
        mlflow.set_tracking_uri(f"sqlite:///{Path(tmp) / 'mlflow.db'}")
        mlflow.set_experiment("monitor-overhead")
        with mlflow.start_run() as run:
            sink = None
            if args.deliver_after:
                sink = DurableMetricLogger(run.info.run_id, config=SinkConfig(background=False))
            monitor = TrainingMonitor(instrumented, inst_opt, sink=sink)
            plain_batches = _batches(features, labels, config.loop.batch_size, seed=1)
            inst_batches = _batches(features, labels, config.loop.batch_size, seed=1)
            for _ in range(3):  # warm-up of both paths
                _step(plain, plain_opt, next(plain_batches), None, clip)
                _step(instrumented, inst_opt, next(inst_batches), monitor, clip)
            plain_s = inst_s = 0.0
            MONITOR_SECONDS[0] = 0.0
            for _ in range(args.blocks):
                start = time.perf_counter()
                for _ in range(args.block_steps):
                    _step(plain, plain_opt, next(plain_batches), None, clip)
                plain_s += time.perf_counter() - start
                start = time.perf_counter()
                for _ in range(args.block_steps):
                    _step(instrumented, inst_opt, next(inst_batches), monitor, clip)
                inst_s += time.perf_counter() - start
            monitor.close()
        steps = args.blocks * args.block_steps
        delivery = "at close" if args.deliver_after else "in a background thread"
        print(
            f"steps timed per variant: {steps} (blocks of {args.block_steps}, alternating; "
            f"points delivered {delivery})"
        )
        print(
            f"plain step: {1000 * plain_s / steps:.2f} ms, "
            f"instrumented step: {1000 * inst_s / steps:.2f} ms"
        )
        print(f"overhead ratio (instrumented / plain): {inst_s / plain_s:.3f}")
        print(
            f"time inside the monitor's step calls: {1000 * MONITOR_SECONDS[0] / steps:.2f} ms "
            f"per step = {MONITOR_SECONDS[0] / plain_s:.3f} of a plain step"
        )

        if args.steps <= 0:
            return
        with mlflow.start_run():
            monitor = TrainingMonitor(instrumented, inst_opt)
            batches = _batches(features, labels, config.loop.batch_size, seed=2)
            start = time.perf_counter()
            for _ in range(args.steps):
                _step(instrumented, inst_opt, next(batches), monitor, clip)
            monitor.close()
            total = time.perf_counter() - start
        sink = monitor.sink
        print(
            f"{args.steps}-step instrumented run: {sink.points_logged} metric points, "
            f"{sink.tracking_calls} tracking calls, {sink.flush_seconds:.2f} s flushing "
            f"(in a background thread), {total:.1f} s in all"
        )


if __name__ == "__main__":
    main()
