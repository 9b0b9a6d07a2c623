"""Cost of the training monitor under 2-process DDP, measured side by side in one job.

Spawns ``--nproc`` gloo processes on this machine (``torch.distributed`` over 127.0.0.1). Each
rank builds two identical DDP copies of the bundled transformer on the embedded dataset: one
plain, one instrumented the way ``mlflow-audiodiag train`` does under torchrun (a
``TrainingMonitor`` at its defaults on rank 0, recording the synchronized gradients; durable
logging to a real sqlite-backed MLflow run). Blocks of ``Trainer.train_step`` calls alternate
between the two (which goes first alternates too). Rank 0 prints the overhead ratio
(instrumented step time / plain step time).

    python benchmarks/ddp_monitor_overhead.py [--nproc 2] [--blocks 30] [--block-steps 5]
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from twin_setup import default_setup, twin_trainers

from mlflow_audiodiag.cli.server import free_port
from mlflow_audiodiag.monitoring.distributed import current
from mlflow_audiodiag.monitoring.monitor import TrainingMonitor
from mlflow_audiodiag.training.run import build_train_loader


def _forever(loader):
    """Batches of ``loader`` epoch after epoch (each epoch a new DistributedSampler shuffle)."""
    for epoch in itertools.count(1):
        loader.sampler.set_epoch(epoch)
        yield from loader


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, tracking: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    ctx = current()
    setup = default_setup()
    config, store, train, n_classes = setup.config, setup.store, setup.train, setup.n_classes
    trainers = twin_trainers(setup, ctx)
    batches = [_forever(build_train_loader(config, store, train, n_classes, ctx)) for _ in range(2)]
    monitor = None
    if ctx.is_main:
        mlflow.set_tracking_uri(tracking)
        mlflow.set_experiment("ddp-monitor-overhead")
        mlflow.start_run()
        monitor = TrainingMonitor(trainers[1].module, trainers[1].optimizer)
        trainers[1].attach(monitor)
    steps = [
        lambda t=t, b=b: t.train_step(*next(b)) for t, b in zip(trainers, batches, strict=True)
    ]
    for _ in range(3):
        steps[0]()
        steps[1]()
    seconds: list[list[float]] = [[], []]
    for block in range(args.blocks):
        order = (0, 1) if block % 2 == 0 else (1, 0)
        for which in order:
            dist.barrier()
            start = time.perf_counter()
            for _ in range(args.block_steps):
                steps[which]()
            seconds[which].append(time.perf_counter() - start)
    if monitor is not None:
        monitor.close()
        mlflow.end_run()
        plain, inst = sum(seconds[0]), sum(seconds[1])
        pairs = np.array(seconds[1]) / np.array(seconds[0])
        n = args.blocks * args.block_steps
        print(f"{world}-process DDP (gloo), {n} steps per variant, blocks of {args.block_steps}")
        print(f"  plain step: {1000 * plain / n:.2f} ms, instrumented: {1000 * inst / n:.2f} ms")
        print(f"  overhead ratio (instrumented / plain): {inst / plain:.3f}")
        print(f"  median ratio per block pair: {np.median(pairs):.3f}")
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--blocks", type=int, default=30)
    parser.add_argument("--block-steps", type=int, default=5)
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        tracking = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        mp.spawn(_worker, args=(args.nproc, port, args, tracking), nprocs=args.nproc)


if __name__ == "__main__":
    main()
