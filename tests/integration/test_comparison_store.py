"""Comparison against a real tracking store: search, on-the-fly diagnosis, outputs, logging."""

from __future__ import annotations

import json
import time

import pandas as pd
import pytest
from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient

from mlflow_audiodiag import schema
from mlflow_audiodiag.cli.main import main
from mlflow_audiodiag.comparison.collect import NOT_DIAGNOSED
from mlflow_audiodiag.comparison.compare import compare, log_comparison, write_outputs

pytestmark = pytest.mark.integration


def _run(client, experiment_id, name, verdict=None, cause=None, val=(0.2, 0.3), minutes=5):
    run = client.create_run(experiment_id, run_name=name)
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    metrics = [Metric("val/accuracy", v, now, epoch) for epoch, v in enumerate(val, 1)]
    metrics.append(Metric(schema.METRIC_BEST_VAL_ACCURACY, max(val), now, 0))
    tags = []
    if verdict:
        tags.append(RunTag(schema.TAG_VERDICT, verdict))
        tags.append(RunTag(schema.TAG_PRIMARY_CAUSE, cause or "none"))
        findings = ",".join(c for c in (cause, "stagnant_validation") if c)
        tags.append(RunTag(schema.TAG_FINDINGS, findings))
    client.log_batch(run_id, metrics=metrics, tags=tags)
    client.log_param(run_id, "optim.lr", "0.001")
    client.set_terminated(run_id, end_time=run.info.start_time + minutes * 60_000)
    return run_id


@pytest.fixture
def experiments(tracking_uri):
    client = MlflowClient()
    team = client.create_experiment("team")
    other = client.create_experiment("other")
    ids = {
        "slow": _run(client, team, "slow<b>", "stagnant", "lr_too_low", minutes=30),
        "fine": _run(client, team, "fine", "healthy", val=(0.5, 0.95)),
        "fresh": _run(client, team, "fresh", val=(0.2, 0.21, 0.2, 0.2, 0.21, 0.2)),
        "elsewhere": _run(client, other, "elsewhere", "stagnant", "overfitting"),
    }
    return client, ids


def test_compare_searches_filters_and_diagnoses_missing_runs(experiments, tmp_path) -> None:
    client, ids = experiments
    everything = compare(["team", "other"])
    assert {s.run_id for s in everything.summaries} == set(ids.values())
    assert everything.verdicts[NOT_DIAGNOSED] == 1

    stagnant = compare(["team"], f"tags.`{schema.TAG_VERDICT}` = 'stagnant'")
    assert [s.run_id for s in stagnant.summaries] == [ids["slow"]]
    assert [(c.cause, c.runs, c.wall_seconds) for c in stagnant.costs] == [
        ("lr_too_low", 1, 1800.0)
    ]

    diagnosed = compare(["team"], diagnose=True)
    fresh = next(s for s in diagnosed.summaries if s.run_id == ids["fresh"])
    assert fresh.diagnosed  # diagnosed on the fly and written back to the run
    assert client.get_run(ids["fresh"]).data.tags[schema.TAG_VERDICT] == fresh.verdict

    files = write_outputs(diagnosed, tmp_path / "out", title="team")
    table = pd.read_csv(files["csv"])
    assert len(table) == 3 and set(table["run_id"]) == {ids["slow"], ids["fine"], ids["fresh"]}
    assert json.loads(files["json"].read_text())["runs"] == 3
    page = files["html"].read_text()
    assert "slow&lt;b&gt;" in page and "slow<b>" not in page
    assert files["val_accuracy_overlay"].exists() and files["findings_heatmap"].exists()

    run_id = log_comparison(files, experiment="comparisons")
    logged = {a.path for a in client.list_artifacts(run_id, schema.ARTIFACT_DIR_COMPARISON)}
    assert f"{schema.ARTIFACT_DIR_COMPARISON}/comparison.html" in logged
    assert client.get_run(run_id).data.tags[schema.TAG_COMPARISON] == "true"


def test_compare_cli_prints_the_table_and_names_bad_input(experiments, tmp_path, capsys) -> None:
    assert main(["compare", "--experiment", "team", "--out", str(tmp_path / "cli")]) == 0
    out = capsys.readouterr().out
    assert "lr_too_low" in out and "stagnant, lr_too_low: 1 runs, 30.0 min" in out
    assert (tmp_path / "cli" / "comparison.html").exists()
    assert main(["compare", "--experiment", "nope"]) == 2
    assert "no experiment named or numbered 'nope'" in capsys.readouterr().err
    assert main(["compare", "--experiment", "team", "--filter", "tags.bad syntax ="]) == 2
    assert "cannot search runs" in capsys.readouterr().err


def test_pages_fetched_in_parallel_hold_every_run_once_in_order(tracking_uri, monkeypatch):
    from mlflow_audiodiag.comparison import collect

    client = MlflowClient()
    team = client.create_experiment("many")
    start = int(time.time() * 1000)
    made = [client.create_run(team, start_time=start + i).info.run_id for i in range(17)]
    monkeypatch.setattr(collect, "_PAGE", 2)  # 9 pages, fetched 3 at a time
    monkeypatch.setattr(collect, "_PARALLEL_PAGES", 3)
    parallel = [s.run_id for s in collect.collect_runs(client, ["many"])]
    assert parallel == made[::-1]  # newest first, each once
    monkeypatch.setattr(collect, "_offset_of", lambda token: None)  # a store without offsets
    assert [s.run_id for s in collect.collect_runs(client, ["many"])] == parallel
    assert [s.run_id for s in collect.collect_runs(client, ["many"], max_runs=5)] == parallel[:5]


def test_an_http_server_gives_the_same_summaries_as_the_store(mlflow_server, monkeypatch):
    """Against an HTTP server the runs are read as JSON, not MLflow entities: same result."""
    from mlflow_audiodiag.comparison import collect

    store = MlflowClient(f"sqlite:///{mlflow_server.root / 'mlflow.db'}")
    http = MlflowClient(mlflow_server.uri)
    team = http.create_experiment("json")
    for name, verdict in (("a<b>", "stagnant"), ("nan", None), ("ok", "healthy")):
        run_id = _run(http, team, name, verdict, "lr_too_low" if verdict == "stagnant" else None)
        http.log_metric(run_id, "val/balanced_accuracy", float("nan"))
        http.log_param(run_id, "model.layers", "3")
    monkeypatch.setattr(collect, "_PAGE", 2)
    over_http = collect.collect_runs(http, ["json"])
    assert [s.run_name for s in over_http] == ["ok", "nan", "a<b>"]

    def comparable(summaries):
        return [
            {**s.__dict__, "val_balanced_accuracy": str(s.val_balanced_accuracy)} for s in summaries
        ]

    assert comparable(over_http) == comparable(collect.collect_runs(store, ["json"]))
