"""Figures of the monitor's dataset statistics (matplotlib, no display needed)."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from mlflow_audiodiag.monitoring.statistics import FeatureStats, LabelStats


def label_histograms(per_split: dict[str, LabelStats]) -> Figure:
    """Clips per class, one bar group per split."""
    splits = list(per_split)
    classes = list(next(iter(per_split.values())).counts)
    fig = Figure(figsize=(max(6.0, 0.6 * len(classes) + 3), 4))
    ax = fig.subplots()
    width = 0.8 / len(splits)
    positions = np.arange(len(classes))
    for i, split in enumerate(splits):
        counts = [per_split[split].counts.get(name, 0) for name in classes]
        ax.bar(positions + i * width, counts, width, label=split)
    ax.set_xticks(positions + 0.4 - width / 2, classes, rotation=45, ha="right")
    ax.set_ylabel("clips")
    ax.set_title("Label histogram per split")
    ax.legend()
    fig.tight_layout()
    return fig


def feature_statistics(per_split: dict[str, FeatureStats], stage: str) -> Figure:
    """Per-bin mean with a +/- std band, one line per split."""
    fig = Figure(figsize=(8, 4))
    ax = fig.subplots()
    for split, stats in per_split.items():
        table = stats.table()
        ax.plot(table["bin"], table["mean"], label=f"{split} mean")
        ax.fill_between(
            table["bin"], table["mean"] - table["std"], table["mean"] + table["std"], alpha=0.15
        )
    ax.set_xlabel("feature bin")
    ax.set_ylabel("value")
    ax.set_title(f"Feature statistics per bin ({stage})")
    ax.legend()
    fig.tight_layout()
    return fig
