"""Figures of one run's evidence (matplotlib ``Figure`` objects, no pyplot state).

Each function returns ``None`` when the signals it draws were not logged, so a report shows
whatever the run has.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from mlflow_audiodiag import schema
from mlflow_audiodiag.diagnosis import findings as codes
from mlflow_audiodiag.diagnosis.evidence import RunEvidence
from mlflow_audiodiag.diagnosis.findings import Diagnosis

TRAIN, VAL = schema.SPLIT_TRAIN, schema.SPLIT_VAL
STAGES = ("raw", "normalized")
SPLITS = (schema.SPLIT_TRAIN, schema.SPLIT_VAL, schema.SPLIT_TEST)

# File name of each figure that save_all writes.
FILES: dict[str, str] = {
    "training_curves": "training_curves.png",
    "gradient_norms": "gradient_norms.png",
    "learning_rate": "learning_rate.png",
    "histograms": "histograms.png",
    "features": "features.png",
}

_NUMBER = r"(\d+(?:\.\d+)?(?:e[+-]?\d+)?)"
_WINDOW = re.compile(rf"epochs\s+{_NUMBER}-{_NUMBER}")


def plateau_window(diagnosis: Diagnosis | None) -> tuple[float, float] | None:
    """First and last epoch of the ``stagnant_validation`` plateau, if that finding fired."""
    finding = diagnosis.finding(codes.STAGNANT_VALIDATION) if diagnosis else None
    if finding is None:
        return None
    match = _WINDOW.search(str(finding.evidence.get("window", "")))
    if match is None:
        return None
    return float(match.group(1)), float(match.group(2))


def training_curves(evidence: RunEvidence, diagnosis: Diagnosis | None = None) -> Figure | None:
    """Train/val loss and accuracy per epoch, the plateau window shaded and the majority guess
    drawn when known."""
    panels = [
        ("loss", "Loss"),
        ("accuracy", "Accuracy"),
    ]
    present = [
        (name, label)
        for name, label in panels
        if any(evidence.series(schema.split_metric(s, name)) is not None for s in (TRAIN, VAL))
    ]
    if not present:
        return None
    window = plateau_window(diagnosis)
    fig = Figure(figsize=(5.5 * len(present), 4))
    axes = np.atleast_1d(fig.subplots(1, len(present)))
    for ax, (name, label) in zip(axes, present, strict=True):
        for split, style in ((TRAIN, "-"), (VAL, "-o")):
            data = evidence.series(schema.split_metric(split, name))
            if data is not None:
                ax.plot(data[:, 0], data[:, 1], style, markersize=3, label=split)
        if name == "accuracy":
            majority = evidence.latest(schema.METRIC_MAJORITY_BASELINE)
            if majority is not None and np.isfinite(majority):
                ax.axhline(majority, color="grey", linestyle="--", label="majority guess")
        if window is not None:
            ax.axvspan(window[0], window[1], color="tab:red", alpha=0.12, label="plateau")
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.set_title(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def gradient_heatmap(evidence: RunEvidence) -> Figure | None:
    """log10 gradient norm per parameter group (rows, early layers at the top) and step."""
    groups = evidence.groups(schema.GRAD_NORM_PREFIX)
    series = {g: evidence.series(schema.GRAD_NORM_PREFIX + g) for g in groups}
    series = {g: s for g, s in series.items() if s is not None}
    if not series:
        return None
    steps = np.unique(np.concatenate([s[:, 0] for s in series.values()]))
    grid = np.full((len(series), len(steps)), np.nan)
    for row, data in enumerate(series.values()):
        with np.errstate(divide="ignore", invalid="ignore"):
            values = np.where(data[:, 1] > 0, np.log10(data[:, 1]), np.nan)
        grid[row, np.searchsorted(steps, data[:, 0])] = values
    fig = Figure(figsize=(9, 1.2 + 0.35 * len(series)))
    ax = fig.subplots()
    masked = np.ma.masked_invalid(grid)
    first, last = float(steps[0]), float(steps[-1])
    half = 0.5 if last == first else 0.5 * (last - first) / max(len(steps) - 1, 1)
    image = ax.imshow(
        masked,
        aspect="auto",
        interpolation="nearest",
        origin="upper",
        extent=(first - half, last + half, len(series) - 0.5, -0.5),
        cmap="viridis",
    )
    ax.set_yticks(np.arange(len(series)), list(series))
    ax.set_xlabel("step")
    ax.set_title("Gradient norm per parameter group (log10; blank: zero or non-finite)")
    fig.colorbar(image, ax=ax, label="log10 ||grad||")
    fig.tight_layout()
    return fig


def lr_curve(evidence: RunEvidence) -> Figure | None:
    """Every ``lr/<group>`` step series, on a log scale when all are positive."""
    groups = evidence.groups(schema.LR_PREFIX)
    series = {g: evidence.series(schema.LR_PREFIX + g) for g in groups}
    series = {g: s for g, s in series.items() if s is not None}
    if not series:
        return None
    fig = Figure(figsize=(8, 3.5))
    ax = fig.subplots()
    for group, data in series.items():
        ax.plot(data[:, 0], data[:, 1], label=group)
    values = np.concatenate([s[:, 1] for s in series.values()])
    finite = values[np.isfinite(values)]
    if len(finite) and (finite > 0).all():
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.set_title("Learning rate per parameter group")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    return fig


def _class_names(evidence: RunEvidence, classes: Sequence[str] | None) -> list[tuple[str, str]]:
    """``(display name, metric-safe name)`` per class: ``classes`` when given, else every class
    seen in the label counts or prediction counts."""
    if classes:
        return [(c, schema.metric_safe(c)) for c in classes]
    names: dict[str, None] = {}
    for split in SPLITS:
        names.update(dict.fromkeys(evidence.groups(f"{schema.LABELS_PREFIX}{split}/count/")))
    names.update(dict.fromkeys(evidence.groups(schema.VAL_PRED_COUNT_PREFIX)))
    return [(n, n) for n in names]


def label_and_prediction_histograms(
    evidence: RunEvidence, classes: Sequence[str] | None = None
) -> Figure | None:
    """Clips per class in each split and, when logged, the last epoch's validation predictions
    per class (``val_pred_count/<class>``)."""
    names = _class_names(evidence, classes)
    if not names:
        return None
    bars: dict[str, list[float]] = {}
    for split in SPLITS:
        prefix = f"{schema.LABELS_PREFIX}{split}/count/"
        counts = [evidence.latest(prefix + safe) for _, safe in names]
        if any(c is not None for c in counts):
            bars[f"{split} labels"] = [np.nan if c is None else c for c in counts]
    predicted = [evidence.latest(schema.VAL_PRED_COUNT_PREFIX + safe) for _, safe in names]
    if any(c is not None for c in predicted):
        bars["val predictions (last epoch)"] = [0.0 if c is None else c for c in predicted]
    if not bars:
        return None
    fig = Figure(figsize=(max(6.0, 0.5 * len(names) * len(bars) + 3), 4))
    ax = fig.subplots()
    width = 0.8 / len(bars)
    positions = np.arange(len(names))
    for i, (label, counts) in enumerate(bars.items()):
        hatch = "//" if label.startswith("val predictions") else None
        ax.bar(positions + i * width, counts, width, label=label, hatch=hatch)
    ax.set_xticks(positions + 0.4 - width / 2, [n for n, _ in names], rotation=45, ha="right")
    ax.set_ylabel("clips")
    ax.set_title("Labels per split and validation predictions per class")
    ax.legend()
    fig.tight_layout()
    return fig


def feature_statistics(evidence: RunEvidence) -> Figure | None:
    """Mean and std of the features per stage and split, and the train-vs-split shift."""
    panels: list[tuple[str, dict[str, dict[str, float]]]] = []
    for stage in STAGES:
        per_split: dict[str, dict[str, float]] = {}
        for split in SPLITS:
            prefix = f"{schema.FEATURES_PREFIX}{stage}/{split}/"
            stats = {s: evidence.latest(prefix + s) for s in ("mean", "std")}
            if any(v is not None for v in stats.values()):
                per_split[split] = {s: np.nan if v is None else v for s, v in stats.items()}
        if per_split:
            panels.append((f"{stage} features", per_split))
    shifts = {
        name: value
        for name in evidence.groups(schema.FEATURE_SHIFT_PREFIX)
        if (value := evidence.latest(schema.FEATURE_SHIFT_PREFIX + name)) is not None
    }
    if not panels and not shifts:
        return None
    count = len(panels) + bool(shifts)
    fig = Figure(figsize=(4.5 * count, 4))
    axes = np.atleast_1d(fig.subplots(1, count))
    for ax, (title, per_split) in zip(axes, panels, strict=False):
        positions = np.arange(len(per_split))
        for i, stat in enumerate(("mean", "std")):
            values = [per_split[s][stat] for s in per_split]
            ax.bar(positions + (i - 0.5) * 0.4, values, 0.4, label=stat)
        ax.set_xticks(positions, list(per_split))
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_title(title)
        ax.grid(alpha=0.3, axis="y")
        ax.legend()
    if shifts:
        ax = axes[-1]
        positions = np.arange(len(shifts))
        ax.barh(positions, list(shifts.values()), color="tab:purple")
        ax.set_yticks(positions, [n.replace("_vs_train_smd_", " ") for n in shifts])
        ax.invert_yaxis()
        ax.set_xlabel("|standardized mean difference| vs train")
        ax.set_title("Feature shift")
        ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig


def save_all(
    evidence: RunEvidence,
    diagnosis: Diagnosis | None,
    out_dir: str | Path,
    classes: Sequence[str] | None = None,
    dpi: int = 100,
) -> dict[str, Path]:
    """Writes every figure that can be drawn to ``out_dir`` as PNG; returns name -> path in
    the order of :data:`FILES`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = {
        "training_curves": training_curves(evidence, diagnosis),
        "gradient_norms": gradient_heatmap(evidence),
        "learning_rate": lr_curve(evidence),
        "histograms": label_and_prediction_histograms(evidence, classes),
        "features": feature_statistics(evidence),
    }
    written: dict[str, Path] = {}
    for name, fig in figures.items():
        if fig is None:
            continue
        path = out / FILES[name]
        fig.savefig(path, dpi=dpi, format="png")
        written[name] = path
    return written
