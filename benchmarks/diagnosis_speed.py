"""Time to diagnose a long run, without training it first.

Builds the evidence of a ``--steps``-step run with ``--groups`` parameter groups (default
100,000 x 48, the shape of ``long_run_logging.py``'s run) straight in memory: per-group
gradient norms and update ratios, the total norm, step loss, LR and non-finite counts per
step, and ``--epochs`` epochs of a stalled run. Prints the best of ``--repeat`` times of the
rules (:func:`~mlflow_audiodiag.diagnosis.engine.diagnose`) and the verdict. Target: under 2 s.
``long_run_logging.py`` measures the same on a trained run, with reading the artifacts.

    python benchmarks/diagnosis_speed.py [--steps 100000] [--groups 48] [--epochs 100]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from mlflow_audiodiag import signals as S
from mlflow_audiodiag.diagnosis.engine import diagnose
from mlflow_audiodiag.diagnosis.evidence import RunEvidence, Table

TARGET_S = 2.0


def stalled_run(steps: int, n_groups: int, epochs: int, seed: int = 0) -> RunEvidence:
    """A run whose loss barely moves and whose val accuracy stays at its baseline."""
    rng = np.random.default_rng(seed)
    groups = [f"layers.{i}" for i in range(n_groups)]
    columns: dict[str, np.ndarray] = {}
    for group in groups:
        columns[S.GRAD_NORM.key(group=group)] = np.abs(rng.normal(1.0, 0.1, steps))
        columns[S.UPDATE_RATIO.key(group=group)] = np.abs(rng.normal(1e-3, 1e-4, steps))
    columns[S.GRAD_NORM_TOTAL.name] = np.abs(rng.normal(5.0, 0.5, steps))
    columns[S.STEP_LOSS.name] = np.linspace(2.0, 1.9, steps) + rng.normal(0, 0.05, steps)
    columns[S.LR.key(param_group="0")] = np.full(steps, 1e-3)
    columns[S.NONFINITE_GRADS.name] = np.zeros(steps)
    per_epoch = {
        S.TRAIN_LOSS.name: np.linspace(2.0, 1.9, epochs),
        S.TRAIN_ACCURACY.name: 0.13 + rng.normal(0, 0.01, epochs),
        S.VAL_ACCURACY.name: 0.125 + rng.normal(0, 0.01, epochs),
        S.VAL_LOSS.name: np.linspace(2.1, 2.05, epochs),
    }
    return RunEvidence(
        steps=Table(np.arange(1, steps + 1, dtype=float), columns),
        epochs=Table(np.arange(1, epochs + 1, dtype=float), per_epoch),
        summary={S.MAJORITY_BASELINE.name: 0.125},
        group_order=groups,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--groups", type=int, default=48)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    evidence = stalled_run(args.steps, args.groups, args.epochs)
    best, result = float("inf"), None
    for _ in range(args.repeat):
        started = time.perf_counter()
        result = diagnose(evidence)
        best = min(best, time.perf_counter() - started)
    print(f"diagnosis of {args.steps:,} steps x {args.groups} groups: {best:.2f} s "
          f"({best / TARGET_S:.2f} of the {TARGET_S:g} s target)")  # fmt: skip
    print(f"  verdict {result.verdict}, primary cause {result.primary_cause}")


if __name__ == "__main__":
    main()
