"""Classification metrics computed from integer targets and predictions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def confusion_matrix(targets: np.ndarray, predictions: np.ndarray, n_classes: int) -> np.ndarray:
    """``[n_classes, n_classes]`` counts, rows = true class, columns = predicted class."""
    flat = np.asarray(targets, dtype=np.int64) * n_classes + np.asarray(predictions, np.int64)
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


@dataclass(frozen=True)
class ClassificationScores:
    accuracy: float
    balanced_accuracy: float
    macro_f1: float

    def as_dict(self) -> dict[str, float]:
        return {
            "accuracy": self.accuracy,
            "balanced_accuracy": self.balanced_accuracy,
            "macro_f1": self.macro_f1,
        }


def classification_scores(
    targets: np.ndarray, predictions: np.ndarray, n_classes: int
) -> ClassificationScores:
    """Accuracy, balanced accuracy (mean recall over classes present in ``targets``) and
    macro-F1 (mean over classes present in ``targets`` or ``predictions``)."""
    if len(targets) == 0:
        raise ValueError("cannot score an empty set of predictions")
    cm = confusion_matrix(targets, predictions, n_classes).astype(np.float64)
    true_per_class = cm.sum(axis=1)
    predicted_per_class = cm.sum(axis=0)
    hits = np.diag(cm)
    present = true_per_class > 0
    recall = np.divide(hits, true_per_class, out=np.zeros_like(hits), where=present)
    precision = np.divide(
        hits, predicted_per_class, out=np.zeros_like(hits), where=predicted_per_class > 0
    )
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(hits), where=denom > 0)
    scored = present | (predicted_per_class > 0)
    return ClassificationScores(
        accuracy=float(hits.sum() / cm.sum()),
        balanced_accuracy=float(recall[present].mean()),
        macro_f1=float(f1[scored].mean()),
    )


def majority_fraction(labels: np.ndarray, reference: np.ndarray, n_classes: int) -> float:
    """Accuracy on ``labels`` of always predicting the most frequent class of ``reference``."""
    majority = int(np.bincount(reference, minlength=n_classes).argmax())
    return float(np.mean(np.asarray(labels) == majority))
