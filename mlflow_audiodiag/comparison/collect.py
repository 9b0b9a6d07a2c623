"""Run summaries for comparison, read with ``search_runs`` (no metric histories)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from mlflow.entities import Run, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mlflow_audiodiag import schema, signals
from mlflow_audiodiag.errors import ConfigError

logger = logging.getLogger(__name__)

NOT_DIAGNOSED = "not diagnosed"
# The params a comparison shows, by the column name it gives them.
KEY_PARAMS: dict[str, str] = {
    "lr": "optim.lr",
    "optimizer": "optim.optimizer",
    "layers": "model.layers",
    "dim": "model.dim",
    "normalization": "data.normalization",
    "imbalance": "data.synthetic_imbalance_ratio",
    "class_balance": "loop.class_balance",
    "noise_p": "augment.noise_p",
    "specaug_p": "augment.specaug_p",
}
_PAGE = 1000


@dataclass(frozen=True)
class RunSummary:
    """What a comparison needs of one run: identity, key params, scores and its diagnosis."""

    run_id: str
    run_name: str
    experiment: str
    user: str
    status: str
    wall_seconds: float | None
    params: dict[str, str]
    best_val_accuracy: float | None
    val_balanced_accuracy: float | None
    majority_baseline: float | None
    verdict: str
    primary_cause: str | None
    findings: list[str] = field(default_factory=list)

    @property
    def diagnosed(self) -> bool:
        return self.verdict != NOT_DIAGNOSED


def summarize(run: Run, experiment_name: str) -> RunSummary:
    tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
    end, start = run.info.end_time, run.info.start_time
    wall = (end - start) / 1000.0 if end and start else None
    cause = tags.get(schema.TAG_PRIMARY_CAUSE)
    findings = tags.get(schema.TAG_FINDINGS, "")
    return RunSummary(
        run_id=run.info.run_id,
        run_name=run.info.run_name or tags.get("mlflow.runName", ""),
        experiment=experiment_name,
        user=tags.get("mlflow.user", run.info.user_id or ""),
        status=run.info.status,
        wall_seconds=wall,
        params={name: params[key] for name, key in KEY_PARAMS.items() if key in params},
        best_val_accuracy=metrics.get(
            schema.METRIC_BEST_VAL_ACCURACY, metrics.get(signals.VAL_ACCURACY.name)
        ),
        val_balanced_accuracy=metrics.get(signals.VAL_BALANCED_ACCURACY.name),
        majority_baseline=metrics.get(signals.MAJORITY_BASELINE.name),
        verdict=tags.get(schema.TAG_VERDICT, NOT_DIAGNOSED),
        primary_cause=None if cause in (None, "", "none") else cause,
        findings=[f for f in findings.split(",") if f and f != "none"],
    )


def resolve_experiments(client: MlflowClient, names_or_ids: Sequence[str]) -> dict[str, str]:
    """``{experiment_id: name}`` for names or ids; all active experiments when empty."""
    if not names_or_ids:
        found = client.search_experiments(view_type=ViewType.ACTIVE_ONLY)
        return {e.experiment_id: e.name for e in found}
    out: dict[str, str] = {}
    for value in names_or_ids:
        experiment = client.get_experiment_by_name(value)
        if experiment is None:
            try:
                experiment = client.get_experiment(value)
            except MlflowException:
                experiment = None
        if experiment is None:
            raise ConfigError(
                f"no experiment named or numbered {value!r} on {client.tracking_uri}; "
                "list them with `mlflow experiments search`"
            )
        out[experiment.experiment_id] = experiment.name
    return out


def collect_runs(
    client: MlflowClient,
    experiments: Sequence[str] = (),
    filter_string: str = "",
    max_runs: int | None = None,
) -> list[RunSummary]:
    """Summaries of the runs in ``experiments`` (names or ids; all when empty) that match the
    MLflow search ``filter_string``, newest first, page by page."""
    names = resolve_experiments(client, experiments)
    summaries: list[RunSummary] = []
    token = None
    while True:
        page = client.search_runs(
            list(names),
            filter_string=filter_string,
            max_results=_PAGE if max_runs is None else min(_PAGE, max_runs - len(summaries)),
            order_by=["attributes.start_time DESC"],
            page_token=token,
        )
        summaries.extend(
            summarize(run, names[run.info.experiment_id]) for run in page if not _is_job(run)
        )
        token = page.token
        if not token or (max_runs is not None and len(summaries) >= max_runs):
            return summaries


def _is_job(run: Run) -> bool:
    """Runs that hold a comparison or a diagnosis of another run: not trainings to compare."""
    return schema.TAG_COMPARISON in run.data.tags or schema.TAG_JOB in run.data.tags


def diagnose_missing(client: MlflowClient, summaries: list[RunSummary]) -> list[RunSummary]:
    """Diagnoses (and writes back to) every run not diagnosed yet; the others unchanged."""
    from mlflow_audiodiag.reporting.writeback import diagnose_run

    out = []
    for summary in summaries:
        if summary.diagnosed:
            out.append(summary)
            continue
        try:
            diagnose_run(summary.run_id, client=client)
        except Exception as error:  # one bad run does not stop the comparison
            logger.error("could not diagnose run %s: %s", summary.run_id, error)
            out.append(summary)
            continue
        out.append(summarize(client.get_run(summary.run_id), summary.experiment))
    return out
