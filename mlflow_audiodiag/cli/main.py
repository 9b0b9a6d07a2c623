"""``mlflow-audiodiag``: prepare the embedded dataset and train."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from mlflow_audiodiag.cli.options import (
    add_source_options,
    add_training_options,
    parse_bool,
    parse_optional_path,
    parse_range,
    training_values,
)
from mlflow_audiodiag.cli.server_options import add_server_parser
from mlflow_audiodiag.cli.tracking import check_tracking_server, run_page_hint, use_experiment
from mlflow_audiodiag.errors import AudioDiagError, ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlflow-audiodiag",
        description="Train audio transformers on MLflow and record why validation stagnates.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    prepare = commands.add_parser(
        "prepare-data", help="generate the embedded synthetic audio dataset (WAV + manifest.csv)"
    )
    prepare.add_argument(
        "--out",
        type=parse_optional_path,
        default=None,
        help="output folder (default: a folder in the cache directory)",
    )
    prepare.add_argument("--n-classes", type=int, default=8)
    prepare.add_argument("--clips-per-class", type=int, default=150)
    prepare.add_argument("--duration-s", type=float, default=1.0)
    prepare.add_argument("--sample-rate", type=int, default=16000)
    prepare.add_argument(
        "--snr-db",
        type=parse_range,
        default=(5.0, 20.0),
        help="background-noise SNR range 'low,high' in dB",
    )
    prepare.add_argument(
        "--imbalance-ratio",
        type=float,
        default=1.0,
        help="clips of the largest class / clips of the smallest class",
    )
    prepare.add_argument("--seed", type=int, default=0)
    prepare.add_argument("--progress", type=parse_bool, default=True)

    train = commands.add_parser(
        "train",
        help="train the transformer and log the run to MLflow",
        description="Train on --source (manifest CSV, folder per class or Speech Commands "
        "tree) or, when it is empty, on the embedded synthetic dataset.",
    )
    train.add_argument(
        "--experiment",
        default=None,
        help="MLflow experiment name (default: MLFLOW_EXPERIMENT_NAME or Default)",
    )
    add_source_options(train)
    add_training_options(train)

    zoo = commands.add_parser(
        "zoo",
        help="reproduce a cause of stagnant validation (or all of them) and diagnose it",
        description="Train one fault-zoo scenario (a deliberate fault that really produces "
        "its pattern) and diagnose the run; 'all' runs every scenario as child runs of one "
        "parent run and prints the scenario x diagnosed-cause table.",
    )
    zoo.add_argument("--scenario", default="all", help="a scenario name, or all (default)")
    zoo.add_argument("--list", action="store_true", help="list the scenarios and exit")
    zoo.add_argument(
        "--experiment",
        default=None,
        help="MLflow experiment name (default: MLFLOW_EXPERIMENT_NAME or Default)",
    )

    compare = commands.add_parser(
        "compare",
        help="compare the diagnoses of many runs: table, counts, compute per cause, HTML",
        description="Summaries come from search_runs (no metric histories, except the "
        "validation curves of the newest --curves runs for the overlay plot).",
    )
    compare.add_argument(
        "--experiment",
        action="append",
        default=[],
        help="experiment name or id (repeatable; default: every active experiment)",
    )
    compare.add_argument(
        "--filter",
        default="",
        help="an MLflow search filter, e.g. \"tags.`audiodiag.verdict` = 'stagnant'\"",
    )
    compare.add_argument(
        "--diagnose-missing",
        action="store_true",
        help="diagnose runs that have no diagnosis yet (written back to them)",
    )
    compare.add_argument("--max-runs", type=int, default=None, help="newest N runs only")
    compare.add_argument("--curves", type=int, default=50, help="runs in the curve overlay")
    compare.add_argument(
        "--out",
        type=parse_optional_path,
        default=None,
        help="output folder (CSV, JSON, HTML); default: a new folder under <cache dir>/comparisons",
    )
    compare.add_argument(
        "--log", action="store_true", help="log the outputs as artifacts of a comparison run"
    )

    add_server_parser(commands)

    diagnose = commands.add_parser(
        "diagnose",
        help="diagnose a run: verdict, most likely cause, evidence and fix (written to the run)",
    )
    diagnose.add_argument("run_id", help="the MLflow run to diagnose")
    diagnose.add_argument("--json", action="store_true", help="print the diagnosis as JSON")
    diagnose.add_argument(
        "--fail-on",
        action="append",
        default=[],
        choices=["stagnant", "diverged", "inconclusive", "healthy"],
        help="exit with status 1 when the verdict is this one (repeatable)",
    )
    diagnose.add_argument(
        "--no-write", action="store_true", help="only print; do not write back to the run"
    )
    diagnose.add_argument(
        "--thresholds", type=Path, default=None, help="JSON file overriding detection thresholds"
    )
    return parser


def _stop_on_sigterm() -> None:
    """SIGTERM (a job scheduler, ``kill``, ``mlflow run`` cancelled) stops training like
    Ctrl-C: the run ends KILLED with everything recorded so far delivered."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    with contextlib.suppress(ValueError):  # only the main thread may set handlers
        signal.signal(signal.SIGTERM, interrupt)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    if args.command in ("train", "zoo"):
        _stop_on_sigterm()
    try:
        if args.command == "prepare-data":
            return _prepare_data(args)
        if args.command == "diagnose":
            return _diagnose(args)
        if args.command == "zoo":
            return _zoo(args)
        if args.command == "compare":
            return _compare(args)
        if args.command == "server":
            from mlflow_audiodiag.cli.server import run_server
            from mlflow_audiodiag.cli.server_options import server_settings

            return run_server(server_settings(args))
        return _train(args)
    except AudioDiagError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.command in ("train", "zoo"):
            print("stopped: the run ends KILLED with what it recorded so far", file=sys.stderr)
        return 130
    except Exception as error:
        refusal = _refusal(error)
        if refusal is None:
            raise
        print(f"error: {refusal}", file=sys.stderr)
        return 2


