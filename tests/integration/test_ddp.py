"""Training under torchrun (2 gloo processes on CPU) records the same evidence as one process,
in exactly one MLflow run, and a failing rank fails the job and its run."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from support import processes
from support.run_tables import epochs, monitor_json, steps

from mlflow_audiodiag import schema

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TINY = [
    "--synthetic-classes", "4", "--synthetic-clips-per-class", "14", "--epochs", "6",
    "--batch-size", "8", "--dim", "32", "--heads", "2", "--layers", "1", "--lr", "1e-7",
    "--progress", "false", "--dropout", "0", "--noise-p", "0", "--gain-p", "0",
    "--shift-p", "0", "--specaug-p", "0",
]  # fmt: skip
# Deterministic (no dropout or augmentation draws, whose random streams differ per rank) and
# barely moving (lr 1e-7): the same findings are then expected from 1 and from 2 processes.
TRAIN = ["-m", "mlflow_audiodiag.cli.main", "train"]
TORCHRUN = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def _run(args: list[str], tracking_uri: str, cache_root: Path, experiment: str):
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "AUDIODIAG_CACHE_DIR": str(cache_root),
        "MLFLOW_EXPERIMENT_NAME": experiment,
    }
    return processes.run([sys.executable, *args], env=env, timeout_s=600)


def _only_run(client: MlflowClient, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]  # rank 1 never opens a run
    return runs[0]


def _dataset_values(summary: dict, prefix: str) -> dict[str, float]:
    return {k: v for k, v in summary.items() if k.startswith(prefix)}


def test_two_processes_record_what_one_process_records(tracking_uri, cache_root) -> None:
    single = _run([*TRAIN, *TINY], tracking_uri, cache_root, "single")
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = _run([*TORCHRUN, *TRAIN, *TINY], tracking_uri, cache_root, "ddp")
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert ddp.stdout.count("run id:") == 1  # only rank 0 reports

    client = MlflowClient(tracking_uri)
    one, two = _only_run(client, "single"), _only_run(client, "ddp")
    assert one.data.tags[schema.TAG_WORLD_SIZE] == "1"
    assert two.data.tags[schema.TAG_WORLD_SIZE] == "2"

    summary_one = monitor_json(client, one.info.run_id)
    summary_two = monitor_json(client, two.info.run_id)
    for prefix in ("labels/", "audio/"):  # integer-valued: exact
        expected = _dataset_values(summary_one, prefix)
        assert expected and _dataset_values(summary_two, prefix) == expected, prefix
    features_one = _dataset_values(summary_one, "features/")
    features_two = _dataset_values(summary_two, "features/")
    assert features_one.keys() == features_two.keys() and len(features_one) > 20
    for key, value in features_one.items():  # float64 moments merged in another order
        if value is None:
            continue
        assert math.isclose(features_two[key], value, rel_tol=1e-9, abs_tol=1e-12), key

    # Gradient norms of the synchronized gradients are recorded on rank 0, every step.
    assert steps(client, two.info.run_id)["grad_norm/total"].notna().all()
    assert two.data.tags[schema.TAG_FINDINGS] == one.data.tags[schema.TAG_FINDINGS]
    assert two.data.tags[schema.TAG_VERDICT] == one.data.tags[schema.TAG_VERDICT] == "stagnant"
    assert two.data.tags[schema.TAG_PRIMARY_CAUSE] == "lr_too_low"
    last = epochs(client, two.info.run_id).iloc[-1]
    predicted = sum(v for k, v in last.items() if k.startswith("val_pred_count/"))
    clips = monitor_json(client, one.info.run_id, schema.ARTIFACT_DATA_SUMMARY)["clips"]
    assert predicted == clips["val"]  # every rank's shard of the val split was gathered


def test_a_failing_rank_fails_the_job_and_its_run(tracking_uri, cache_root) -> None:
    failed = _run([*TORCHRUN, *TRAIN, *TINY, "--fail-rank", "1"], tracking_uri, cache_root, "f")
    assert failed.returncode != 0
    assert "deliberate failure on rank 1" in failed.stderr
    assert "another rank of this job failed" in failed.stderr
    run = _only_run(MlflowClient(tracking_uri), "f")
    assert run.info.status == "FAILED"
