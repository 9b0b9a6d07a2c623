"""Figures across runs (matplotlib ``Figure`` objects, no pyplot state)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from mlflow_audiodiag.comparison.collect import RunSummary
from mlflow_audiodiag.diagnosis.rules import FINDING_CODES

VERDICT_COLORS = {
    "healthy": "#1a7f37",
    "stagnant": "#bf8700",
    "diverged": "#cf222e",
    "inconclusive": "#6e7781",
}
_OTHER_COLOR = "#0969da"
MAX_RUN_LABELS = 60


def validation_overlay(
    summaries: Sequence[RunSummary], curves: Mapping[str, np.ndarray]
) -> Figure | None:
    """Validation accuracy per epoch of every run in ``curves`` (``[epochs, 2]`` rows of epoch
    and value), coloured by verdict."""
    drawn = [(s, curves[s.run_id]) for s in summaries if len(curves.get(s.run_id, ())) > 0]
    if not drawn:
        return None
    fig = Figure(figsize=(8, 4.5))
    ax = fig.add_subplot()
    seen: set[str] = set()
    for summary, curve in drawn:
        color = VERDICT_COLORS.get(summary.verdict, _OTHER_COLOR)
        label = summary.verdict if summary.verdict not in seen else None
        seen.add(summary.verdict)
        ax.plot(curve[:, 0], curve[:, 1], color=color, alpha=0.7, linewidth=1.2, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("val/accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(title="verdict", loc="lower right")
    fig.tight_layout()
    return fig


def findings_heatmap(summaries: Sequence[RunSummary]) -> Figure | None:
    """Runs x finding codes: filled where a run has the finding, darker for its primary cause."""
    codes = [c for c in FINDING_CODES if any(c in s.findings for s in summaries)]
    if not codes:
        return None
    grid = np.zeros((len(summaries), len(codes)))
    for row, summary in enumerate(summaries):
        for col, code in enumerate(codes):
            if code in summary.findings:
                grid[row, col] = 2.0 if code == summary.primary_cause else 1.0
    height = min(2 + 0.22 * len(summaries), 40)
    fig = Figure(figsize=(max(6, 0.45 * len(codes) + 3), height))
    ax = fig.add_subplot()
    ax.imshow(grid, aspect="auto", cmap="Oranges", vmin=0, vmax=2, interpolation="nearest")
    ax.set_xticks(range(len(codes)), codes, rotation=60, ha="right", fontsize=8)
    # At most MAX_RUN_LABELS names: thousands of rows cannot show theirs, and laying out every
    # label would cost minutes. Run names are user text: "$" is drawn, not parsed as math.
    step = math.ceil(len(summaries) / MAX_RUN_LABELS)
    rows = range(0, len(summaries), step)
    labels = [summaries[i].run_name or summaries[i].run_id[:8] for i in rows]
    ax.set_yticks(rows, labels, fontsize=7 if len(summaries) > 30 else 8, parse_math=False)
    if step > 1:
        ax.set_ylabel(f"{len(summaries)} runs, newest first (every {step}th named)")
    ax.set_title("findings per run (dark: primary cause)")
    fig.tight_layout()
    return fig
