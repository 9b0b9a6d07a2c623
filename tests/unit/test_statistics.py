import math
from collections import Counter

import numpy as np
import pytest
import torch

from mlflow_audiodiag.monitoring.statistics import (
    FeatureStatsAccumulator,
    label_statistics,
    prediction_statistics,
    smd_summary,
    standardized_mean_difference,
    waveform_statistics,
)


def _features(seed: int = 0, n: int = 23, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.5, 3.0, size=(1, 8, 1))
    return rng.normal(size=(n, 8, 10)) * scale - 40.0 + np.arange(8)[None, :, None] + shift


def _accumulate(data: np.ndarray, sizes: list[int], **kwargs) -> FeatureStatsAccumulator:
    accumulator = FeatureStatsAccumulator(**kwargs)
    start = 0
    for i, size in enumerate(sizes):
        batch = data[start : start + size]
        accumulator.update(torch.from_numpy(batch) if i % 2 else batch)
        start += size
    assert start == len(data)
    return accumulator


def test_feature_stats_match_numpy_with_uneven_batches_and_nonfinite_values() -> None:
    data = _features()
    data[3, 2, 4] = np.nan
    data[10, 2, :] = np.nan
    data[7, 5, 1] = np.inf
    data[0, 0, 0] = -np.inf
    data[20] -= 100.0  # a quiet clip
    stats = _accumulate(data, [5, 1, 10, 7], silent_below=-100.0).result()
    masked = np.where(np.isfinite(data), data, np.nan)
    per_bin = masked.transpose(1, 0, 2).reshape(8, -1)
    np.testing.assert_allclose(stats.bin_mean, np.nanmean(per_bin, axis=1), rtol=1e-12)
    np.testing.assert_allclose(stats.bin_std, np.nanstd(per_bin, axis=1), rtol=1e-10)
    np.testing.assert_array_equal(stats.bin_min, np.nanmin(per_bin, axis=1))
    np.testing.assert_array_equal(stats.bin_max, np.nanmax(per_bin, axis=1))
    assert stats.mean == pytest.approx(np.nanmean(masked), rel=1e-12)
    assert stats.std == pytest.approx(np.nanstd(masked), rel=1e-10)
    assert stats.nan_count == 1 + 10 and stats.inf_count == 2
    assert stats.n_clips == 23
    metrics = stats.metrics()
    assert metrics["dynamic_range"] == pytest.approx(np.nanmax(masked) - np.nanmin(masked))
    assert metrics["silent_fraction"] == pytest.approx(1 / 23)
    assert metrics["bin_std_min"] == pytest.approx(np.nanstd(per_bin, axis=1).min())
    assert metrics["bin_mean_abs_max"] == pytest.approx(np.abs(np.nanmean(per_bin, 1)).max())
    table = stats.table()
    assert list(table.columns) == ["bin", "mean", "std", "min", "max"]
    assert len(table) == 8


def test_finite_torch_batches_give_the_statistics_of_numpy_batches() -> None:
    data = _features(seed=3)
    data[20] -= 100.0  # a quiet clip
    from_torch = FeatureStatsAccumulator(silent_below=-100.0)
    from_numpy = FeatureStatsAccumulator(silent_below=-100.0)
    for start, stop in [(0, 5), (5, 6), (6, 16), (16, 23)]:
        from_torch.update(torch.from_numpy(data[start:stop]).float())
        from_numpy.update(data[start:stop].astype(np.float32))
    ours, reference = from_torch.result(), from_numpy.result()
    for field in ("bin_mean", "bin_std", "bin_min", "bin_max", "bin_count"):
        np.testing.assert_allclose(getattr(ours, field), getattr(reference, field), rtol=1e-12)
    assert ours.silent_fraction == reference.silent_fraction == pytest.approx(1 / 23)
    assert (ours.n_clips, ours.nan_count, ours.inf_count) == (23, 0, 0)
    batch = torch.from_numpy(data[:5].copy())  # float64 already: no conversion copy to work on
    before = batch.clone()
    FeatureStatsAccumulator().update(batch)
    assert torch.equal(batch, before)


def test_silent_fraction_is_optional_and_bins_must_agree() -> None:
    accumulator = _accumulate(_features(), [23])
    assert "silent_fraction" not in accumulator.result().metrics()
    with pytest.raises(ValueError, match="bins"):
        accumulator.update(np.zeros((2, 7, 10)))
    with pytest.raises(ValueError, match="shape"):
        accumulator.update(np.zeros((7, 10)))
    assert FeatureStatsAccumulator().result().n_clips == 0


def test_standardized_mean_difference() -> None:
    reference = _accumulate(_features(0, n=200), [100, 100]).result()
    shifted = _accumulate(_features(0, n=200, shift=2.0), [200]).result()
    smd = standardized_mean_difference(reference, shifted)
    np.testing.assert_allclose(smd, 2.0 / reference.bin_std, rtol=1e-10)
    summary = smd_summary(smd)
    assert summary["max_abs"] == pytest.approx(np.abs(smd).max())
    assert summary["mean_abs"] == pytest.approx(np.abs(smd).mean())
    constant = _accumulate(np.zeros((3, 8, 4)), [3]).result()
    assert np.all(standardized_mean_difference(constant, constant) == 0.0)
    assert np.all(np.abs(standardized_mean_difference(constant, reference)) > 1e6)


