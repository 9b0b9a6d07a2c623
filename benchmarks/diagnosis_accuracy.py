"""How often does the diagnosis name the right cause on runs it was not tuned on?

Trains a matrix of runs (front-end x architecture x dataset x scenario x seed; see
``benchmarks/diagnosis_matrix``) into a local sqlite MLflow store, diagnoses each with the
package's diagnosis and prints the confusion table (expected x diagnosed primary cause), the
cause accuracy over the faulty runs and the false-alarm rate over the healthy runs, per
front-end, architecture and dataset and overall, and every miss with what the diagnosis said.

    python benchmarks/diagnosis_accuracy.py --subset fast            # a few minutes
    python benchmarks/diagnosis_accuracy.py --subset full --jobs 2   # the whole matrix
    python benchmarks/diagnosis_accuracy.py --only front_end=user --only scenario=lr_too_high
    python benchmarks/diagnosis_accuracy.py --subset full --out DIR --resume --rediagnose

Outputs in ``--out`` (default: a new temporary folder): ``mlflow.db`` and ``artifacts/``
(the runs; with ``--write-back`` also their diagnosis), ``results/<run>.json``, ``logs/<run>.log``,
``results.csv``, ``results.json``, ``summary.json`` and ``report.txt``. Exit status: 1 when
a run failed or timed out, 2 when ``--min-accuracy`` / ``--max-false-alarms`` are not met.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.diagnosis_matrix import matrix, report  # noqa: E402
from benchmarks.diagnosis_matrix.prepare import prepare_inputs  # noqa: E402
from benchmarks.diagnosis_matrix.runner import RunnerConfig, run_all  # noqa: E402

EXPERIMENT = "diagnosis-matrix"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subset", choices=("fast", "full"), default="fast")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (processes)")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        help="FIELD=V[,V] (front_end, arch, dataset, scenario, seed, expected) or a word of the "
        "run key; repeat to narrow further",
    )
    parser.add_argument("--seeds", default="0,1", help="seeds of the full matrix")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: temp)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per run")
    parser.add_argument("--resume", action="store_true", help="reuse results found in --out")
    parser.add_argument(
        "--rediagnose",
        action="store_true",
        help="with --resume: diagnose the reused runs again with the current rules (no training)",
    )
    parser.add_argument(
        "--write-back",
        action="store_true",
        help="write each diagnosis back to its run (tags, description, report; ~3 s a run)",
    )
    parser.add_argument("--min-accuracy", type=float, default=None)
    parser.add_argument("--max-false-alarms", type=int, default=None)
    parser.add_argument("--list", action="store_true", help="list the selected runs and exit")
    return parser.parse_args(argv)


def _progress(result: dict, done: int, total: int) -> None:
    verdict = result.get("verdict", result.get("status"))
    mark = "ok " if report.correct(result) else "MISS"
    print(
        f"[{done:>3}/{total}] {mark} {result['key']}: {verdict} / "
        f"{result.get('primary_cause', result.get('error', ''))} ({result['seconds']:.0f} s)",
        flush=True,
    )


def _rediagnosed(result: dict, out: Path, tracking_uri: str) -> dict:
    """``result`` with its run diagnosed again by the current rules (its file updated)."""
    if result.get("status") != "ok":
        return result
    import mlflow

    from benchmarks.diagnosis_matrix.user_loop import diagnose

    mlflow.set_tracking_uri(tracking_uri)
    updated = {**result, **diagnose(result["run_id"], write=False)}
    (out / "results" / f"{result['key']}.json").write_text(json.dumps(updated, indent=2))
    return updated


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.subset == "fast":
        specs = matrix.fast_matrix()
    else:
        specs = matrix.full_matrix(int(s) for s in args.seeds.split(","))
    specs = matrix.select(specs, args.only)
    if args.list:
        print("\n".join(spec.key for spec in specs))
        print(f"{len(specs)} runs")
        return 0
    if not specs:
        print("no run matches the filters", file=sys.stderr)
        return 1
    out = args.out or Path(tempfile.mkdtemp(prefix="diagnosis-matrix-"))
    out.mkdir(parents=True, exist_ok=True)
    out = out.resolve()
    tracking_uri = f"sqlite:///{out / 'mlflow.db'}"
    print(f"{len(specs)} runs, {args.jobs} at a time; outputs and MLflow store in {out}")
    started = time.monotonic()
    prepare_inputs(specs, tracking_uri, EXPERIMENT, out / "artifacts")
    prepared = time.monotonic()
    print(f"data, features and store ready in {prepared - started:.0f} s", flush=True)
    config = RunnerConfig(
        out=out,
        tracking_uri=tracking_uri,
        experiment=EXPERIMENT,
        jobs=args.jobs,
        timeout_s=args.timeout,
        write_back=args.write_back,
        resume=args.resume,
    )
    results = run_all(specs, config, on_result=_progress)
    if args.rediagnose:
        results = [_rediagnosed(r, out, tracking_uri) for r in results]
    summary = report.summarize(results)
    summary["seconds"] = {
        "prepare": round(prepared - started, 1),
        "runs": round(time.monotonic() - prepared, 1),
        "jobs": args.jobs,
    }
    report.write_outputs(results, summary, out)
    print()
    print(report.full_report(results, summary))
    print(
        f"\n{len(results)} runs in {time.monotonic() - started:.0f} s "
        f"(preparation {prepared - started:.0f} s); outputs in {out}; "
        f"mlflow ui --backend-store-uri {tracking_uri}"
    )
    overall = summary["overall"]
    if overall["errors"]:
        return 1
    accuracy = overall["cause_accuracy"]
    if args.min_accuracy is not None and (accuracy or 0.0) < args.min_accuracy:
        return 2
    if args.max_false_alarms is not None and overall["false_alarms"] > args.max_false_alarms:
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
