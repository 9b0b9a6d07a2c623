"""Figures of one run's evidence (matplotlib ``Figure`` objects, no pyplot state).

Each function returns ``None`` when the signals it draws were not recorded, so a report shows
whatever the run has. Step series are drawn as window means of at most ``MAX_COLUMNS`` windows,
so a 100,000-step run plots as fast as a short one; small values (update ratios, learning
rates) are drawn on log axes.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from mlflow_audiodiag import signals as S
from mlflow_audiodiag.diagnosis.evidence import RunEvidence
from mlflow_audiodiag.diagnosis.findings import Diagnosis
from mlflow_audiodiag.diagnosis.rules import STAGNANT_VALIDATION

TRAIN, VAL, TEST = "train", "val", "test"
SPLITS = (TRAIN, VAL, TEST)
MAX_COLUMNS = 1000

# File name of each figure that save_all writes.
FILES: dict[str, str] = {
    "training_curves": "training_curves.png",
    "update_ratios": "update_ratios.png",
    "gradient_norms": "gradient_norms.png",
    "weight_norms": "weight_norms.png",
    "learning_rate": "learning_rate.png",
    "histograms": "histograms.png",
    "features": "features.png",
}

_NUMBER = r"(\d+(?:\.\d+)?(?:e[+-]?\d+)?)"
_WINDOW = re.compile(rf"epochs\s+{_NUMBER}-{_NUMBER}")


def plateau_window(diagnosis: Diagnosis | None) -> tuple[float, float] | None:
    """First and last epoch of the validation plateau, if the symptom finding fired."""
    finding = diagnosis.finding(STAGNANT_VALIDATION) if diagnosis else None
    if finding is None:
        return None
    match = _WINDOW.search(str(finding.evidence.get("window", "")))
    if match is None:
        return None
    return float(match.group(1)), float(match.group(2))


def binned(rows: np.ndarray, bins: int = MAX_COLUMNS) -> np.ndarray:
    """``(step, value)`` rows reduced to at most ``bins`` window means (NaN-aware)."""
    if len(rows) <= bins:
        return rows
    edges = np.linspace(0, len(rows), bins + 1).astype(int)
    out = []
    for start, stop in zip(edges[:-1], edges[1:], strict=True):
        part = rows[start:stop]
        values = part[np.isfinite(part[:, 1]), 1]
        out.append((part[-1, 0], values.mean() if len(values) else np.nan))
    return np.array(out)


def training_curves(evidence: RunEvidence, diagnosis: Diagnosis | None = None) -> Figure | None:
    """Train/val loss and accuracy per epoch, the plateau shaded and the majority baseline."""
    panels = [
        ("loss", (S.TRAIN_LOSS, S.VAL_LOSS)),
        ("accuracy", (S.TRAIN_ACCURACY, S.VAL_ACCURACY)),
    ]
    present = [
        (n, pair) for n, pair in panels if any(evidence.series(s.name) is not None for s in pair)
    ]
    if not present:
        return None
    window = plateau_window(diagnosis)
    fig = Figure(figsize=(5.5 * len(present), 4))
    axes = np.atleast_1d(fig.subplots(1, len(present)))
    for ax, (name, pair) in zip(axes, present, strict=True):
        for signal, style, label in zip(pair, ("-", "-o"), (TRAIN, VAL), strict=True):
            data = evidence.series(signal.name)
            if data is not None:
                ax.plot(data[:, 0], data[:, 1], style, markersize=3, label=label)
        if name == "accuracy":
            majority = evidence.latest(S.MAJORITY_BASELINE.name)
            if majority is not None and np.isfinite(majority):
                ax.axhline(majority, color="grey", linestyle="--", label="majority baseline")
        if window is not None:
            ax.axvspan(window[0], window[1], color="tab:red", alpha=0.12, label="plateau")
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.set_title(name.capitalize())
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def _group_lines(
    evidence: RunEvidence, signal: S.Signal, title: str, ylabel: str, guides: dict[str, float]
) -> Figure | None:
    """One line per parameter group (forward order: input end dark, output end light) on a
    log axis, with horizontal guide lines."""
    groups = evidence.groups(signal)
    series = {g: evidence.steps.series(signal.key(group=g)) for g in groups}
    series = {g: binned(s) for g, s in series.items() if s is not None}
    if not series:
        return None
    fig = Figure(figsize=(9, 4))
    ax = fig.subplots()
    colors = _ramp_colors(len(series))
    for color, (group, data) in zip(colors, series.items(), strict=True):
        positive = np.where(data[:, 1] > 0, data[:, 1], np.nan)
        ax.plot(data[:, 0], positive, color=color, linewidth=1, label=group)
    for label, value in guides.items():
        ax.axhline(value, color="grey", linestyle="--", linewidth=0.8)
        ax.annotate(
            label,
            (0.995, value),
            xycoords=("axes fraction", "data"),
            ha="right",
            va="bottom",
            fontsize=7,
            color="grey",
            annotation_clip=False,
        )
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    if len(series) <= 12:
        ax.legend(fontsize=7, ncols=2)
    fig.tight_layout()
    return fig


def update_ratios(evidence: RunEvidence) -> Figure | None:
    """Update-to-weight ratio per group and step (log axis): ~1e-3 is typical."""
    return _group_lines(
        evidence,
        S.UPDATE_RATIO,
        "Update / weight ratio per parameter group (input end dark, output end light)",
        "||dW|| / ||W||",
        {"typical ~1e-3": 1e-3},
    )


def gradient_norms(evidence: RunEvidence) -> Figure | None:
    """Gradient norm per group and step (log axis), groups in forward order."""
    return _group_lines(
        evidence,
        S.GRAD_NORM,
        "Gradient norm per parameter group (input end dark, output end light)",
        "||grad||",
        {},
    )


def weight_norms(evidence: RunEvidence) -> Figure | None:
    """Weight norm per group and step (log axis): flat or slowly growing when healthy, falling
    toward zero when weight decay outweighs the gradient."""
    return _group_lines(
        evidence,
        S.WEIGHT_NORM,
        "Weight norm per parameter group (input end dark, output end light)",
        "||W||",
        {},
    )


def lr_curve(evidence: RunEvidence) -> Figure | None:
    """Every param group's learning rate per step, on a log axis when all are positive."""
    names = evidence.groups(S.LR)
    series = {n: evidence.steps.series(S.LR.key(param_group=n)) for n in names}
    series = {n: binned(s) for n, s in series.items() if s is not None}
    if not series:
        return None
    fig = Figure(figsize=(8, 3.5))
    ax = fig.subplots()
    for name, data in series.items():
        ax.plot(data[:, 0], data[:, 1], label=f"param group {name}")
    values = np.concatenate([s[:, 1] for s in series.values()])
    finite = values[np.isfinite(values)]
    if len(finite) and (finite > 0).all():
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.set_title("Learning rate per optimizer param group")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    return fig


