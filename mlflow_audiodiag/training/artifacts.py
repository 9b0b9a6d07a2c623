"""Artifacts a training run logs: config, data summary, confusion matrix and the model.

Everything goes through the monitor's durable logger, so an outage of the tracking server at
the end of training delays these uploads instead of losing them; the model is logged once the
server answers (or, if it stays away, spooled as a plain artifact folder).
"""

from __future__ import annotations

import csv
import io
import logging
import tempfile
import time
import warnings
from pathlib import Path

import mlflow
import mlflow.pytorch
import numpy as np
import pandas as pd
import torch
import torchaudio
from matplotlib.figure import Figure
from mlflow.exceptions import MlflowException

import mlflow_audiodiag
from mlflow_audiodiag import schema
from mlflow_audiodiag.features.config import FeatureConfig
from mlflow_audiodiag.features.extractor import FeatureExtractor
from mlflow_audiodiag.features.normalization import FeatureNormalizer, NormalizationStats
from mlflow_audiodiag.features.store import FeatureStore
from mlflow_audiodiag.metrics import confusion_matrix
from mlflow_audiodiag.model.inference import WaveformClassifier
from mlflow_audiodiag.monitoring.sink import DurableRunLogger, check_health, is_http_uri
from mlflow_audiodiag.training.config import TrainConfig
from mlflow_audiodiag.training.loop import SplitResult

logger = logging.getLogger(__name__)


def log_dataset_input(table: pd.DataFrame, source: str) -> None:
    """The clip table as the run's MLflow dataset input (the run page's "Datasets" panel)."""
    folder = Path(source.removeprefix("synthetic:")).resolve()
    with warnings.catch_warnings():  # "can be interpreted in multiple ways": both are local
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_pandas(
            table[[c for c in ("path", "label", "split") if c in table]].astype(str),
            source=folder.as_uri(),
            name=folder.name or "audio clips",
            targets="label",
        )
    for attempt in range(_DATASET_ATTEMPTS):
        try:
            mlflow.log_input(dataset, context="training")
            return
        except MlflowException as error:
            if not _is_concurrent_insert(error) or attempt == _DATASET_ATTEMPTS - 1:
                raise
            # another run of this experiment registered the same dataset at the same moment
            # (a SQL store checks, then inserts); on the next try the store finds it and links it
            time.sleep(0.2 * (attempt + 1))


_DATASET_ATTEMPTS = 4


def _is_concurrent_insert(error: Exception) -> bool:
    """True for a store's unique-key conflict (two runs inserting one dataset at once)."""
    text = str(error).lower()
    return "unique" in text and ("constraint" in text or "violation" in text)


def log_dataset_summary(
    config: TrainConfig, store: FeatureStore, stats: NormalizationStats, sink: DurableRunLogger
) -> None:
    """Config, class list, fitted normalization, clip counts and the skipped files (if any)."""
    sink.log_text(config.to_json(), schema.ARTIFACT_CONFIG)
    sink.log_dict({"classes": store.classes}, schema.ARTIFACT_CLASSES)
    sink.log_dict(stats.to_dict(), schema.ARTIFACT_NORMALIZATION)
    sink.log_dict(
        {
            "clips": {name: len(split) for name, split in store.splits.items()},
            "cropped_clips": store.cropped_clips,
            "skipped_files": len(store.skipped),
        },
        schema.ARTIFACT_DATA_SUMMARY,
    )
    if store.skipped:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["path", "label", "split", "reason"])
        for skipped in store.skipped:
            writer.writerow([skipped.path, skipped.label, skipped.split, skipped.reason])
        sink.log_text(buffer.getvalue(), schema.ARTIFACT_SKIPPED)


def log_confusion_matrix(
    result: SplitResult, classes: list[str], split: str, sink: DurableRunLogger
) -> None:
    """The confusion matrix of ``split`` as CSV and PNG (rows true, columns predicted)."""
    matrix = confusion_matrix(result.targets, result.predictions, len(classes))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["true \\ predicted", *classes])
    for name, row in zip(classes, matrix, strict=True):
        writer.writerow([name, *row.tolist()])
    sink.log_text(buffer.getvalue(), schema.ARTIFACT_CONFUSION_CSV)

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
    sink.log_figure(fig, schema.ARTIFACT_CONFUSION_PNG)


def wait_for_tracking_server(timeout_s: float = 120.0) -> bool:
    """Waits (with backoff) until an HTTP tracking server answers; ``True`` at once for local
    stores. Returns whether it answers."""
    uri = mlflow.get_tracking_uri()
    if not is_http_uri(uri):
        return True
    deadline, delay = time.monotonic() + timeout_s, 0.5
    while (problem := check_health(uri, 2.0)) is not None:
        if time.monotonic() >= deadline:
            logger.warning("tracking server %s still unreachable (%s)", uri, problem)
            return False
        time.sleep(delay)
        delay = min(delay * 2, 10.0)
    return True


def log_model(
    extractor: FeatureExtractor,
    normalizer: FeatureNormalizer,
    transformer: torch.nn.Module,
    classes: list[str],
    features: FeatureConfig,
    sink: DurableRunLogger,
) -> None:
    """Logs waveform-in, logits-out :class:`WaveformClassifier` with ``mlflow.pytorch``.

    Pickled (not ``torch.export``-ed) so any batch size works; the package source travels with
    the model (``code_paths``) so it loads where mlflow-audiodiag is not installed. When the
    tracking server is away at the end of training the model is logged once it answers; if it
    stays away, the saved model folder goes to the spool and reaches the run as the artifact
    folder ``model`` with the rest of the spool.
    """
    model = WaveformClassifier(extractor, normalizer, transformer, classes).cpu().eval()
    example = np.zeros((1, features.num_samples), dtype=np.float32)
    options = {
        "serialization_format": "pickle",
        "input_example": example,
        "code_paths": [str(Path(mlflow_audiodiag.__file__).parent)],
        "pip_requirements": [
            f"torch=={torch.__version__.split('+')[0]}",
            f"torchaudio=={torchaudio.__version__.split('+')[0]}",
            f"mlflow=={mlflow.__version__}",
            "numpy",
        ],
        "metadata": {"classes": classes},
    }
    if wait_for_tracking_server(sink.config.close_timeout_s):
        try:
            mlflow.pytorch.log_model(model, name=schema.ARTIFACT_MODEL, **options)
            return
        except Exception as error:  # the server went away during the upload
            logger.warning("logging the model failed (%s); spooling it", error)
    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / schema.ARTIFACT_MODEL
        mlflow.pytorch.save_model(model, str(saved), **options)
        sink.log_artifact(saved)
