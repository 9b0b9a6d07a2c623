"""Aggregates over run summaries: the comparison table, finding counts, compute per cause."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from mlflow_audiodiag.comparison.collect import KEY_PARAMS, RunSummary

UNKNOWN_CAUSE = "no cause found"


@dataclass(frozen=True)
class CauseCost:
    """Stagnant runs that share a primary cause, and the wall time they took."""

    cause: str
    runs: int
    wall_seconds: float


def comparison_frame(summaries: Sequence[RunSummary]) -> pd.DataFrame:
    """One row per run: name, user, key params, scores, verdict, cause and findings."""
    rows = []
    for s in summaries:
        rows.append(
            {
                "run_name": s.run_name,
                "run_id": s.run_id,
                "experiment": s.experiment,
                "user": s.user,
                "status": s.status,
                **{name: s.params.get(name, "") for name in KEY_PARAMS},
                "best_val_accuracy": s.best_val_accuracy,
                "val_balanced_accuracy": s.val_balanced_accuracy,
                "majority_baseline": s.majority_baseline,
                "verdict": s.verdict,
                "primary_cause": s.primary_cause or "",
                "findings": ",".join(s.findings),
                "wall_seconds": s.wall_seconds,
            }
        )
    return pd.DataFrame(rows)


def finding_counts(summaries: Sequence[RunSummary]) -> dict[str, int]:
    """How many runs have each finding, most frequent first."""
    return dict(Counter(f for s in summaries for f in s.findings).most_common())


def verdict_counts(summaries: Sequence[RunSummary]) -> dict[str, int]:
    return dict(Counter(s.verdict for s in summaries).most_common())


def compute_by_cause(summaries: Sequence[RunSummary]) -> list[CauseCost]:
    """Wall time of the stagnant runs grouped by primary cause, costliest first."""
    runs: Counter[str] = Counter()
    seconds: Counter[str] = Counter()
    for s in summaries:
        if s.verdict != "stagnant":
            continue
        cause = s.primary_cause or UNKNOWN_CAUSE
        runs[cause] += 1
        seconds[cause] += s.wall_seconds or 0.0
    costs = [CauseCost(cause, runs[cause], seconds[cause]) for cause in runs]
    return sorted(costs, key=lambda c: (-c.wall_seconds, c.cause))


def duration(seconds: float) -> str:
    """``42 s``, ``12.5 min`` or ``3.20 h``."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def text_table(summaries: Sequence[RunSummary], max_rows: int = 50) -> str:
    """A plain-text table for the terminal (the first ``max_rows`` runs)."""
    frame = comparison_frame(summaries[:max_rows])
    if frame.empty:
        return "(no runs)"
    columns = ["run_name", "user", "lr", "layers", "normalization", "best_val_accuracy"]
    columns += ["majority_baseline", "verdict", "primary_cause"]
    shown = frame[columns].copy()
    for column in ("best_val_accuracy", "majority_baseline"):
        shown[column] = shown[column].map(lambda v: "" if pd.isna(v) else f"{v:.3f}")
    text = shown.to_string(index=False)
    if len(summaries) > max_rows:
        text += f"\n... and {len(summaries) - max_rows} more runs (all of them in the CSV)"
    return text
