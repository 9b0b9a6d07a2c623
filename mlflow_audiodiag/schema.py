"""Every MLflow metric, param, tag and artifact name the package writes, in one place.

Metric names use ``/`` to group (``train/loss``, ``val/accuracy``) so MLflow's UI charts them
side by side; search them with backticks: ``metrics.`val/accuracy` > 0.9``.
"""

from __future__ import annotations

from typing import Final

SPLIT_TRAIN: Final = "train"
SPLIT_VAL: Final = "val"
SPLIT_TEST: Final = "test"

# Per-epoch metrics are logged as f"{split}/{name}", e.g. "val/balanced_accuracy".
EPOCH_METRICS: Final = ("loss", "accuracy", "balanced_accuracy", "macro_f1")


def split_metric(split: str, name: str) -> str:
    """Metric key for ``name`` measured on ``split``."""
    return f"{split}/{name}"


METRIC_LR: Final = "train/lr"
METRIC_EPOCH_SECONDS: Final = "train/epoch_seconds"
METRIC_BEST_EPOCH: Final = "best/epoch"
METRIC_BEST_VAL_ACCURACY: Final = "best/val_accuracy"
METRIC_MAJORITY_BASELINE: Final = "data/val_majority_accuracy"
METRIC_SKIPPED_FILES: Final = "data/skipped_files"
METRIC_CROPPED_CLIPS: Final = "data/cropped_clips"
METRIC_CLIPS_PREFIX: Final = "data/clips_"  # + split name
METRIC_STOPPED_EARLY: Final = "train/stopped_early"

TAG_DATA_SOURCE: Final = "audiodiag.data_source"
TAG_PACKAGE_VERSION: Final = "audiodiag.version"

ARTIFACT_DIR_DATA: Final = "data"
ARTIFACT_CONFIG: Final = "config.json"
ARTIFACT_NORMALIZATION: Final = "data/normalization.json"
ARTIFACT_CLASSES: Final = "data/classes.json"
ARTIFACT_SKIPPED: Final = "data/skipped_files.csv"
ARTIFACT_CONFUSION_CSV: Final = "evaluation/confusion_matrix.csv"
ARTIFACT_CONFUSION_PNG: Final = "evaluation/confusion_matrix.png"
ARTIFACT_MODEL: Final = "model"
