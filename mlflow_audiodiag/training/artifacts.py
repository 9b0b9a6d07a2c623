"""Artifacts a training run logs: config, data summary, confusion matrix and the model."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import mlflow
import mlflow.pytorch
import numpy as np
import torch
import torchaudio
from matplotlib.figure import Figure

import mlflow_audiodiag
from mlflow_audiodiag import schema
from mlflow_audiodiag.features.config import FeatureConfig
from mlflow_audiodiag.features.extractor import FeatureExtractor
from mlflow_audiodiag.features.normalization import FeatureNormalizer, NormalizationStats
from mlflow_audiodiag.features.store import FeatureStore
from mlflow_audiodiag.model.inference import WaveformClassifier
from mlflow_audiodiag.training.config import TrainConfig
from mlflow_audiodiag.training.loop import SplitResult
from mlflow_audiodiag.training.metrics import confusion_matrix


def log_dataset_summary(
    config: TrainConfig, store: FeatureStore, stats: NormalizationStats
) -> None:
    """Config, class list, fitted normalization and the list of skipped files (if any)."""
    mlflow.log_text(config.to_json(), schema.ARTIFACT_CONFIG)
    mlflow.log_dict({"classes": store.classes}, schema.ARTIFACT_CLASSES)
    mlflow.log_dict(stats.to_dict(), schema.ARTIFACT_NORMALIZATION)
    if store.skipped:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["path", "label", "split", "reason"])
        for skipped in store.skipped:
            writer.writerow([skipped.path, skipped.label, skipped.split, skipped.reason])
        mlflow.log_text(buffer.getvalue(), schema.ARTIFACT_SKIPPED)


def log_confusion_matrix(result: SplitResult, classes: list[str], split: str) -> None:
    """The confusion matrix of ``split`` as CSV and PNG (rows true, columns predicted)."""
    matrix = confusion_matrix(result.targets, result.predictions, len(classes))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["true \\ predicted", *classes])
    for name, row in zip(classes, matrix, strict=True):
        writer.writerow([name, *row.tolist()])
    mlflow.log_text(buffer.getvalue(), schema.ARTIFACT_CONFUSION_CSV)

    size = max(4.0, 0.6 * len(classes) + 2)
    fig = Figure(figsize=(size, size))
    ax = fig.subplots()
    ax.imshow(matrix, cmap="Blues")
    # Labels are the user's text: "$" must not start matplotlib math (a bad command there
    # fails the whole figure after training), so it is drawn literally.
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", parse_math=False)
    ax.set_yticks(range(len(classes)), classes, parse_math=False)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(
        f"Confusion matrix ({split}, accuracy {result.scores.accuracy:.3f})", parse_math=False
    )
    threshold = matrix.max() / 2 if matrix.size else 0
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(
            j,
            i,
            str(count),
            ha="center",
            va="center",
            color="white" if count > threshold else "black",
            fontsize=8,
        )
    fig.tight_layout()
    mlflow.log_figure(fig, schema.ARTIFACT_CONFUSION_PNG)


def log_model(
    extractor: FeatureExtractor,
    normalizer: FeatureNormalizer,
    transformer: torch.nn.Module,
    classes: list[str],
    features: FeatureConfig,
) -> None:
    """Logs waveform-in, logits-out :class:`WaveformClassifier` with ``mlflow.pytorch``.

    Pickled (not ``torch.export``-ed) so any batch size works; the package source travels with
    the model (``code_paths``) so it loads where mlflow-audiodiag is not installed.
    """
    model = WaveformClassifier(extractor, normalizer, transformer, classes).cpu().eval()
    example = np.zeros((1, features.num_samples), dtype=np.float32)
    mlflow.pytorch.log_model(
        model,
        name=schema.ARTIFACT_MODEL,
        serialization_format="pickle",
        input_example=example,
        code_paths=[str(Path(mlflow_audiodiag.__file__).parent)],
        pip_requirements=[
            f"torch=={torch.__version__.split('+')[0]}",
            f"torchaudio=={torchaudio.__version__.split('+')[0]}",
            f"mlflow=={mlflow.__version__}",
            "numpy",
        ],
        metadata={"classes": classes},
    )
