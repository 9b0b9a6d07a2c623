"""Run summaries for comparison, read with ``search_runs`` (no metric histories)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from mlflow.entities import Run, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.search_utils import SearchUtils

from mlflow_audiodiag import schema, signals
from mlflow_audiodiag.comparison.rest_search import RunView, is_http, search_runs_json
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
_PARALLEL_PAGES = 4
_ORDER = ("attributes.start_time DESC",)


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


def summarize(run: Run | RunView, experiment_name: str) -> RunSummary:
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


Searcher = Callable[[int, "str | None"], "tuple[list[Run | RunView], str | None]"]
"""``(max_results, page_token) -> (runs, next page token)`` of one search."""


def _searcher(client: MlflowClient, experiment_ids: list[str], filter_string: str) -> Searcher:
    """Pages of the search, as JSON from an HTTP server (see :mod:`.rest_search`), else
    through the client."""
    uri = str(client.tracking_uri)
    if is_http(uri):
        return lambda max_results, token: search_runs_json(
            uri, experiment_ids, filter_string, max_results, _ORDER, token
        )

    def search(max_results: int, token: str | None) -> tuple[list[Run], str | None]:
        page = client.search_runs(
            experiment_ids,
            filter_string=filter_string,
            max_results=max_results,
            order_by=list(_ORDER),
            page_token=token,
        )
        return list(page), page.token

    return search


def collect_runs(
    client: MlflowClient,
    experiments: Sequence[str] = (),
    filter_string: str = "",
    max_runs: int | None = None,
) -> list[RunSummary]:
    """Summaries of the runs in ``experiments`` (names or ids; all when empty) that match the
    MLflow search ``filter_string``, newest first, page by page.

    A SQL-backed store pages by offset (its page token says so): then the pages after the
    first are fetched :data:`_PARALLEL_PAGES` at a time, since each page of 1,000 runs with
    all their params and metrics keeps a server worker busy for seconds.
    """
    names = resolve_experiments(client, experiments)
    search = _searcher(client, list(names), filter_string)
    runs, token = search(_PAGE if max_runs is None else min(_PAGE, max_runs), None)
    if token and max_runs is None and _offset_of(token) == len(runs):
        runs += _remaining_pages(search, len(runs))
    else:
        while token and (max_runs is None or len(runs) < max_runs):
            page, token = search(
                _PAGE if max_runs is None else min(_PAGE, max_runs - len(runs)), token
            )
            runs += page
    return [summarize(run, names[run.info.experiment_id]) for run in runs if not _is_job(run)]


def _is_job(run: Run | RunView) -> bool:
    """Runs that hold a comparison or a diagnosis of another run: not trainings to compare."""
    return schema.TAG_COMPARISON in run.data.tags or schema.TAG_JOB in run.data.tags


def _offset_of(token: str) -> int | None:
    """The offset an offset page token stands for; ``None`` for any other kind of token."""
    try:
        return SearchUtils.parse_start_offset_from_page_token(token)
    except Exception:  # not an offset token: page sequentially
        return None


def _remaining_pages(search: Searcher, start: int) -> list[Run | RunView]:
    """The pages from offset ``start`` on, fetched in parallel and kept in order, up to the
    first page that comes back short."""
    runs: list[Run | RunView] = []
    with ThreadPoolExecutor(max_workers=_PARALLEL_PAGES) as pool:
        while True:
            tokens = [
                SearchUtils.create_page_token(start + i * _PAGE).decode()
                for i in range(_PARALLEL_PAGES)
            ]
            for page, token in pool.map(lambda token: search(_PAGE, token), tokens):
                runs += page
                if len(page) < _PAGE or not token:
                    return runs
            start += _PARALLEL_PAGES * _PAGE


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