def _refusal(error: Exception) -> str | None:
    """One line for a tracking server's refusal (no login, no permission), else ``None``."""
    from mlflow.exceptions import MlflowException

    if not isinstance(error, MlflowException):
        return None
    if error.error_code not in ("PERMISSION_DENIED", "UNAUTHENTICATED"):
        return None
    import mlflow

    return (
        f"MLflow tracking server {mlflow.get_tracking_uri()} refused the request "
        f"({error.error_code}: {error.message}); ask the experiment's owner or the server's "
        "admin for permission, or check MLFLOW_TRACKING_USERNAME"
    )


def _prepare_data(args: argparse.Namespace) -> int:
    from mlflow_audiodiag.data.synthetic import SyntheticConfig, generate_dataset

    config = SyntheticConfig(
        n_classes=args.n_classes,
        clips_per_class=args.clips_per_class,
        duration_s=args.duration_s,
        sample_rate=args.sample_rate,
        snr_db=args.snr_db,
        imbalance_ratio=args.imbalance_ratio,
        seed=args.seed,
    )
    out = Path(args.out) if args.out else None
    manifest = generate_dataset(out, config, progress=args.progress)
    print(f"manifest: {manifest}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from mlflow_audiodiag.training.config import TrainConfig
    from mlflow_audiodiag.training.run import train

    config = TrainConfig.from_flat(training_values(args))
    uri = check_tracking_server()
    if args.experiment:
        use_experiment(args.experiment)
    result = train(config)
    if result.rank != 0:  # another DDP rank: rank 0 reports the job's run
        return 0
    print()
    print(f"run id:              {result.run_id}")
    print(f"validation accuracy: {result.best_val_accuracy:.4f} (best epoch {result.best_epoch})")
    if result.test_accuracy is not None:
        print(f"test accuracy:       {result.test_accuracy:.4f}")
    if result.verdict is not None:
        cause = f" (most likely cause: {result.primary_cause})" if result.primary_cause else ""
        print(f"diagnosis:           {result.verdict}{cause}")
    print(f"open it:             {run_page_hint(result.experiment_id, result.run_id, uri)}")
    return 0


def _zoo(args: argparse.Namespace) -> int:
    import mlflow

    from mlflow_audiodiag.zoo.runner import confusion_markdown, run_scenario, run_zoo
    from mlflow_audiodiag.zoo.scenarios import SCENARIOS

    if args.list:
        for scenario in SCENARIOS.values():
            print(f"{scenario.name:24} {scenario.fault}")
        return 0
    if args.scenario != "all" and args.scenario not in SCENARIOS:
        raise ConfigError(
            f"unknown zoo scenario {args.scenario!r}; choose one of: {', '.join(SCENARIOS)}, all"
        )
    uri = check_tracking_server()
    if args.experiment:
        use_experiment(args.experiment)
    every = args.scenario == "all"
    results = run_zoo(list(SCENARIOS)) if every else [run_scenario(args.scenario)]
    print()
    print(confusion_markdown(results))
    for result in results:
        run = mlflow.get_run(result.run_id)
        print(f"{result.scenario}: {run_page_hint(run.info.experiment_id, result.run_id, uri)}")
    if len(results) == 1:  # what the run's page shows as its description
        note = run.data.tags.get("mlflow.note.content", "")
        print()
        print(_plain("\n".join(line for line in note.splitlines() if not line.startswith("<!--"))))
    return 0 if all(r.matches for r in results) else 1


def _compare(args: argparse.Namespace) -> int:
    from mlflow.exceptions import MlflowException

    from mlflow_audiodiag.comparison.compare import (
        compare,
        comparison_name,
        log_comparison,
        write_outputs,
    )
    from mlflow_audiodiag.comparison.summary import duration, text_table

    check_tracking_server()
    try:
        result = compare(
            args.experiment, args.filter, diagnose=args.diagnose_missing, max_runs=args.max_runs
        )
    except MlflowException as error:
        raise ConfigError(f"cannot search runs ({args.filter!r}): {error.message}") from error
    print(text_table(result.summaries))
    print()
    print("verdicts: " + ", ".join(f"{v} {n}" for v, n in result.verdicts.items()))
    print("findings: " + (", ".join(f"{f} {n}" for f, n in result.findings.items()) or "none"))
    for cost in result.costs:
        print(f"stagnant, {cost.cause}: {cost.runs} runs, {duration(cost.wall_seconds)}")
    out = Path(args.out) if args.out else _default_comparison_folder()
    files = write_outputs(result, out, max_curves=args.curves)
    print(f"written: {', '.join(str(p) for p in files.values())}")
    if args.log:
        name = comparison_name(args.experiment, args.filter)
        print(f"logged to run {log_comparison(files, run_name=name)}")
    return 0


def _default_comparison_folder() -> Path:
    """A new folder under the cache directory, outside any checkout."""
    import time

    from mlflow_audiodiag.cache import default_cache_root

    return default_cache_root() / "comparisons" / time.strftime("%Y%m%d-%H%M%S")


def _plain(markdown: str) -> str:
    return markdown.replace("**", "").replace("`", "")


def _diagnose(args: argparse.Namespace) -> int:
    import json

    from mlflow.exceptions import MlflowException

    from mlflow_audiodiag.diagnosis.thresholds import DEFAULT_THRESHOLDS, Thresholds
    from mlflow_audiodiag.reporting.writeback import diagnose_run, summary_markdown

    check_tracking_server()
    thresholds = DEFAULT_THRESHOLDS
    if args.thresholds is not None:
        try:
            thresholds = Thresholds.from_dict(json.loads(args.thresholds.read_text()))
        except (OSError, ValueError) as error:
            raise ConfigError(f"cannot use thresholds file {args.thresholds}: {error}") from error
    try:
        diagnosis = diagnose_run(args.run_id, thresholds=thresholds, write=not args.no_write)
    except MlflowException as error:
        raise ConfigError(f"cannot diagnose run {args.run_id!r}: {error.message}") from error
    _describe_project_run(args.run_id, diagnosis)
    if args.json:
        print(json.dumps(diagnosis.to_dict(), indent=2))
    else:
        print(_plain(summary_markdown(diagnosis)))
    return 1 if diagnosis.verdict in args.fail_on else 0


def _describe_project_run(run_id: str, diagnosis) -> None:
    """Under ``mlflow run . -e diagnose`` MLflow creates a run of its own: it becomes a child of
    the diagnosed run, named after it, holding the diagnosis, instead of an empty extra run."""
    import json
    import os

    from mlflow.tracking import MlflowClient

    from mlflow_audiodiag import schema
    from mlflow_audiodiag.reporting.writeback import summary_markdown

    project_run = os.environ.get("MLFLOW_RUN_ID")
    if not project_run or project_run == run_id:
        return
    client = MlflowClient()
    target = client.get_run(run_id)
    name = target.info.run_name or run_id
    client.set_tag(project_run, "mlflow.parentRunId", run_id)
    client.set_tag(project_run, "mlflow.runName", f"diagnose {name}"[:250])
    client.set_tag(project_run, schema.TAG_JOB, "diagnose")
    client.set_tag(project_run, schema.TAG_NOTE, summary_markdown(diagnosis))
    client.log_text(
        project_run, json.dumps(diagnosis.to_dict(), indent=2), schema.ARTIFACT_FINDINGS
    )


if __name__ == "__main__":
    raise SystemExit(main())
