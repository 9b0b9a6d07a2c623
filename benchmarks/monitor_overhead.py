"""Cost of the training monitor, measured side by side in one process.

Two identical copies of the bundled transformer train on the embedded dataset, one plain and
one instrumented with ``TrainingMonitor`` at its default settings (every step: per-group
gradient norms, total norm, update ratios, learning rates, loss, into the step table; the
downsampled metric points and the table parts delivered by the monitor's background thread to a
real sqlite-backed MLflow run). Blocks of steps alternate between the two so that machine
drift hits both alike, and on the bundled step each copy is the instrumented one for half of
the blocks (two identical trainers differ by about 1 % on their own). Two measurements:

* **bundled training step** (the target): ``Trainer.train_step`` on the default training
  batches, i.e. waveform augmentation, feature extraction, SpecAugment, mixup, forward,
  backward, clipping and the optimizer step, exactly as ``mlflow run .`` trains;
* **model step on preloaded features** (the worst case): forward, backward, clipping and the
  optimizer step on cached, normalized features, so that nothing dilutes the monitor's cost.

Prints each overhead ratio (instrumented step time / plain step time) with a 95 % bootstrap
interval over the block pairs (on a shared 2-core VM one ratio of 500 steps moves by about
1 %; ``--blocks`` narrows it) and the time spent inside the monitor's calls, then the
logging figures of a ``--steps``-step instrumented run: metric points, tracking calls and time
spent in them (on the delivery thread).

    python benchmarks/monitor_overhead.py [--blocks 100] [--block-steps 5] [--steps 1000]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow
import numpy as np
import torch
import torch.nn.functional as F
from twin_setup import default_setup, twin_trainers

from mlflow_audiodiag.features.normalization import FeatureNormalizer
from mlflow_audiodiag.monitoring.monitor import TrainingMonitor
from mlflow_audiodiag.training.optim import build_optimizer
from mlflow_audiodiag.training.run import build_train_loader

MONITOR_SECONDS = [0.0]  # time spent inside the monitor's per-step calls


class TimedMonitor:
    """Forwards the per-step calls to a monitor and adds up the time spent inside them."""

    def __init__(self, monitor: TrainingMonitor) -> None:
        self.monitor = monitor

    def after_backward(self, loss: torch.Tensor | None = None) -> None:
        start = time.perf_counter()
        self.monitor.after_backward(loss)
        MONITOR_SECONDS[0] += time.perf_counter() - start

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        # Not timed: it replaces the clipping the plain step does too.
        return self.monitor.clip_grad_norm_(max_norm)

    def after_step(self, loss: torch.Tensor | None = None) -> None:
        start = time.perf_counter()
        self.monitor.after_step(loss)
        MONITOR_SECONDS[0] += time.perf_counter() - start


def _forever(loader) -> Iterator:
    while True:
        yield from loader


def _feature_batches(features: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            index = order[start : start + batch_size]
            yield features[index], labels[index]


def _model_step(model, optimizer, batch, monitor, clip: float) -> None:
    inputs, targets = batch
    loss = F.cross_entropy(model(inputs), targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if monitor is not None:
        monitor.after_backward(loss)
        monitor.clip_grad_norm_(clip)
    else:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    if monitor is not None:
        monitor.after_step()


def _alternate(
    plain: Callable[[], None], instrumented: Callable[[], None], blocks: int, block_steps: int
) -> tuple[list[float], list[float]]:
    """Seconds per block of ``block_steps`` calls of each, blocks alternating (which of the
    two goes first alternates too)."""
    for _ in range(3):  # warm-up of both paths
        plain()
        instrumented()
    plain_s, inst_s = [], []
    MONITOR_SECONDS[0] = 0.0
    for block in range(blocks):
        order = [(plain, plain_s), (instrumented, inst_s)]
        for step, seconds in order if block % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            for _ in range(block_steps):
                step()
            seconds.append(time.perf_counter() - start)
    return plain_s, inst_s


def _interval(
    plain_s: list[float], inst_s: list[float], strata: int, draws: int = 4000
) -> tuple[float, float]:
    """95 % bootstrap interval of ``sum(inst) / sum(plain)``: block pairs resampled with
    replacement within each of ``strata`` equal consecutive parts (the phases, in which the
    trainers swap roles), so that every resample keeps the phases balanced."""
    rng = np.random.default_rng(0)
    plain = np.array_split(np.asarray(plain_s), strata)
    inst = np.array_split(np.asarray(inst_s), strata)
    totals = np.zeros((2, draws))
    for p, i in zip(plain, inst, strict=True):
        picks = rng.integers(0, len(p), size=(draws, len(p)))
        totals += [p[picks].sum(axis=1), i[picks].sum(axis=1)]
    low, high = np.percentile(totals[1] / totals[0], [2.5, 97.5])
    return float(low), float(high)


def _report(
    title: str, plain_s: list[float], inst_s: list[float], steps: int, strata: int = 1
) -> None:
    plain, inst = sum(plain_s), sum(inst_s)
    pair_ratios = np.array(inst_s) / np.array(plain_s)
    low, median, high = np.percentile(pair_ratios, [25, 50, 75])
    print(f"{title}:")
    print(
        f"  plain step: {1000 * plain / steps:.2f} ms, "
        f"instrumented step: {1000 * inst / steps:.2f} ms"
    )
    ci_low, ci_high = _interval(plain_s, inst_s, strata)
    print(
        f"  overhead ratio (instrumented / plain): {inst / plain:.3f} "
        f"(95 % bootstrap interval {ci_low:.3f} to {ci_high:.3f})"
    )
    print(
        f"  per block pair: median {median:.3f}, interquartile range {low:.3f} to {high:.3f} "
        f"({len(pair_ratios)} pairs)"
    )
    print(
        f"  time inside the monitor's step calls: {1000 * MONITOR_SECONDS[0] / steps:.2f} ms "
        f"per step = {MONITOR_SECONDS[0] / plain:.3f} of a plain step"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=100)
    parser.add_argument("--block-steps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=1000)
    args = parser.parse_args()

    setup = default_setup()
    config, store, train, raw, stats = (
        setup.config,
        setup.store,
        setup.train,
        setup.raw,
        setup.stats,
    )
    n_classes, model = setup.n_classes, setup.model
    loaders = [build_train_loader(config, store, train, n_classes) for _ in range(2)]
    trainers = twin_trainers(setup)
    steps = args.blocks * args.block_steps

    with tempfile.TemporaryDirectory() as tmp:
        mlflow.set_tracking_uri(f"sqlite:///{Path(tmp) / 'mlflow.db'}")
        mlflow.set_experiment("monitor-overhead")
        print(f"steps timed per variant: {steps} (blocks of {args.block_steps}, alternating)")
        # Two identical trainers differ by about 1 % on their own (their own augmentation
        # draws and memory): each is instrumented for half of the blocks, so that the ratio
        # compares every trainer with itself.
        batches = [_forever(loader) for loader in loaders]
        plain_s, inst_s, seconds = [], [], 0.0
        for phase in range(2):
            plain, instrumented = trainers if phase == 0 else trainers[::-1]
            plain_batches, inst_batches = batches if phase == 0 else batches[::-1]
            with mlflow.start_run():
                monitor = TrainingMonitor(instrumented.model, instrumented.optimizer)
                instrumented.attach(TimedMonitor(monitor))
                phase_plain, phase_inst = _alternate(
                    lambda p=plain, b=plain_batches: p.train_step(*next(b)),
                    lambda i=instrumented, b=inst_batches: i.train_step(*next(b)),
                    args.blocks // 2,
                    args.block_steps,
                )
                monitor.close()
                instrumented.monitor = None
            seconds += MONITOR_SECONDS[0]
            print(
                f"  phase {phase + 1} (trainer {'AB'[phase]} instrumented): ratio "
                f"{sum(phase_inst) / sum(phase_plain):.3f}"
            )
            plain_s += phase_plain
            inst_s += phase_inst
        MONITOR_SECONDS[0] = seconds
        _report("bundled training step (default augmentation pipeline)", plain_s, inst_s, steps, 2)

        normalizer = FeatureNormalizer(stats)
        features, labels = normalizer(raw), torch.from_numpy(train.labels)
        models = [copy.deepcopy(model) for _ in range(2)]
        optimizers = [build_optimizer(m, config.optim) for m in models]
        clip = config.optim.grad_clip
        with mlflow.start_run():
            monitor = TimedMonitor(TrainingMonitor(models[1], optimizers[1]))
            feature_batches = [
                _feature_batches(features, labels, config.loop.batch_size, seed=1) for _ in range(2)
            ]
            plain_s, inst_s = _alternate(
                lambda: _model_step(models[0], optimizers[0], next(feature_batches[0]), None, clip),
                lambda: _model_step(
                    models[1], optimizers[1], next(feature_batches[1]), monitor, clip
                ),
                args.blocks,
                args.block_steps,
            )
            monitor.monitor.close()
        _report("model step on preloaded features (worst case)", plain_s, inst_s, steps)

        if args.steps <= 0:
            return
        with mlflow.start_run():
            monitor = TrainingMonitor(models[1], optimizers[1])
            batches = _feature_batches(features, labels, config.loop.batch_size, seed=2)
            start = time.perf_counter()
            for _ in range(args.steps):
                _model_step(models[1], optimizers[1], next(batches), monitor, clip)
            monitor.close()
            total = time.perf_counter() - start
        sink = monitor.sink
        print(
            f"{args.steps}-step instrumented run: {sink.points_logged} metric points, "
            f"{sink.tracking_calls} tracking calls, {sink.flush_seconds:.2f} s in them "
            f"(on the delivery thread), {total:.1f} s in all"
        )


if __name__ == "__main__":
    main()
