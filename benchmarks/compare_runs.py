"""Time to compare an experiment's runs on a team tracking server, over HTTP, as runs grow.

Starts ``mlflow-audiodiag server`` with basic auth on, like a team's server, on ``--backend
sqlite`` (a folder) or ``--backend postgres`` (a private PostgreSQL cluster, made as the tests
make it). For each count in ``--runs`` it logs that many runs that look like diagnosed training
runs (all 80 config params, summary metrics, a 20-epoch validation curve, verdict, cause and
findings tags) into an experiment of their own, then times ``compare`` over HTTP (search_runs
pages) and ``write_outputs`` (CSV, JSON, figures, HTML; the curve overlay reads ``--curves``
metric histories) and prints how the time grows with the count. The runs are written with
MLflow's client straight into the server's store (``log_batch`` from a thread pool), which is
several times faster than through the server and changes nothing that is measured.

    python benchmarks/compare_runs.py --backend postgres --runs 1000,10000
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test support

from support.postgres import PostgresCluster, find_bin_dir, missing_reason  # noqa: E402
from support.team_server import TeamServer  # noqa: E402

from mlflow_audiodiag import schema  # noqa: E402
from mlflow_audiodiag.comparison.compare import compare, write_outputs  # noqa: E402
from mlflow_audiodiag.training.config import TrainConfig  # noqa: E402

CAUSES = ["lr_too_low", "overfitting", "class_imbalance", "unnormalized_features", "none"]
TARGET_S = 60.0
EPOCHS = 20


def _log_run(client: MlflowClient, experiment_id: str, index: int) -> None:
    """One run shaped like a diagnosed training run: 3 tracking calls."""
    rng = random.Random(index)
    cause = rng.choice(CAUSES)
    verdict = "healthy" if cause == "none" else rng.choice(["stagnant", "inconclusive"])
    findings = [cause, "stagnant_validation"] if verdict == "stagnant" else [cause]
    start = int(time.time() * 1000)
    tags = {
        schema.TAG_VERDICT: verdict,
        schema.TAG_PRIMARY_CAUSE: cause,
        schema.TAG_FINDINGS: ",".join(f for f in findings if f != "none"),
    }
    run = client.create_run(experiment_id, start_time=start, tags=tags, run_name=f"run-{index:05d}")
    params = TrainConfig().to_params()
    params["optim.lr"] = rng.choice(["0.001", "0.0001", "0.01"])
    params["model.layers"] = str(rng.choice([2, 3, 4]))
    level = rng.uniform(0.2, 0.95)
    curve = [min(0.99, level * (1 - 0.8 ** (e + 1))) for e in range(EPOCHS)]
    metrics = [Metric("val/accuracy", v, start, e + 1) for e, v in enumerate(curve)]
    metrics += [Metric("train/loss", 2.0 - v, start, e + 1) for e, v in enumerate(curve)]
    summary = {
        schema.METRIC_BEST_VAL_ACCURACY: max(curve),
        "val/balanced_accuracy": max(curve) - 0.05,
        "data/val_majority_accuracy": 0.125,
        "test/accuracy": max(curve) - 0.02,
        "best/epoch": float(EPOCHS),
        "diagnosis/n_findings": float(len(findings)),
    }
    metrics += [Metric(key, value, start, 0) for key, value in summary.items()]
    client.log_batch(
        run.info.run_id,
        metrics=metrics,
        params=[Param(key, str(value)) for key, value in params.items()],
        tags=[RunTag("mlflow.source.name", "benchmark")],
    )
    client.set_terminated(run.info.run_id, end_time=start + rng.randint(60, 3600) * 1000)


def _log_runs(writer: MlflowClient, experiment_id: str, n: int, threads: int) -> float:
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for done, _ in enumerate(pool.map(lambda i: _log_run(writer, experiment_id, i), range(n))):
            if (done + 1) % 2000 == 0:
                print(f"  logged {done + 1} runs ({time.perf_counter() - start:.0f} s)", flush=True)
    return time.perf_counter() - start


def _time_compare(client: MlflowClient, experiment: str, n: int, curves: int, out: Path) -> dict:
    start = time.perf_counter()
    result = compare([experiment], client=client)
    searched = time.perf_counter() - start
    write_outputs(result, out, max_curves=curves, client=client)
    total = time.perf_counter() - start
    assert len(result.summaries) == n, (len(result.summaries), n)
    return {"search": searched, "outputs": total - searched, "total": total}


def _server(backend: str, tmp: Path, workers: int, stack: list) -> TeamServer:
    if backend == "postgres":
        reason = missing_reason()
        if reason is not None:
            raise SystemExit(f"cannot run on PostgreSQL: {reason}")
        cluster = PostgresCluster(find_bin_dir()).start()
        stack.append(cluster.stop)
        store, users = cluster.create_database("mlflow"), cluster.create_database("mlflow_auth")
    else:
        store, users = f"sqlite:///{tmp / 'mlflow.db'}", None
    server = TeamServer(tmp / "server", store_uri=store, auth_database_uri=users, workers=workers)
    stack.append(server.stop)
    return server.start()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="postgres")
    parser.add_argument("--runs", default="1000,10000", help="comma-separated run counts")
    parser.add_argument("--curves", type=int, default=50)
    parser.add_argument("--threads", type=int, default=4, help="logging threads (PostgreSQL)")
    parser.add_argument("--workers", type=int, default=4, help="server worker processes")
    args = parser.parse_args()
    counts = [int(value) for value in args.runs.split(",")]
    stack: list = []
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        try:
            server = _server(args.backend, tmp, args.workers, stack)
            os.environ["MLFLOW_TRACKING_USERNAME"] = "admin"
            os.environ["MLFLOW_TRACKING_PASSWORD"] = server.admin_password
            os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
            client = MlflowClient(server.uri)  # compare reads over HTTP, as users do
            writer = MlflowClient(server.store_uri)  # the runs go straight into the store
            threads = args.threads if args.backend == "postgres" else 1
            print(f"server: {server.uri}, {args.backend} store, basic auth, {args.workers} workers")
            times: dict[int, dict] = {}
            for n in counts:
                experiment = f"compare-{n}"
                experiment_id = client.create_experiment(experiment)
                logged = _log_runs(writer, experiment_id, n, threads)
                print(f"{n} runs: logged into the store in {logged:.1f} s ({n / logged:.0f}/s)")
                times[n] = _time_compare(client, experiment, n, args.curves, tmp / f"out-{n}")
                t = times[n]
                print(
                    f"{n} runs: compare (search_runs) {t['search']:.2f} s, outputs (CSV, JSON, "
                    f"{args.curves} curves, heatmap, HTML) {t['outputs']:.2f} s, total "
                    f"{t['total']:.2f} s = {t['total'] / TARGET_S:.2f} of the {TARGET_S:.0f} s "
                    "target",
                    flush=True,
                )
            if len(counts) > 1:
                low, high = min(counts), max(counts)
                print(
                    f"growth {low} -> {high} runs (x{high / low:.0f}): compare "
                    f"x{times[high]['search'] / times[low]['search']:.1f}, total "
                    f"x{times[high]['total'] / times[low]['total']:.1f}"
                )
        finally:
            for stop in reversed(stack):
                stop()


if __name__ == "__main__":
    main()
