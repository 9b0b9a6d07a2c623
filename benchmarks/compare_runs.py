"""Time to compare 1,000 runs of one experiment on a local ``mlflow server`` (HTTP, sqlite).

Starts ``mlflow server`` (as ``mlflow-audiodiag server`` does) in a temporary folder, logs
``--runs`` runs whose tags, params and summary metrics look like diagnosed training runs
(mixed verdicts and causes, a 20-epoch validation curve each), then times
``compare`` (``search_runs`` pages only) and ``write_outputs`` (CSV, JSON, figures, HTML; the
curve overlay reads ``--curves`` metric histories) against the 30 s target.

    python benchmarks/compare_runs.py [--runs 1000] [--curves 50]
"""

from __future__ import annotations

import argparse
import random
import subprocess
import tempfile
import time
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from mlflow_audiodiag import schema
from mlflow_audiodiag.cli.server import free_port, server_command, wait_until_healthy
from mlflow_audiodiag.comparison.compare import compare, write_outputs
from mlflow_audiodiag.monitoring.sink import is_http_uri

CAUSES = ["lr_too_low", "overfitting", "class_imbalance", "unnormalized_features", "none"]
TARGET_S = 30.0


def _log_runs(client: MlflowClient, experiment_id: str, n: int) -> None:
    rng = random.Random(0)
    for i in range(n):
        cause = rng.choice(CAUSES)
        verdict = "healthy" if cause == "none" else rng.choice(["stagnant", "inconclusive"])
        start = int(time.time() * 1000)
        run = client.create_run(experiment_id, start_time=start, run_name=f"run-{i:04d}")
        level = rng.uniform(0.2, 0.95)
        curve = [min(0.99, level * (1 - 0.8 ** (e + 1))) for e in range(20)]
        metrics = [Metric("val/accuracy", v, start, e + 1) for e, v in enumerate(curve)]
        metrics += [
            Metric(schema.METRIC_BEST_VAL_ACCURACY, max(curve), start, 0),
            Metric("val/balanced_accuracy", max(curve) - 0.05, start, 0),
            Metric("data/val_majority_accuracy", 0.125, start, 0),
        ]
        findings = [cause, "stagnant_validation"] if verdict == "stagnant" else [cause]
        tags = [
            RunTag(schema.TAG_VERDICT, verdict),
            RunTag(schema.TAG_PRIMARY_CAUSE, cause),
            RunTag(schema.TAG_FINDINGS, ",".join(f for f in findings if f != "none")),
        ]
        params = [Param("optim.lr", rng.choice(["0.001", "0.0001", "0.01"]))]
        params += [Param("model.layers", str(rng.choice([2, 3, 4])))]
        client.log_batch(run.info.run_id, metrics=metrics, params=params, tags=tags)
        client.set_terminated(run.info.run_id, end_time=start + rng.randint(60, 3600) * 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--curves", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        uri = f"http://127.0.0.1:{port}"
        log = (Path(tmp) / "server.log").open("wb")
        server = subprocess.Popen(
            server_command(Path(tmp) / "server", port=port), stdout=log, stderr=log
        )
        try:
            wait_until_healthy(uri, server)
            client = MlflowClient(uri)
            assert is_http_uri(str(client.tracking_uri))
            experiment_id = client.create_experiment("compare-benchmark")
            start = time.perf_counter()
            _log_runs(client, experiment_id, args.runs)
            print(f"logged {args.runs} runs over HTTP in {time.perf_counter() - start:.1f} s")

            start = time.perf_counter()
            result = compare(["compare-benchmark"], client=client)
            searched = time.perf_counter() - start
            out = Path(tmp) / "out"
            write_outputs(result, out, max_curves=args.curves, client=client)
            total = time.perf_counter() - start
            assert len(result.summaries) == args.runs, len(result.summaries)
            print(f"compare (search_runs, {args.runs} runs): {searched:.2f} s")
            print(
                f"outputs (CSV, JSON, {args.curves} curves, heatmap, HTML): "
                f"{total - searched:.2f} s"
            )
            print(f"total: {total:.2f} s = {total / TARGET_S:.2f} of the {TARGET_S:.0f} s target")
        finally:
            server.terminate()
            server.wait(timeout=30)
            log.close()


if __name__ == "__main__":
    main()
