"""Aggregation and the comparison page, on hand-made run summaries."""

from __future__ import annotations

import html

from mlflow_audiodiag.comparison.collect import NOT_DIAGNOSED, RunSummary
from mlflow_audiodiag.comparison.page import render_comparison
from mlflow_audiodiag.comparison.summary import (
    UNKNOWN_CAUSE,
    comparison_frame,
    compute_by_cause,
    duration,
    finding_counts,
    text_table,
    verdict_counts,
)


def run(name: str, verdict: str, cause: str | None, findings: list[str], seconds: float):
    return RunSummary(
        run_id=f"id-{name}",
        run_name=name,
        experiment="exp",
        user="ana",
        status="FINISHED",
        wall_seconds=seconds,
        params={"lr": "0.001", "layers": "3"},
        best_val_accuracy=0.5,
        val_balanced_accuracy=0.4,
        majority_baseline=0.125,
        verdict=verdict,
        primary_cause=cause,
        findings=findings,
    )


RUNS = [
    run("a", "stagnant", "lr_too_low", ["lr_too_low", "stagnant_validation"], 600.0),
    run("b", "stagnant", "lr_too_low", ["lr_too_low", "stagnant_validation"], 1200.0),
    run("c", "stagnant", "overfitting", ["overfitting", "stagnant_validation"], 7200.0),
    run("d", "stagnant", None, ["stagnant_validation"], 30.0),
    run("e", "healthy", None, ["class_imbalance"], 5000.0),
    run("f", NOT_DIAGNOSED, None, [], 10.0),
]


def test_counts_and_compute_per_cause_of_stagnant_runs() -> None:
    assert finding_counts(RUNS) == {
        "stagnant_validation": 4,
        "lr_too_low": 2,
        "overfitting": 1,
        "class_imbalance": 1,
    }
    assert verdict_counts(RUNS) == {"stagnant": 4, "healthy": 1, NOT_DIAGNOSED: 1}
    costs = [(c.cause, c.runs, c.wall_seconds) for c in compute_by_cause(RUNS)]
    assert costs == [
        ("overfitting", 1, 7200.0),
        ("lr_too_low", 2, 1800.0),
        (UNKNOWN_CAUSE, 1, 30.0),
    ]


def test_frame_and_text_table_hold_every_run() -> None:
    frame = comparison_frame(RUNS)
    assert list(frame["run_name"]) == list("abcdef")
    assert frame.loc[0, "findings"] == "lr_too_low,stagnant_validation"
    assert frame.loc[0, "lr"] == "0.001" and frame.loc[0, "normalization"] == ""
    text = text_table(RUNS, max_rows=4)
    assert "overfitting" in text and "and 2 more runs" in text
    assert text_table([]) == "(no runs)"


def test_durations_read_naturally() -> None:
    assert [duration(s) for s in (42, 750, 11520)] == ["42 s", "12.5 min", "3.20 h"]


def test_the_page_escapes_every_run_string() -> None:
    evil = run("<script>alert(1)</script>", "stagnant", "lr_too_low", ["lr_too_low"], 1.0)
    page = render_comparison("<b>team</b>", [evil], {"stagnant": 1}, {"lr_too_low": 1}, [], {})
    assert "<script>" not in page and "<b>team</b>" not in page
    assert html.escape("<script>alert(1)</script>") in page
    assert page.startswith("<!DOCTYPE html>") and "http" not in page.lower().replace(
        "http-equiv", ""
    )
