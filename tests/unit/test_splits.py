"""Per-class splitting and the label-coverage check."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest

from mlflow_audiodiag.data.splits import SPLITS, check_label_coverage, stratified_split
from mlflow_audiodiag.errors import ConfigError, DataError


def counts_by_class(labels: list[str], splits: np.ndarray) -> dict[str, Counter]:
    result: dict[str, Counter] = {}
    for label, split in zip(labels, splits, strict=True):
        result.setdefault(label, Counter())[split] += 1
    return result


def test_split_is_deterministic_for_a_seed_and_varies_with_it() -> None:
    labels = [f"c{i % 4}" for i in range(200)]
    first = stratified_split(labels, 0.15, 0.15, seed=3)
    assert np.array_equal(first, stratified_split(labels, 0.15, 0.15, seed=3))
    assert not np.array_equal(first, stratified_split(labels, 0.15, 0.15, seed=4))
    assert set(first) == set(SPLITS)


def test_split_fractions_are_per_class() -> None:
    labels = ["a"] * 100 + ["b"] * 20
    counts = counts_by_class(labels, stratified_split(labels, 0.2, 0.1, seed=0))
    assert counts["a"] == Counter(train=70, val=20, test=10)
    assert counts["b"] == Counter(train=14, val=4, test=2)


def test_small_classes_keep_a_training_clip() -> None:
    labels = ["single"] + ["pair"] * 2 + ["three"] * 3 + ["four"] * 4
    counts = counts_by_class(labels, stratified_split(labels, 0.15, 0.15, seed=0))
    assert counts["single"] == Counter(train=1)
    assert counts["pair"] == Counter(train=1, val=1)
    assert counts["three"] == Counter(train=1, val=1, test=1)
    assert counts["four"]["train"] >= 1 and counts["four"]["val"] >= 1


def test_zero_fractions_put_everything_in_train() -> None:
    splits = stratified_split(["a", "b"] * 5, 0.0, 0.0, seed=0)
    assert set(splits) == {"train"}


@pytest.mark.parametrize(("val", "test"), [(-0.1, 0.1), (1.0, 0.0), (0.6, 0.4), (0.5, 0.7)])
def test_invalid_fractions(val: float, test: float) -> None:
    with pytest.raises(ConfigError):
        stratified_split(["a", "b", "c"], val, test, seed=0)


def table(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["path", "label", "split"])


def test_coverage_returns_sorted_training_classes() -> None:
    clips = table([("1.wav", "dog", "train"), ("2.wav", "cat", "train"), ("3.wav", "dog", "val")])
    assert check_label_coverage(clips) == ["cat", "dog"]


def test_coverage_rejects_empty_table() -> None:
    with pytest.raises(DataError, match="no clips"):
        check_label_coverage(table([]))


def test_coverage_rejects_unknown_split_names() -> None:
    clips = table([("1.wav", "a", "train"), ("2.wav", "b", "train"), ("odd.wav", "a", "dev")])
    with pytest.raises(DataError, match=r"'dev'.*odd\.wav"):
        check_label_coverage(clips)


def test_coverage_names_labels_missing_from_train() -> None:
    rows = [("t1.wav", "a", "train"), ("t2.wav", "b", "train")]
    rows += [(f"bird{i}.wav", "bird", "val" if i % 2 else "test") for i in range(7)]
    with pytest.raises(DataError) as error:
        check_label_coverage(table(rows))
    message = str(error.value)
    assert "'bird' has 7 clip(s)" in message
    assert "bird0.wav" in message and "and 2 more" in message
    assert "add training examples" in message


def test_coverage_requires_two_training_classes() -> None:
    clips = table([("1.wav", "a", "train"), ("2.wav", "a", "train"), ("3.wav", "a", "val")])
    with pytest.raises(DataError, match="at least 2 classes"):
        check_label_coverage(clips)


def test_coverage_rejects_missing_train_split() -> None:
    clips = table([("1.wav", "a", "val"), ("2.wav", "b", "test")])
    with pytest.raises(DataError, match="no clips in split 'train'"):
        check_label_coverage(clips)
