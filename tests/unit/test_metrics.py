import numpy as np
import pytest
from sklearn import metrics as sk

from mlflow_audiodiag.metrics import (
    classification_scores,
    confusion_matrix,
    majority_fraction,
)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scores_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, 5, size=200)
    predictions = np.where(rng.random(200) < 0.6, targets, rng.integers(0, 5, size=200))
    scores = classification_scores(targets, predictions, n_classes=5)
    assert scores.accuracy == pytest.approx(sk.accuracy_score(targets, predictions))
    assert scores.balanced_accuracy == pytest.approx(
        sk.balanced_accuracy_score(targets, predictions)
    )
    assert scores.macro_f1 == pytest.approx(sk.f1_score(targets, predictions, average="macro"))


def test_confusion_matrix_matches_sklearn() -> None:
    targets = np.array([0, 0, 1, 2, 2, 2])
    predictions = np.array([0, 1, 1, 2, 0, 2])
    expected = sk.confusion_matrix(targets, predictions, labels=[0, 1, 2, 3])
    np.testing.assert_array_equal(confusion_matrix(targets, predictions, 4), expected)


def test_collapsed_predictions_score_like_majority_guess() -> None:
    targets = np.array([0] * 8 + [1] * 2)
    predictions = np.zeros(10, dtype=int)
    scores = classification_scores(targets, predictions, n_classes=2)
    assert scores.accuracy == pytest.approx(0.8)
    assert scores.balanced_accuracy == pytest.approx(0.5)
    assert majority_fraction(targets, targets, 2) == pytest.approx(0.8)


def test_empty_predictions_are_rejected() -> None:
    with pytest.raises(ValueError, match="empty"):
        classification_scores(np.array([], dtype=int), np.array([], dtype=int), 3)