def _class_names(evidence: RunEvidence) -> list[str]:
    names: dict[str, None] = {}
    for key in evidence.summary:
        parts = S.LABEL_COUNT.match(key)
        if parts is not None:
            names.setdefault(parts["cls"])
    names.update(dict.fromkeys(evidence.groups(S.VAL_PRED_COUNT)))
    return list(names)


def label_and_prediction_histograms(evidence: RunEvidence) -> Figure | None:
    """Clips per class in each split and the last epoch's validation predictions per class."""
    names = _class_names(evidence)
    if not names:
        return None
    bars: dict[str, list[float]] = {}
    for split in SPLITS:
        counts = [evidence.summary.get(S.LABEL_COUNT.key(split=split, cls=c)) for c in names]
        if any(c is not None for c in counts):
            bars[f"{split} labels"] = [np.nan if c is None else c for c in counts]
    predicted = [evidence.latest(S.VAL_PRED_COUNT.key(cls=c)) for c in names]
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
    ax.set_xticks(positions + 0.4 - width / 2, names, rotation=45, ha="right")
    for tick in ax.get_xticklabels():
        tick.set_parse_math(False)  # class names are text, not TeX
    ax.set_ylabel("clips")
    ax.set_title("Labels per split and validation predictions per class")
    ax.legend()
    fig.tight_layout()
    return fig


def feature_statistics(evidence: RunEvidence) -> Figure | None:
    """Mean and std of the features per stage and split, and the train-vs-split shift."""
    panels: list[tuple[str, dict[str, dict[str, float]]]] = []
    for stage in (S.STAGE_RAW, S.STAGE_INPUT):
        per_split: dict[str, dict[str, float]] = {}
        for split in SPLITS:
            stats = {
                s: evidence.summary.get(S.FEATURE_STAT.key(stage=stage, split=split, stat=s))
                for s in ("mean", "std")
            }
            if any(v is not None for v in stats.values()):
                per_split[split] = {s: np.nan if v is None else v for s, v in stats.items()}
        if per_split:
            panels.append((f"{stage} features", per_split))
    shifts = {
        key.removeprefix("feature_shift/").replace("_vs_train_smd_", " "): value
        for key, value in evidence.summary.items()
        if S.FEATURE_SHIFT.match(key) is not None and np.isfinite(value)
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
        ax.set_yticks(positions, list(shifts))
        ax.invert_yaxis()
        ax.set_xlabel("|standardized mean difference| vs train")
        ax.set_title("Feature shift")
        ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig


def save_all(
    evidence: RunEvidence, diagnosis: Diagnosis | None, out_dir: str | Path, dpi: int = 100
) -> dict[str, Path]:
    """Writes every figure that can be drawn to ``out_dir`` as PNG; returns name -> path in
    the order of :data:`FILES`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = {
        "training_curves": training_curves(evidence, diagnosis),
        "update_ratios": update_ratios(evidence),
        "gradient_norms": gradient_norms(evidence),
        "weight_norms": weight_norms(evidence),
        "learning_rate": lr_curve(evidence),
        "histograms": label_and_prediction_histograms(evidence),
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


def _ramp_colors(n: int) -> list[tuple[float, float, float, float]]:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(0.05 + 0.85 * i / max(n - 1, 1)) for i in range(n)]
