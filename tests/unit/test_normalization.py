"""Normalization: streaming statistics, modes, serialisation and train-only fitting."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mlflow_audiodiag.errors import ConfigError, DataError
from mlflow_audiodiag.features.normalization import (
    NORMALIZATION_MODES,
    FeatureNormalizer,
    NormalizationStats,
    RunningFeatureStats,
    fit_normalization,
)

N_BINS, N_FRAMES = 6, 9


def _features(n_clips: int, seed: int, offset: float = -40.0, scale: float = 10.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    bin_offsets = np.linspace(-20.0, 20.0, N_BINS)[None, :, None]
    bin_scales = np.linspace(0.5, 3.0, N_BINS)[None, :, None]
    noise = rng.standard_normal((n_clips, N_BINS, N_FRAMES))
    return (offset + bin_offsets + scale * bin_scales * noise).astype(np.float32)


def _batches(data: np.ndarray, sizes: list[int]) -> list[torch.Tensor]:
    bounds = np.cumsum([0, *sizes])
    assert bounds[-1] == len(data)
    return [torch.from_numpy(data[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def test_streaming_stats_match_numpy_on_concatenated_data() -> None:
    data = _features(23, seed=0)
    stats = RunningFeatureStats()
    for batch in _batches(data, [1, 7, 2, 13]):
        stats.update(batch)
    as_f64 = data.astype(np.float64)

    assert stats.count == 23 * N_FRAMES
    assert stats.n_clips == 23
    np.testing.assert_allclose(stats.per_bin_mean, as_f64.mean(axis=(0, 2)), rtol=1e-10)
    np.testing.assert_allclose(stats.per_bin_std, as_f64.std(axis=(0, 2)), rtol=1e-10)
    assert stats.global_mean == pytest.approx(as_f64.mean(), rel=1e-10)
    assert stats.global_std == pytest.approx(as_f64.std(), rel=1e-10)


def test_streaming_stats_accept_numpy_batches() -> None:
    data = _features(5, seed=1)
    stats = RunningFeatureStats()
    stats.update(data[:2])
    stats.update(data[2:])
    np.testing.assert_allclose(stats.per_bin_mean, data.astype(np.float64).mean(axis=(0, 2)))


def test_nan_batch_raises_data_error_naming_the_batch() -> None:
    stats = RunningFeatureStats()
    stats.update(_features(2, seed=0))
    bad = _features(2, seed=1)
    bad[0, 1, :3] = np.nan
    with pytest.raises(DataError, match=r"batch 1 contains 3 non-finite"):
        stats.update(bad)


def test_mismatched_bins_and_empty_stats_raise() -> None:
    stats = RunningFeatureStats()
    with pytest.raises(DataError, match="no feature values"):
        _ = stats.global_mean
    stats.update(_features(2, seed=0))
    with pytest.raises(DataError, match="bins"):
        stats.update(np.zeros((2, N_BINS + 1, N_FRAMES), dtype=np.float32))


def test_per_bin_mode_gives_zero_mean_unit_std_per_bin_on_training_data() -> None:
    data = _features(40, seed=2)
    stats = fit_normalization(_batches(data, [16, 16, 8]), "per_bin")
    out = FeatureNormalizer(stats)(torch.from_numpy(data)).double()

    assert len(stats.mean) == N_BINS
    torch.testing.assert_close(
        out.mean(dim=(0, 2)), torch.zeros(N_BINS, dtype=torch.float64), atol=1e-4, rtol=0
    )
    torch.testing.assert_close(
        out.std(dim=(0, 2), unbiased=False),
        torch.ones(N_BINS, dtype=torch.float64),
        atol=1e-4,
        rtol=0,
    )


def test_global_mode_gives_zero_mean_unit_std_overall() -> None:
    data = _features(40, seed=3)
    stats = fit_normalization(_batches(data, [25, 15]), "global")
    out = FeatureNormalizer(stats)(torch.from_numpy(data)).double()

    assert len(stats.mean) == 1
    assert float(out.mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(out.std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)
    # A single scalar keeps the between-bin differences.
    assert float(out.mean(dim=(0, 2)).std()) > 0.5


def test_per_utterance_mode_standardizes_each_clip() -> None:
    data = torch.from_numpy(_features(5, seed=4))
    data[2] *= 100.0
    stats = fit_normalization(iter(()), "per_utterance")
    out = FeatureNormalizer(stats)(data).double()

    torch.testing.assert_close(
        out.mean(dim=(1, 2)), torch.zeros(5, dtype=torch.float64), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(
        out.std(dim=(1, 2), unbiased=False), torch.ones(5, dtype=torch.float64), atol=1e-4, rtol=0
    )


def test_per_utterance_constant_clip_stays_finite() -> None:
    stats = NormalizationStats(mode="per_utterance")
    out = FeatureNormalizer(stats)(torch.full((1, N_BINS, N_FRAMES), -100.0))
    assert torch.isfinite(out).all()
    assert torch.count_nonzero(out) == 0


def test_none_mode_is_identity_and_does_not_consume_batches() -> None:
    def exploding_batches():
        raise AssertionError("none mode must not read batches")
        yield  # pragma: no cover

    stats = fit_normalization(exploding_batches(), "none")
    data = torch.from_numpy(_features(3, seed=5))
    assert FeatureNormalizer(stats)(data) is data


def test_stats_round_trip_through_json() -> None:
    for mode in NORMALIZATION_MODES:
        stats = fit_normalization(_batches(_features(6, seed=6), [4, 2]), mode)
        restored = NormalizationStats.from_dict(json.loads(json.dumps(stats.to_dict())))
        assert restored == stats


def test_stats_record_counts() -> None:
    stats = fit_normalization(_batches(_features(6, seed=6), [4, 2]), "per_bin")
    assert stats.n_clips == 6
    assert stats.n_frames == 6 * N_FRAMES


def test_invalid_mode_and_inconsistent_stats_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="per_bin"):
        fit_normalization([], "per_frame")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="std"):
        NormalizationStats(mode="per_bin", mean=[0.0, 1.0], std=[1.0])
    with pytest.raises(ConfigError):
        NormalizationStats.from_dict({"mode": "global", "mean": [], "std": []})


def test_buffers_are_in_state_dict_and_restore() -> None:
    stats = fit_normalization(_batches(_features(8, seed=7), [8]), "per_bin")
    normalizer = FeatureNormalizer(stats)
    state = normalizer.state_dict()

    assert set(state) == {"mean", "std"}
    np.testing.assert_allclose(state["mean"].numpy(), stats.mean, rtol=1e-6)
    np.testing.assert_allclose(state["std"].numpy(), stats.std, rtol=1e-6)

    fresh = FeatureNormalizer(stats)
    fresh.mean.zero_()
    fresh.load_state_dict(state)
    data = torch.from_numpy(_features(2, seed=8))
    torch.testing.assert_close(fresh(data), normalizer(data))


def test_per_bin_rejects_other_bin_count() -> None:
    stats = fit_normalization(_batches(_features(4, seed=9), [4]), "per_bin")
    with pytest.raises(DataError, match="bins"):
        FeatureNormalizer(stats)(torch.zeros(1, N_BINS + 2, N_FRAMES))


@pytest.mark.parametrize("mode", ["global", "per_bin"])
def test_fit_uses_training_batches_only(mode: str) -> None:
    splits = {"train": _features(30, seed=10), "val": _features(10, seed=11)}

    def batches_of(split: str, batch_size: int = 8):
        data = splits[split]
        for start in range(0, len(data), batch_size):
            yield torch.from_numpy(data[start : start + batch_size])

    fitted = fit_normalization(batches_of("train"), mode)
    stats_alone = RunningFeatureStats()
    stats_alone.update(splits["train"])
    expected_mean = (
        [stats_alone.global_mean] if mode == "global" else stats_alone.per_bin_mean.tolist()
    )
    np.testing.assert_allclose(fitted.mean, expected_mean, rtol=1e-10)

    splits["val"] = splits["val"] * 50.0 + 1000.0
    assert fit_normalization(batches_of("train"), mode) == fitted

    with_val = fit_normalization(
        (batch for split in ("train", "val") for batch in batches_of(split)), mode
    )
    assert with_val.mean != fitted.mean
    assert with_val.std != fitted.std
