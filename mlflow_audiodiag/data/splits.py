"""Train/val/test assignment and checks that every evaluated label can be learned."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from mlflow_audiodiag.data.names import MAX_LABEL_CHARS, label_problem, printable, shown
from mlflow_audiodiag.errors import ConfigError, DataError

SPLITS = ("train", "val", "test")
_MAX_EXAMPLES = 5


def _validate_fractions(val_fraction: float, test_fraction: float) -> None:
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{name} must be in [0, 1), got {value}")
    if val_fraction + test_fraction >= 1.0:
        raise ConfigError(
            f"val_fraction + test_fraction must be below 1 to leave clips for training, got "
            f"{val_fraction} + {test_fraction}"
        )


def _split_counts(n_clips: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """Validation and test clip counts for one class of ``n_clips`` clips."""
    if n_clips == 1:
        return 0, 0
    if n_clips == 2:
        if val_fraction > 0:
            return 1, 0
        return (0, 1) if test_fraction > 0 else (0, 0)
    n_val = math.floor(n_clips * val_fraction + 0.5)
    n_test = math.floor(n_clips * test_fraction + 0.5)
    n_val = max(n_val, 1 if val_fraction > 0 else 0)
    n_test = max(n_test, 1 if test_fraction > 0 else 0)
    while n_clips - n_val - n_test < 1:
        if n_test > 1 and n_test >= n_val:
            n_test -= 1
        else:
            n_val -= 1
    return n_val, n_test


def stratified_split(
    labels: Sequence[str], val_fraction: float, test_fraction: float, seed: int
) -> np.ndarray:
    """Assign each clip to ``train``/``val``/``test``, class by class, deterministically.

    Every class with at least 3 clips keeps at least one training clip and, when the
    fraction is positive, gets at least one validation and one test clip. A class with a
    single clip goes to training; a class with two clips gets one training clip and one
    validation clip (or test clip when ``val_fraction`` is 0).
    """
    _validate_fractions(val_fraction, test_fraction)
    label_array = np.asarray([str(label) for label in labels], dtype=object)
    splits = np.full(len(label_array), "train", dtype=object)
    rng = np.random.default_rng(seed)
    for label in sorted(set(label_array.tolist())):
        indices = np.flatnonzero(label_array == label)
        rng.shuffle(indices)
        n_val, n_test = _split_counts(len(indices), val_fraction, test_fraction)
        splits[indices[:n_val]] = "val"
        splits[indices[n_val : n_val + n_test]] = "test"
    return splits.astype(str)


def _examples(paths: pd.Series) -> str:
    shown = ", ".join(str(path) for path in paths.head(_MAX_EXAMPLES))
    more = len(paths) - _MAX_EXAMPLES
    return shown + (f" and {more} more" if more > 0 else "")


def check_label_coverage(table: pd.DataFrame) -> list[str]:
    """Validate a clip table (columns ``path``, ``label``, ``split``); return the training classes.

    Raises ``DataError`` for an empty table, unknown split names, labels that are evaluated
    but never trained on, and fewer than two training classes.
    """
    missing = [column for column in ("path", "label", "split") if column not in table.columns]
    if missing:
        raise DataError(f"clip table lacks the column(s) {missing}; it needs path, label, split")
    if table.empty:
        raise DataError("the dataset has no clips: point the source at audio files")

    labels = table["label"].astype(str)
    for label in labels.unique():
        problem = label_problem(label)
        if problem is not None:
            example = printable(table["path"][labels == label].iloc[0])
            raise DataError(
                f"the label {shown(label)} (of {example} and maybe others) {problem}: fix the "
                f"labels (a label is 1 to {MAX_LABEL_CHARS} printable characters)"
            )

    splits = table["split"].astype(str)
    bad_split = ~splits.isin(SPLITS)
    if bad_split.any():
        bad_rows = table[bad_split]
        values = sorted(set(splits[bad_split]))
        raise DataError(
            f"{len(bad_rows)} clip(s) have split value(s) {values}, expected one of "
            f"{list(SPLITS)}: rows {bad_rows.index[:_MAX_EXAMPLES].tolist()} "
            f"(files {_examples(bad_rows['path'])}); "
            "fix the split column or leave it empty for every row to split automatically"
        )

    train_labels = set(labels[splits == "train"])
    if not train_labels:
        raise DataError(
            "the dataset has no clips in split 'train': assign training clips or leave the "
            "split column empty to split automatically"
        )

    problems = []
    for label in sorted(set(labels) - train_labels):
        unseen = table[labels == label]
        where = sorted(set(splits[labels == label]))
        problems.append(
            f"label {label!r} has {len(unseen)} clip(s) in {'/'.join(where)} but none in train "
            f"(e.g. {_examples(unseen['path'])})"
        )
    if problems:
        raise DataError(
            "; ".join(problems)
            + ". The model cannot predict a class it never trained on: add training examples "
            "of these labels or remove those clips"
        )

    if len(train_labels) < 2:
        raise DataError(
            f"the training split has only the class {sorted(train_labels)}; a classifier needs "
            "at least 2 classes: add clips of other labels"
        )
    return sorted(train_labels)
