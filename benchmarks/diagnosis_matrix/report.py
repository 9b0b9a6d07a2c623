"""Scores and tables: confusion (expected x diagnosed primary cause), cause accuracy over the
faulty runs, false alarms over the healthy runs (a ``stagnant`` verdict or any critical
finding), per front-end, architecture, dataset and overall, and the misses."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

from benchmarks.diagnosis_matrix.checks import fault_check
from mlflow_audiodiag.diagnosis.rules import CAUSE_PRECEDENCE

# Every cause the diagnosis can name, in the engine's order.
CAUSES = CAUSE_PRECEDENCE
SHORT = {
    "none": "-",
    "lr_too_low": "LRL",
    "lr_too_high": "LRH",
    "non_finite": "NAN",
    "exploding_gradients": "EXP",
    "vanishing_gradients": "VAN",
    "no_weight_updates": "NWU",
    "unnormalized_features": "UNN",
    "normalization_mismatch": "MIS",
    "class_imbalance": "IMB",
    "majority_class_collapse": "MAJ",
    "label_noise": "LBN",
    "overfitting": "OVF",
    "underfitting": "UND",
    "attention_collapse": "ATT",
    "invalid_targets": "INV",
    "weight_decay_too_high": "WDH",
    "error": "ERR",
}
VERDICTS = ("healthy", "stagnant", "inconclusive", "diverged")
GROUPINGS = ("front_end", "arch", "dataset")


def ok(result: dict) -> bool:
    return result.get("status") == "ok"


def diagnosed(result: dict) -> str:
    return result.get("primary_cause", "none") if ok(result) else "error"


def false_alarm(result: dict) -> bool:
    """A healthy run called stagnant, or given a critical finding."""
    return result.get("verdict") == "stagnant" or any(
        f["severity"] == "critical" for f in result.get("findings", [])
    )


def correct(result: dict) -> bool:
    if not ok(result):
        return False
    if result["expected"] == "none":
        return not false_alarm(result)
    return result["primary_cause"] == result["expected"]


def stats(results: list[dict]) -> dict:
    """Counts and rates of one group of runs (errors are counted, not scored)."""
    scored = [r for r in results if ok(r)]
    faulty = [r for r in scored if r["expected"] != "none"]
    healthy = [r for r in scored if r["expected"] == "none"]
    hits = sum(correct(r) for r in faulty)
    alarms = sum(false_alarm(r) for r in healthy)
    produced = [r for r in faulty if fault_check(r)[0]]
    return {
        "runs": len(results),
        "errors": len(results) - len(scored),
        "faulty": len(faulty),
        "cause_correct": hits,
        "cause_accuracy": hits / len(faulty) if faulty else None,
        "healthy": len(healthy),
        "false_alarms": alarms,
        "false_alarm_rate": alarms / len(healthy) if healthy else None,
        "healthy_verdicts": sum(r["verdict"] == "healthy" for r in healthy),
        "faulty_with_pattern": len(produced),
        "cause_accuracy_with_pattern": (
            sum(correct(r) for r in produced) / len(produced) if produced else None
        ),
    }


def summarize(results: list[dict]) -> dict:
    """Overall and per-group statistics, and per expected cause."""
    out: dict = {"overall": stats(results)}
    for grouping in (*GROUPINGS, "expected"):
        keys = sorted({str(r[grouping]) for r in results})
        out[grouping] = {k: stats([r for r in results if str(r[grouping]) == k]) for k in keys}
    return out


def _ordered_causes(results: list[dict]) -> tuple[list[str], list[str]]:
    expected = {r["expected"] for r in results}
    rows = [c for c in ("none", *CAUSES) if c in expected]
    rows += sorted(expected - set(rows))
    seen = {diagnosed(r) for r in results}
    columns = [c for c in ("none", *CAUSES, "error") if c in seen or c in expected]
    columns += sorted(seen - set(columns))
    return rows, columns


def confusion_table(results: list[dict]) -> str:
    """Rows: expected cause (``none`` = healthy); columns: verdict counts, then the
    diagnosed primary cause (short codes, legend below), then the share correct."""
    rows, columns = _ordered_causes(results)
    width = max(len(r) for r in rows) + 6
    head = f"{'expected (runs)':<{width}}" + "".join(f"{v[:5]:>6}" for v in VERDICTS) + " |"
    head += "".join(f"{SHORT.get(c, c[:4]):>5}" for c in columns) + " | correct"
    lines = [head, "-" * len(head)]
    for row in rows:
        members = [r for r in results if r["expected"] == row]
        verdicts = Counter(r.get("verdict") for r in members)
        causes = Counter(diagnosed(r) for r in members)
        line = f"{row + f' ({len(members)})':<{width}}"
        line += "".join(f"{verdicts.get(v, 0) or '.':>6}" for v in VERDICTS) + " |"
        for column in columns:
            count = causes.get(column, 0)
            mark = f"[{count}]" if column == row and count else (str(count) if count else ".")
            line += f"{mark:>5}"
        share = sum(correct(r) for r in members) / len(members)
        lines.append(line + f" | {share:6.0%}")
    legend = ", ".join(f"{SHORT.get(c, c)}={c}" for c in columns)
    lines += [
        "",
        f"columns: {legend}",
        "healthy rows are correct without a stagnant verdict "
        "or a critical finding; [n] marks the expected cause",
    ]
    return "\n".join(lines)


def summary_table(summary: dict) -> str:
    head = (
        f"{'group':<28}{'runs':>6}{'errors':>7}{'faulty':>8}{'correct':>8}{'accuracy':>9}"
        f"{'healthy':>8}{'alarms':>7}{'rate':>7}"
    )
    lines = [head, "-" * len(head)]
    entries = [("overall", summary["overall"])]
    for grouping in GROUPINGS:
        entries += [(f"{grouping}={k}", v) for k, v in summary[grouping].items()]
    for name, s in entries:
        accuracy = "-" if s["cause_accuracy"] is None else f"{s['cause_accuracy']:.1%}"
        rate = "-" if s["false_alarm_rate"] is None else f"{s['false_alarm_rate']:.1%}"
        lines.append(
            f"{name:<28}{s['runs']:>6}{s['errors']:>7}{s['faulty']:>8}{s['cause_correct']:>8}"
            f"{accuracy:>9}{s['healthy']:>8}{s['false_alarms']:>7}{rate:>7}"
        )
    return "\n".join(lines)


def _top_findings(result: dict, n: int = 4) -> str:
    return (
        ", ".join(
            f"{f['code']}({f['severity'][0]} {f['score']:.2f})"
            for f in result.get("findings", [])[:n]
        )
        or "no findings"
    )


def misses(results: list[dict]) -> str:
    """Every run not diagnosed as expected, with what the diagnosis said."""
    lines = []
    for r in sorted(results, key=lambda r: (r["expected"], r["key"])):
        if correct(r):
            continue
        if not ok(r):
            lines.append(f"{r['key']}: {r['status']}: {r.get('error', '')}")
            continue
        best = r.get("best_val_accuracy")
        best_text = "n/a" if best is None else f"{best:.2f}"
        lines.append(
            f"{r['key']}: expected {r['expected']}, verdict {r['verdict']}, primary "
            f"{r['primary_cause']}, best val {best_text}; {_top_findings(r)}"
            + ("" if fault_check(r)[0] is not False else " [fault pattern not shown]")
        )
    return "\n".join(lines) or "none"


def unproduced(results: list[dict]) -> str:
    """Runs whose fault (or healthy set-up) did not show the pattern it is meant to."""
    lines = []
    for r in results:
        produced, what = fault_check(r)
        if ok(r) and produced is False:
            lines.append(f"{r['key']}: not shown: {what}; {_pattern_text(r)}")
    return "\n".join(lines) or "none"


def _pattern_text(result: dict) -> str:
    p = result.get("pattern") or {}

    def number(key: str, spec: str = ".2f") -> str:
        value = p.get(key)
        return "n/a" if value is None else format(value, spec)

    return (
        f"val {number('val_first')}->{number('val_best')}->{number('val_last')}, train acc "
        f"{number('train_acc_last')}, loss {number('train_loss_first')}->"
        f"{number('train_loss_min')}, grad norm {number('grad_norm_early', '.1e')}->"
        f"{number('grad_norm_late', '.1e')} (max {number('grad_norm_max', '.1e')})"
    )


def write_outputs(results: list[dict], summary: dict, out: Path) -> None:
    """``results.json``, ``results.csv``, ``summary.json`` and ``report.txt`` in ``out``."""
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    fields = [
        "key",
        "front_end",
        "arch",
        "dataset",
        "scenario",
        "seed",
        "expected",
        "status",
        "verdict",
        "primary_cause",
        "correct",
        "false_alarm",
        "best_val_accuracy",
        "seconds",
        "run_id",
        "findings",
        "error",
    ]
    with (out / "results.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fields, extrasaction="ignore")
        writer.writeheader()
        for r in results:
            row = dict(r, correct=correct(r), false_alarm=ok(r) and false_alarm(r))
            row["fault_produced"] = fault_check(r)[0]
            row["findings"] = _top_findings(r, n=20)
            writer.writerow(row)
    (out / "report.txt").write_text(full_report(results, summary) + "\n")


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def full_report(results: list[dict], summary: dict) -> str:
    overall = summary["overall"]
    accuracy = overall["cause_accuracy"]
    rate = overall["false_alarm_rate"]
    return "\n\n".join(
        [
            "== confusion: expected cause x diagnosed primary cause ==",
            confusion_table(results),
            "== scores ==",
            summary_table(summary),
            f"cause accuracy (faulty runs): "
            f"{'-' if accuracy is None else f'{accuracy:.1%}'} "
            f"({overall['cause_correct']}/{overall['faulty']}); false alarms (healthy runs): "
            f"{overall['false_alarms']}/{overall['healthy']}"
            f" ({'-' if rate is None else f'{rate:.1%}'}); errors: {overall['errors']}",
            f"cause accuracy on faulty runs that showed their pattern: "
            f"{_percent(overall['cause_accuracy_with_pattern'])} "
            f"({overall['faulty_with_pattern']} of {overall['faulty']} runs)",
            "== misses (expected cause not named, or a healthy run alarmed) ==",
            misses(results),
            "== runs whose set-up did not show its intended pattern ==",
            unproduced(results),
        ]
    )
