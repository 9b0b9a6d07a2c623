"""Every MLflow name the package writes that is not a signal of the evidence contract.

The signals the diagnosis reads (``val/accuracy``, ``grad_norm/<group>``, ...) are declared in
:mod:`mlflow_audiodiag.signals`; here are tags, artifacts, params and the metrics that only
people read. Metric names use ``/`` to group (``train/loss``, ``val/accuracy``) so MLflow's UI
charts them side by side; search them with backticks: ``metrics.`val/accuracy` > 0.9``.
"""

from __future__ import annotations

from typing import Final

SPLIT_TRAIN: Final = "train"
SPLIT_VAL: Final = "val"
SPLIT_TEST: Final = "test"


def split_metric(split: str, name: str) -> str:
    """Metric key for ``name`` measured on ``split``, e.g. ``test/accuracy``."""
    return f"{split}/{name}"


# --- metrics people chart (the bundled training and the monitor) -------------------------------
METRIC_EPOCH_SECONDS: Final = "train/epoch_seconds"
METRIC_BEST_EPOCH: Final = "best/epoch"
METRIC_BEST_VAL_ACCURACY: Final = "best/val_accuracy"
METRIC_SKIPPED_FILES: Final = "data/skipped_files"
METRIC_STOPPED_EARLY: Final = "train/stopped_early"
METRIC_TEST_PREFIX: Final = "test/"  # + loss, accuracy, balanced_accuracy, macro_f1
# Downsampled per-step series: log10 so that tiny values read in the UI's charts.
METRIC_LOG10_UPDATE_RATIO: Final = "train/log10_update_ratio"  # the fastest group's ratio
METRIC_LOG10_LR: Final = "train/log10_lr"  # the largest param-group learning rate
METRIC_GRAD_NORM_MAX: Final = "grad_norm/total_max"  # largest total norm in each window

TAG_DATA_SOURCE: Final = "audiodiag.data_source"
TAG_PACKAGE_VERSION: Final = "audiodiag.version"
TAG_WORLD_SIZE: Final = "audiodiag.world_size"  # processes that trained the run (DDP), "1" alone
TAG_FRONT_END: Final = "audiodiag.front_end"  # bundled | loop | watch | lightning | huggingface
# The experiment tag that makes MLflow's UI open an experiment in its model-training view.
TAG_EXPERIMENT_KIND: Final = "mlflow.experimentKind"
EXPERIMENT_KIND_TRAINING: Final = "custom_model_development"

ARTIFACT_CONFIG: Final = "config.json"
ARTIFACT_NORMALIZATION: Final = "data/normalization.json"
ARTIFACT_CLASSES: Final = "data/classes.json"
ARTIFACT_SKIPPED: Final = "data/skipped_files.csv"
ARTIFACT_DATA_SUMMARY: Final = "data/summary.json"  # clips per split, cropped clips
ARTIFACT_CONFUSION_CSV: Final = "evaluation/confusion_matrix.csv"
ARTIFACT_CONFUSION_PNG: Final = "evaluation/confusion_matrix.png"
ARTIFACT_MODEL: Final = "model"

# --- the monitor's artifacts (mlflow_audiodiag.monitoring) -------------------------------------
ARTIFACT_DIR_MONITOR: Final = "monitor"
ARTIFACT_STEPS: Final = "monitor/steps.parquet"  # every step signal, one row per step
ARTIFACT_EPOCHS: Final = "monitor/epochs.parquet"  # every epoch signal, one row per epoch
ARTIFACT_SUMMARY: Final = "monitor/summary.json"  # every once signal
ARTIFACT_PARAMETER_GROUPS: Final = "monitor/parameter_groups.json"  # groups in forward order
ARTIFACT_FEATURE_TABLE: Final = "monitor/features_{stage}_{split}.csv"
ARTIFACT_FEATURE_SUMMARY: Final = "monitor/features.json"
ARTIFACT_FEATURE_PLOT: Final = "monitor/features_{stage}.png"
ARTIFACT_LABEL_TABLE: Final = "monitor/labels.csv"
ARTIFACT_LABEL_PLOT: Final = "monitor/labels.png"

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
TAG_JOB: Final = "audiodiag.job"  # "diagnose" on the run of `mlflow run . -e diagnose`
ARTIFACT_DIR_COMPARISON: Final = "comparison"  # comparison.{csv,json,html} and its PNGs
