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
TAG_WORLD_SIZE: Final = "audiodiag.world_size"  # processes that trained the run (DDP), "1" alone

ARTIFACT_CONFIG: Final = "config.json"
ARTIFACT_NORMALIZATION: Final = "data/normalization.json"
ARTIFACT_CLASSES: Final = "data/classes.json"
ARTIFACT_SKIPPED: Final = "data/skipped_files.csv"
ARTIFACT_CONFUSION_CSV: Final = "evaluation/confusion_matrix.csv"
ARTIFACT_CONFUSION_PNG: Final = "evaluation/confusion_matrix.png"
ARTIFACT_MODEL: Final = "model"

# --- Training monitor (mlflow_audiodiag.monitoring) -------------------------------------------
# Per optimizer step (step = global step, counted from 1):
METRIC_STEP_LOSS: Final = "train/step_loss"
GRAD_NORM_PREFIX: Final = "grad_norm/"  # + group name, or "total" (before clipping)
UPDATE_RATIO_PREFIX: Final = "update_ratio/"  # + group name: ||dW|| / ||W|| per step
LR_PREFIX: Final = "lr/"  # + optimizer param-group name (or index)
# Cumulative counts, logged once per buffer drain (at its last step):
METRIC_NONFINITE_GRADS: Final = "nonfinite/grads"  # gradient tensors with a non-finite norm
METRIC_NONFINITE_LOSS: Final = "nonfinite/loss"  # steps with a non-finite loss
FROZEN_FRACTION_PREFIX: Final = "frozen_fraction/"  # + group name, logged once

# Per split and stage ("raw" before normalization, "normalized" after), logged once:
FEATURES_PREFIX: Final = "features/"  # features/<stage>/<split>/<statistic>
# feature_shift/<stage>/<split>_vs_train_smd_{max,mean}: standardized train-vs-split shift
FEATURE_SHIFT_PREFIX: Final = "feature_shift/"
LABELS_PREFIX: Final = "labels/"  # labels/<split>/<statistic>
AUDIO_PREFIX: Final = "audio/"  # audio/<split>/<statistic>: silent/clipped fractions, levels

# Per epoch (step = epoch) on the validation split:
VAL_PRED_PREFIX: Final = "val_pred/"  # top_class_fraction, hist_entropy, mean_entropy, ...
VAL_PRED_COUNT_PREFIX: Final = "val_pred_count/"  # + class name
VAL_RECALL_PREFIX: Final = "val_recall/"  # + class name
ATTENTION_ENTROPY_PREFIX: Final = "attention_entropy/layer"  # + layer index

ARTIFACT_DIR_MONITOR: Final = "monitor"
ARTIFACT_FEATURE_TABLE: Final = "monitor/features_{stage}_{split}.csv"
ARTIFACT_FEATURE_SUMMARY: Final = "monitor/features.json"
ARTIFACT_FEATURE_PLOT: Final = "monitor/features_{stage}.png"
ARTIFACT_LABEL_SUMMARY: Final = "monitor/labels.json"
ARTIFACT_LABEL_TABLE: Final = "monitor/labels.csv"
ARTIFACT_LABEL_PLOT: Final = "monitor/labels.png"
ARTIFACT_PREDICTIONS: Final = "monitor/val_predictions.json"
ARTIFACT_PARAMETER_GROUPS: Final = "monitor/parameter_groups.json"


def metric_safe(name: str) -> str:
    """``name`` with characters MLflow rejects in metric keys replaced by ``_``."""
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in name)


# --- Diagnosis (mlflow_audiodiag.diagnosis), written back to the diagnosed run -----------------
TAG_VERDICT: Final = "audiodiag.verdict"  # healthy | stagnant | diverged | inconclusive
TAG_PRIMARY_CAUSE: Final = "audiodiag.primary_cause"  # a finding code, or "none"
TAG_FINDINGS: Final = "audiodiag.findings"  # comma-separated finding codes
TAG_NOTE: Final = "mlflow.note.content"  # the run description MLflow's UI shows
TAG_LIVE: Final = "audiodiag.live"  # during training: watching | progressing | stagnant ...
TAG_STOP_REASON: Final = "audiodiag.stop_reason"  # why training stopped on stagnation (opt-in)
DIAGNOSIS_SCORE_PREFIX: Final = "diagnosis/score/"  # + finding code: strength of evidence 0..1
METRIC_DIAGNOSIS_FINDINGS: Final = "diagnosis/n_findings"
ARTIFACT_DIR_DIAGNOSIS: Final = "diagnosis"
ARTIFACT_FINDINGS: Final = "diagnosis/findings.json"
ARTIFACT_REPORT: Final = "diagnosis/report.html"

# --- Fault zoo (mlflow_audiodiag.zoo) ----------------------------------------------------------
TAG_ZOO_SCENARIO: Final = "audiodiag.zoo.scenario"  # the scenario a run reproduces, or "all"
TAG_ZOO_EXPECTED: Final = "audiodiag.zoo.expected_cause"  # a finding code, or "none" (healthy)
TAG_ZOO_FAULT: Final = "audiodiag.zoo.fault"  # the deliberate fault, in words
METRIC_ZOO_MATCHED: Final = "zoo/matched_fraction"  # share of scenarios diagnosed as expected
ARTIFACT_ZOO_TABLE: Final = "zoo/confusion.md"

# --- Comparison (mlflow_audiodiag.comparison) --------------------------------------------------
TAG_COMPARISON: Final = "audiodiag.comparison"  # "true" on a run that holds a comparison
ARTIFACT_DIR_COMPARISON: Final = "comparison"  # comparison.{csv,json,html} and its PNGs
