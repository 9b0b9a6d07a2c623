"""One self-contained HTML page comparing many runs: verdict counts, compute per cause, finding
counts, the run table and the figures (``data:`` URIs; no scripts, no external assets). Every
string from the runs passes through :func:`~mlflow_audiodiag.reporting.html.esc`."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from mlflow_audiodiag.comparison.collect import KEY_PARAMS, RunSummary
from mlflow_audiodiag.comparison.summary import CauseCost, duration
from mlflow_audiodiag.reporting.html import PAGE_CSS, esc, html_table, image_data_uri


def _score(value: float | None) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.3f}"


def render_comparison(
    title: str,
    summaries: Sequence[RunSummary],
    verdicts: Mapping[str, int],
    findings: Mapping[str, int],
    costs: Sequence[CauseCost],
    images: Mapping[str, Path],
) -> str:
    counts = html_table(("verdict", "runs"), (("", (esc(v), esc(n))) for v, n in verdicts.items()))
    cost_rows = (("", (esc(c.cause), esc(c.runs), esc(duration(c.wall_seconds)))) for c in costs)
    cost_table = html_table(("primary cause", "stagnant runs", "wall time"), cost_rows)
    finding_table = html_table(
        ("finding", "runs"), (("", (esc(f), esc(n))) for f, n in findings.items())
    )
    headers = ("run", "experiment", "user", *KEY_PARAMS, "best val acc", "val bal. acc")
    headers += ("majority", "verdict", "primary cause", "findings")
    rows = (
        (
            f"v-row-{esc(s.verdict)}",
            (
                esc(s.run_name or s.run_id),
                esc(s.experiment),
                esc(s.user),
                *(esc(s.params.get(name, "")) for name in KEY_PARAMS),
                esc(_score(s.best_val_accuracy)),
                esc(_score(s.val_balanced_accuracy)),
                esc(_score(s.majority_baseline)),
                esc(s.verdict),
                esc(s.primary_cause or ""),
                esc(", ".join(s.findings)),
            ),
        )
        for s in summaries
    )
    figures = "".join(
        f'<figure><img alt="{esc(caption)}" src="{image_data_uri(path)}">'
        f"<figcaption>{esc(caption)}</figcaption></figure>"
        for caption, path in images.items()
    )
    body = (
        f"<h1>{esc(title)}</h1><p class='meta'>{esc(len(summaries))} runs</p>"
        f"<h2>Verdicts</h2>{counts}<h2>Compute spent on stagnant runs, by cause</h2>{cost_table}"
        f"<h2>Findings</h2>{finding_table}<h2>Figures</h2>{figures}"
        f"<h2>Runs</h2>{html_table(headers, rows)}"
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)}</title><style>{PAGE_CSS}</style></head>"
        f"<body>{body}</body></html>\n"
    )
