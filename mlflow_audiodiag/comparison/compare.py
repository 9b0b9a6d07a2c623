"""``compare``: collect, aggregate, draw and write a comparison of many runs."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
from mlflow.tracking import MlflowClient

from mlflow_audiodiag import schema
from mlflow_audiodiag.comparison.collect import RunSummary, collect_runs, diagnose_missing
from mlflow_audiodiag.comparison.figures import findings_heatmap, validation_overlay
from mlflow_audiodiag.comparison.page import render_comparison
from mlflow_audiodiag.comparison.summary import (
    CauseCost,
    comparison_frame,
    compute_by_cause,
    finding_counts,
    verdict_counts,
)

VAL_ACCURACY = schema.split_metric(schema.SPLIT_VAL, "accuracy")
_PARALLEL_HISTORIES = 4


@dataclass(frozen=True)
class Comparison:
    summaries: list[RunSummary]
    verdicts: dict[str, int]
    findings: dict[str, int]
    costs: list[CauseCost]


def compare(
    experiments: Sequence[str] = (),
    filter_string: str = "",
    *,
    diagnose: bool = False,
    max_runs: int | None = None,
    client: MlflowClient | None = None,
) -> Comparison:
    """Summaries of the matching runs (diagnosing those not diagnosed yet when ``diagnose``)
    with verdict and finding counts and the compute spent per cause of stagnation."""
    client = client or MlflowClient()
    summaries = collect_runs(client, experiments, filter_string, max_runs)
    if diagnose:
        summaries = diagnose_missing(client, summaries)
    return Comparison(
        summaries,
        verdict_counts(summaries),
        finding_counts(summaries),
        compute_by_cause(summaries),
    )


def _curves(client: MlflowClient, run_ids: list[str]) -> dict[str, np.ndarray]:
    """Validation curves (``[epochs, 2]`` rows of step and value), one history call per run,
    a few at a time (each is a round trip to the server)."""

    def curve(run_id: str) -> np.ndarray:
        history = client.get_metric_history(run_id, VAL_ACCURACY)
        return np.array([(m.step, m.value) for m in history]).reshape(-1, 2)

    with ThreadPoolExecutor(max_workers=_PARALLEL_HISTORIES) as pool:
        return dict(zip(run_ids, pool.map(curve, run_ids), strict=True))


def write_outputs(
    comparison: Comparison,
    out_dir: Path,
    *,
    title: str = "Run comparison",
    max_curves: int = 50,
    client: MlflowClient | None = None,
) -> dict[str, Path]:
    """``comparison.csv``, ``comparison.json`` (counts), the figures and a self-contained
    ``comparison.html`` in ``out_dir``. Validation curves are read for the ``max_curves``
    newest runs only (one history call each); everything else comes from the summaries."""
    client = client or MlflowClient()
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"csv": out_dir / "comparison.csv", "json": out_dir / "comparison.json"}
    comparison_frame(comparison.summaries).to_csv(files["csv"], index=False)
    counts = {
        "runs": len(comparison.summaries),
        "verdicts": comparison.verdicts,
        "findings": comparison.findings,
        "compute_by_cause": [c.__dict__ for c in comparison.costs],
    }
    files["json"].write_text(json.dumps(counts, indent=2))
    curves = _curves(client, [s.run_id for s in comparison.summaries[:max_curves]])
    images: dict[str, Path] = {}
    figures = {
        "Validation accuracy per run, coloured by verdict": (
            "val_accuracy_overlay.png",
            validation_overlay(comparison.summaries[:max_curves], curves),
        ),
        "Findings per run": ("findings_heatmap.png", findings_heatmap(comparison.summaries)),
    }
    for caption, (name, figure) in figures.items():
        if figure is not None:
            figure.savefig(out_dir / name, dpi=100)
            images[caption] = files[name.removesuffix(".png")] = out_dir / name
    html = render_comparison(
        title,
        comparison.summaries,
        comparison.verdicts,
        comparison.findings,
        comparison.costs,
        images,
    )
    files["html"] = out_dir / "comparison.html"
    files["html"].write_text(html, encoding="utf-8")
    return files


def comparison_name(experiments: list[str], filter_string: str = "") -> str:
    """What a comparison compared, as a run name: ``compare team-a, team-b [filter]``."""
    name = "compare " + (", ".join(experiments) if experiments else "all experiments")
    if filter_string.strip():
        name += f" where {filter_string.strip()}"
    return name[:250]


def log_comparison(
    files: dict[str, Path],
    experiment: str = "audiodiag-comparisons",
    client: MlflowClient | None = None,
    run_name: str = "comparison",
) -> str:
    """Logs the outputs as artifacts (under ``comparison/``) of the active run (or the run
    ``mlflow run`` created), else of a new run in ``experiment``, named ``run_name`` either
    way; returns the run id. Uses the client only: no global MLflow state (active experiment
    or run) changes."""
    client = client or MlflowClient()
    active = mlflow.active_run()
    run_id = active.info.run_id if active else os.environ.get("MLFLOW_RUN_ID")
    created = not run_id
    if created:
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else client.create_experiment(experiment)
        run_id = client.create_run(experiment_id, run_name=run_name).info.run_id
    else:
        client.set_tag(run_id, "mlflow.runName", run_name)
    client.set_tag(run_id, schema.TAG_COMPARISON, "true")
    for path in files.values():
        client.log_artifact(run_id, str(path), schema.ARTIFACT_DIR_COMPARISON)
    if created:
        client.set_terminated(run_id)
    return run_id
