"""A team on one tracking server: eight trainings by two users start at once against the
PostgreSQL-backed, authenticated server on an empty data cache; every run, every metric point
(exactly once) and every diagnosis arrives, and ``compare`` and ``diagnose`` work on them."""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient
from support import processes
from support.run_tables import monitor_json
from support.run_tables import steps as step_table

from mlflow_audiodiag import schema

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CLI = [sys.executable, "-m", "mlflow_audiodiag.cli.main"]
EPOCHS = 6
BATCH = 8
# The smallest setup that still trains, logs every signal and diagnoses: 3 classes of 10
# clips, a 1-layer 16-wide transformer, 6 epochs (the stagnation window is 5).
TINY = [
    "--synthetic-classes", "3", "--synthetic-clips-per-class", "10", "--epochs", str(EPOCHS),
    "--batch-size", str(BATCH), "--dim", "16", "--heads", "2", "--layers", "1",
    "--progress", "false",
]  # fmt: skip
LEARNING_RATES = ["1e-7", "3e-3"]  # stagnant (lr_too_low) and learning runs
RUNS = 8


def _duplicate_points(store_uri: str, run_ids: list[str]) -> list[tuple]:
    """(run, key, step, count) of every step that holds more than one point of a metric."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(store_uri)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                sqlalchemy.text(
                    "SELECT run_uuid, key, step, COUNT(*) FROM metrics "
                    "WHERE run_uuid IN :runs GROUP BY run_uuid, key, step HAVING COUNT(*) > 1"
                ).bindparams(sqlalchemy.bindparam("runs", expanding=True)),
                {"runs": run_ids},
            )
            return [tuple(row) for row in rows]
    finally:
        engine.dispose()


def test_eight_concurrent_trainings_lose_nothing_then_compare_and_diagnose(
    team_server, tmp_path
) -> None:
    client = MlflowClient(team_server.uri)
    with team_server.logged_in("alice"):
        experiment_id = client.create_experiment("team")
    team_server.grant("alice", "bob", experiment_id, "EDIT")  # bob logs into alice's experiment

    cache = tmp_path / "cache"  # empty: the eight processes meet at data generation
    with contextlib.ExitStack() as stack:
        children = {}
        for index in range(RUNS):
            user = ("alice", "bob")[index % 2]
            lr = LEARNING_RATES[(index // 2) % 2]
            env = {**team_server.env(user), "AUDIODIAG_CACHE_DIR": str(cache)}
            command = [*CLI, "train", "--experiment", "team", *TINY, "--lr", lr]
            children[f"{user}-{index}-lr{lr}"] = stack.enter_context(
                processes.spawned(
                    command, env=env, cwd=tmp_path,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                )
            )  # fmt: skip
        results = processes.communicate_all(children, timeout_s=900)
    for name, (code, _, err) in results.items():
        assert code == 0, f"{name}: {err[-3000:]}"

    with team_server.logged_in("alice"):
        runs = client.search_runs([experiment_id])
        assert len(runs) == RUNS
        for run in runs:
            run_id = run.info.run_id
            assert run.info.status == "FINISHED"
            assert run.data.tags.get(schema.TAG_VERDICT), run_id  # the diagnosis, written back
            val = client.get_metric_history(run_id, "val/accuracy")
            assert sorted(m.step for m in val) == list(range(1, EPOCHS + 1)), run_id
            clips = monitor_json(client, run_id, schema.ARTIFACT_DATA_SUMMARY)["clips"]
            steps = EPOCHS * math.ceil(clips["train"] / BATCH)
            table = step_table(client, run_id)  # every step at full resolution, once
            assert table.index.tolist() == list(range(1, steps + 1)), run_id
            assert table["grad_norm/total"].notna().all(), run_id
        assert _duplicate_points(team_server.store_uri, [r.info.run_id for r in runs]) == []
        verdicts = sorted(r.data.tags[schema.TAG_VERDICT] for r in runs)

    out = tmp_path / "comparison"
    compared = processes.run(
        [*CLI, "compare", "--experiment", "team", "--out", str(out)],
        env=team_server.env("alice"), cwd=tmp_path, timeout_s=300,
    )  # fmt: skip
    assert compared.returncode == 0, compared.stderr[-3000:]
    counted = json.loads((out / "comparison.json").read_text())
    assert sum(counted["verdicts"].values()) == RUNS, counted["verdicts"]

    first = runs[0].info.run_id  # alice's or bob's: bob may diagnose both (EDIT)
    diagnosed = processes.run(
        [*CLI, "diagnose", first, "--json"], env=team_server.env("bob"), cwd=tmp_path,
        timeout_s=300,
    )  # fmt: skip
    assert diagnosed.returncode == 0, diagnosed.stderr[-3000:]
    assert json.loads(diagnosed.stdout)["verdict"] in verdicts