def test_waveform_statistics() -> None:
    t = np.arange(16000) / 16000
    sine = 0.5 * np.sin(2 * np.pi * 440 * t)
    silent = np.full(16000, 1e-4)
    clipped = np.clip(2.0 * np.sin(2 * np.pi * 440 * t), -1.0, 1.0)
    stats = waveform_statistics(np.stack([sine, silent, clipped, sine]))
    assert stats.n_clips == 4
    assert stats.silent_fraction == 0.25
    assert stats.clipped_fraction == 0.25
    peaks = [20 * math.log10(0.5), -80.0, 0.0, 20 * math.log10(0.5)]
    assert stats.peak_dbfs_mean == pytest.approx(np.mean(peaks), abs=1e-3)
    assert set(stats.metrics()) >= {"silent_fraction", "clipped_fraction", "peak_dbfs_mean"}


def test_label_statistics_match_counter() -> None:
    classes = ["yes", "no", "up", "down", "left"]
    rng = np.random.default_rng(1)
    labels = rng.choice([0, 1, 1, 2, 2, 2, 4], size=200)  # "down" is missing
    stats = label_statistics(torch.from_numpy(labels), classes)
    counter = Counter(labels.tolist())
    assert stats.counts == {name: counter.get(i, 0) for i, name in enumerate(classes)}
    present = [c for c in counter.values() if c]
    assert stats.missing_classes == ["down"]
    assert stats.imbalance_ratio == pytest.approx(max(present) / min(present))
    assert stats.majority_fraction == pytest.approx(max(present) / 200)
    entropy = -sum(c / 200 * math.log(c / 200) for c in present)
    assert stats.entropy == pytest.approx(entropy)
    assert stats.normalized_entropy == pytest.approx(entropy / math.log(5))
    metrics = stats.metrics()
    assert metrics["n_missing_classes"] == 1.0 and stats.counts["up"] == counter[2]
    assert stats.table()["count"].tolist() == list(stats.counts.values())
    assert stats.to_dict()["missing_classes"] == ["down"]
    balanced = label_statistics([0, 1, 2, 0, 1, 2], ["a", "b", "c"])
    assert balanced.imbalance_ratio == 1.0 and balanced.normalized_entropy == pytest.approx(1.0)
    with pytest.raises(ValueError, match="outside"):
        label_statistics([0, 3], ["a", "b"])


def test_prediction_statistics_of_a_collapsed_predictor() -> None:
    classes = ["a", "b", "c"]
    targets = np.array([0, 1, 2, 1, 0, 2])
    logits = np.tile([5.0, 0.0, 0.0], (6, 1))
    stats = prediction_statistics(targets, logits, classes)
    assert stats.predicted_counts == {"a": 6, "b": 0, "c": 0}
    assert stats.top_class_fraction == 1.0
    assert stats.hist_entropy == 0.0
    p = np.exp([5.0, 0.0, 0.0]) / np.exp([5.0, 0.0, 0.0]).sum()
    assert stats.mean_entropy == pytest.approx(-(p * np.log(p)).sum() / math.log(3))
    assert stats.recall == {"a": 1.0, "b": 0.0, "c": 0.0}
    assert stats.accuracy == pytest.approx(2 / 6)
    assert stats.summary_metrics()["n_predicted_classes"] == 1.0


def test_prediction_statistics_of_uniform_and_confident_predictions() -> None:
    classes = ["a", "b", "c", "d"]
    targets = np.array([0, 1, 2, 3])
    uniform = prediction_statistics(targets, np.zeros((4, 4)), classes)
    assert uniform.mean_entropy == pytest.approx(1.0)
    confident = prediction_statistics(targets, 50.0 * np.eye(4), classes)
    assert confident.mean_entropy < 1e-15
    assert confident.hist_entropy == pytest.approx(1.0)
    assert confident.accuracy == 1.0 and confident.top_class_fraction == 0.25


def test_prediction_statistics_skip_nonfinite_rows_and_absent_classes() -> None:
    targets = torch.tensor([0, 1, 0, 1, 0])
    logits = torch.tensor(
        [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [float("nan"), 0.0, 0.0], [0.0, 0.0, 3.0],
         [float("inf"), 0.0, 0.0]]
    )  # fmt: skip
    stats = prediction_statistics(targets, logits, ["a", "b", "c"])
    assert stats.nonfinite_logits == 2
    assert stats.n_examples == 3
    assert stats.accuracy == pytest.approx(2 / 3)
    assert stats.recall["a"] == 1.0 and stats.recall["b"] == 0.5
    assert math.isnan(stats.recall["c"]) and stats.absent_classes == ["c"]
    assert stats.predicted_counts["c"] == 1
    assert stats.to_dict()["recall"]["c"] is None
    finite = logits[torch.isfinite(logits).all(dim=1)]
    expected_loss = torch.nn.functional.cross_entropy(finite, torch.tensor([0, 1, 1]))
    assert stats.loss == pytest.approx(float(expected_loss), rel=1e-6)
    assert stats.balanced_accuracy == pytest.approx((1.0 + 0.5) / 2)  # over classes present
    assert list(stats.table()["predicted_count"]) == [1, 1, 1]
    with pytest.raises(ValueError, match="expected"):
        prediction_statistics(targets, logits[:, :2], ["a", "b", "c"])
