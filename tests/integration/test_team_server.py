"""A team on one tracking server: four zoo trainings log concurrently to a real
``mlflow server`` on 127.0.0.1, nothing is lost, and the comparison sees them all."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from mlflow_audiodiag import schema
from mlflow_audiodiag.comparison.compare import compare
from mlflow_audiodiag.zoo.scenarios import scenario_options

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCENARIOS = ["lr_too_low", "no_weight_updates", "non_finite", "unnormalized_features"]


def test_four_concurrent_trainings_lose_nothing_and_compare(mlflow_server, cache_root) -> None:
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": mlflow_server.uri,
        "AUDIODIAG_CACHE_DIR": str(cache_root),
    }
    # Generate the shared data once, so that the four processes only read the cache.
    warm = [sys.executable, "-m", "mlflow_audiodiag.cli.main", "zoo", "--scenario"]
    done = subprocess.run(
        [*warm, SCENARIOS[0], "--experiment", "warm-up"], env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    processes = [
        subprocess.Popen(
            [*warm, name, "--experiment", "team"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for name in SCENARIOS
    ]
    for process in processes:
        out, err = process.communicate(timeout=900)
        assert process.returncode == 0, err[-3000:]

    client = MlflowClient(mlflow_server.uri)
    result = compare(["team"], client=client)
    assert sorted(s.primary_cause for s in result.summaries) == sorted(SCENARIOS)
    for summary in result.summaries:
        run = client.get_run(summary.run_id)
        assert run.info.status == "FINISHED"
        options = scenario_options(summary.primary_cause)
        epochs = options["epochs"]
        train_clips = run.data.metrics[f"{schema.METRIC_CLIPS_PREFIX}train"]
        steps = epochs * math.ceil(train_clips / 32)
        # Every step's and every epoch's points arrived, exactly once.
        grad = client.get_metric_history(summary.run_id, f"{schema.GRAD_NORM_PREFIX}total")
        assert sorted(m.step for m in grad) == list(range(1, steps + 1)), summary.run_name
        val = client.get_metric_history(summary.run_id, "val/accuracy")
        assert sorted(m.step for m in val) == list(range(1, epochs + 1))
    assert sum(c.runs for c in result.costs) == result.verdicts.get("stagnant", 0)
