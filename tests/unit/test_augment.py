"""Augmentation: waveform ops, SpecAugment, mixup and configuration checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlflow_audiodiag.errors import ConfigError, DataError
from mlflow_audiodiag.features.augment import AugmentConfig, SpecAugment, WaveformAugmenter, mixup
from mlflow_audiodiag.features.waveform import fix_length

SR = 16000
OPS = ("noise", "gain", "shift", "stretch", "pitch")


def _clip(seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(SR * seconds)) / SR
    wave = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)
    return wave.astype(np.float32)


def _only(op: str, p: float = 1.0, **overrides: object) -> AugmentConfig:
    fields = {f"{name}_p": 0.0 for name in OPS}
    fields[f"{op}_p"] = p
    return AugmentConfig(**fields, specaug_p=0.0, **overrides)


# --- fix_length -------------------------------------------------------------------------------


def test_fix_length_center_crop_random_crop_and_pad() -> None:
    wave = np.arange(10, dtype=np.float32)
    np.testing.assert_array_equal(fix_length(wave, 4), [3, 4, 5, 6])
    starts = {int(fix_length(wave, 4, np.random.default_rng(s))[0]) for s in range(50)}
    assert starts == set(range(7))
    np.testing.assert_array_equal(fix_length(wave[:3], 6), [0, 0, 1, 2, 0, 0])
    np.testing.assert_array_equal(
        fix_length(wave[:3], 6, np.random.default_rng(0)), [0, 0, 1, 2, 0, 0]
    )
    assert fix_length(wave[:2], 5).tolist() == [0, 0, 1, 0, 0]


def test_fix_length_returns_copy_and_validates() -> None:
    wave = np.ones(8, dtype=np.float32)
    out = fix_length(wave, 8)
    out[0] = 5.0
    assert wave[0] == 1.0
    with pytest.raises(ConfigError):
        fix_length(wave, 0)
    with pytest.raises(DataError, match="1-D"):
        fix_length(np.ones((2, 8), dtype=np.float32), 4)


# --- waveform ops -----------------------------------------------------------------------------


@pytest.mark.parametrize("op", OPS)
def test_each_op_keeps_length_dtype_and_is_finite(op: str) -> None:
    wave = _clip(0.5)
    out = WaveformAugmenter(_only(op), SR)(wave, np.random.default_rng(0))
    assert out.shape == wave.shape
    assert out.dtype == np.float32
    assert np.isfinite(out).all()
    assert not np.array_equal(out, wave)


@pytest.mark.parametrize("op", ["noise", "gain", "shift"])
def test_probability_zero_never_and_one_always_changes(op: str) -> None:
    wave = _clip(0.25)
    never = WaveformAugmenter(_only(op, p=0.0), SR)
    always = WaveformAugmenter(_only(op, p=1.0), SR)
    rng = np.random.default_rng(1)
    for _ in range(50):
        np.testing.assert_array_equal(never(wave, rng), wave)
        assert not np.array_equal(always(wave, rng), wave)


@pytest.mark.parametrize("op", ["noise", "gain", "shift"])
def test_probability_half_fires_about_half_the_time(op: str) -> None:
    wave = _clip(0.05)
    augment = WaveformAugmenter(_only(op, p=0.5), SR)
    rng = np.random.default_rng(2)
    fired = sum(not np.array_equal(augment(wave, rng), wave) for _ in range(400))
    assert 160 <= fired <= 240  # +/- 4 standard deviations of Binomial(400, 0.5)


def test_noise_snr_is_within_configured_range() -> None:
    wave = _clip()
    augment = WaveformAugmenter(_only("noise", noise_snr_db=(12.0, 18.0)), SR)
    rng = np.random.default_rng(3)
    signal_power = np.mean(wave.astype(np.float64) ** 2)
    snrs = []
    for _ in range(30):
        noise = augment(wave, rng).astype(np.float64) - wave
        snrs.append(10 * np.log10(signal_power / np.mean(noise**2)))
    assert min(snrs) >= 12.0 - 0.01 and max(snrs) <= 18.0 + 0.01
    assert max(snrs) - min(snrs) > 1.0  # drawn, not fixed


def test_silent_clip_never_produces_nan() -> None:
    silent = np.zeros(SR // 4, dtype=np.float32)
    config = AugmentConfig(noise_p=1, gain_p=1, shift_p=1, stretch_p=1, pitch_p=1)
    out = WaveformAugmenter(config, SR)(silent, np.random.default_rng(4))
    assert np.isfinite(out).all()
    assert out.shape == silent.shape


def test_gain_scales_by_drawn_decibels_within_range() -> None:
    wave = _clip(0.1)
    augment = WaveformAugmenter(_only("gain", gain_db=(-6.0, 6.0)), SR)
    rng = np.random.default_rng(5)
    for _ in range(20):
        ratio = augment(wave, rng) / np.where(wave == 0, 1, wave)
        gain_db = 20 * np.log10(np.median(ratio))
        assert -6.0 - 1e-4 <= gain_db <= 6.0 + 1e-4
        np.testing.assert_allclose(ratio[wave != 0], np.median(ratio), rtol=1e-5)


def test_shift_moves_content_with_zero_fill_not_circular() -> None:
    wave = np.arange(1, SR // 10 + 1, dtype=np.float32)  # no zeros in the input
    augment = WaveformAugmenter(_only("shift", shift_max_s=0.01), SR)
    rng = np.random.default_rng(6)
    max_shift = int(0.01 * SR)
    seen_signs = set()
    for _ in range(40):
        out = augment(wave, rng)
        zeros = np.flatnonzero(out == 0)
        assert 1 <= zeros.size <= max_shift
        if zeros[0] == 0:  # delayed: zeros at the start, then the clip's beginning
            assert np.array_equal(zeros, np.arange(zeros.size))
            np.testing.assert_array_equal(out[zeros.size :], wave[: wave.size - zeros.size])
            seen_signs.add(1)
        else:  # advanced: zeros at the end
            assert zeros[-1] == wave.size - 1
            np.testing.assert_array_equal(out[: wave.size - zeros.size], wave[zeros.size :])
            seen_signs.add(-1)
    assert seen_signs == {1, -1}


@pytest.mark.parametrize("length", [SR, SR // 2 + 7])
def test_stretch_and_pitch_keep_length(length: int) -> None:
    wave = _clip()[:length]
    rng = np.random.default_rng(7)
    for op, extra in (("stretch", {"stretch_rate": (0.8, 1.25)}), ("pitch", {})):
        out = WaveformAugmenter(_only(op, **extra), SR)(wave, rng)
        assert out.shape == wave.shape
        assert np.isfinite(out).all()


def test_waveform_augmentation_is_deterministic_for_a_seed() -> None:
    config = AugmentConfig(noise_p=0.5, gain_p=0.5, shift_p=0.5, stretch_p=0.5, pitch_p=0.5)
    augment = WaveformAugmenter(config, SR)
    wave = _clip(0.5)
    first = [augment(wave, np.random.default_rng(s)) for s in range(4)]
    second = [augment(wave, np.random.default_rng(s)) for s in range(4)]
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


def test_waveform_augmenter_rejects_bad_input() -> None:
    augment = WaveformAugmenter(AugmentConfig(), SR)
    with pytest.raises(DataError, match="1-D"):
        augment(np.zeros((2, 100), dtype=np.float32), np.random.default_rng(0))
    with pytest.raises(DataError, match="NaN"):
        augment(np.full(100, np.nan, dtype=np.float32), np.random.default_rng(0))


# --- SpecAugment ------------------------------------------------------------------------------


def _spec_batch(batch: int = 16) -> torch.Tensor:
    return torch.randn(batch, 64, 101, generator=torch.Generator().manual_seed(0)) + 5.0


def test_specaugment_masks_with_zero_only_when_training() -> None:
    features = _spec_batch()
    original = features.clone()
    module = SpecAugment(AugmentConfig(specaug_p=1.0), torch.Generator().manual_seed(1))

    masked = module(features)
    assert masked.shape == features.shape
    changed = masked != features
    assert torch.all(masked[changed] == 0)
    assert changed.any(dim=(1, 2)).sum() >= 14  # zero-width masks are possible but rare
    assert torch.equal(features, original)  # input left untouched

    module.eval()
    assert torch.equal(module(features), features)


def test_specaugment_masks_are_whole_rows_and_columns_and_iid() -> None:
    config = AugmentConfig(specaug_p=1.0, n_freq_masks=1, n_time_masks=0, freq_mask_param=20)
    masked = SpecAugment(config, torch.Generator().manual_seed(2))(_spec_batch())
    masked_rows = [(m == 0).all(dim=1).nonzero().flatten().tolist() for m in masked]
    # Only complete bins are masked, and examples get different masks.
    for example, rows in zip(masked, masked_rows, strict=True):
        assert int((example == 0).sum()) == len(rows) * example.shape[1]
    assert len({tuple(rows) for rows in masked_rows}) > 1


def test_specaugment_probability() -> None:
    features = _spec_batch(400)
    never = SpecAugment(AugmentConfig(specaug_p=0.0))
    assert torch.equal(never(features), features)

    config = AugmentConfig(specaug_p=0.5, n_freq_masks=2, n_time_masks=2)
    masked = SpecAugment(config, torch.Generator().manual_seed(3))(features)
    fraction = float((masked != features).any(dim=(1, 2)).float().mean())
    assert 0.38 <= fraction <= 0.58


def test_specaugment_deterministic_with_generator_and_keeps_global_rng() -> None:
    features = _spec_batch()
    config = AugmentConfig(specaug_p=0.7)
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = SpecAugment(config, torch.Generator().manual_seed(4))(features)
    assert torch.equal(torch.rand(1), expected_next)
    second = SpecAugment(config)(features, generator=torch.Generator().manual_seed(4))
    assert torch.equal(first, second)


# --- mixup ------------------------------------------------------------------------------------


def test_mixup_equation_and_lambda_range() -> None:
    features = torch.randn(8, 4, 5)
    targets = torch.arange(8)
    generator = torch.Generator().manual_seed(5)
    lams = []
    for _ in range(20):
        mixed, targets_a, targets_b, lam = mixup(features, targets, 0.4, generator)
        lams.append(lam)
        assert 0.0 <= lam <= 1.0
        assert torch.equal(targets_a, targets)
        perm = targets_b  # targets are the indices, so targets_b is the permutation
        assert sorted(perm.tolist()) == list(range(8))
        torch.testing.assert_close(mixed, lam * features + (1 - lam) * features[perm])
    assert len(set(lams)) == len(lams)


def test_mixup_off_and_deterministic() -> None:
    features, targets = torch.randn(4, 3, 2), torch.tensor([0, 1, 2, 3])
    mixed, targets_a, targets_b, lam = mixup(features, targets, 0.0)
    assert mixed is features and lam == 1.0
    assert torch.equal(targets_a, targets) and torch.equal(targets_b, targets)

    first = mixup(features, targets, 0.2, torch.Generator().manual_seed(6))
    second = mixup(features, targets, 0.2, torch.Generator().manual_seed(6))
    assert torch.equal(first[0], second[0]) and first[3] == second[3]


# --- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {"noise_p": 1.5},
        {"specaug_p": -0.1},
        {"gain_db": (6.0, -6.0)},
        {"noise_snr_db": (10.0,)},
        {"stretch_rate": (0.0, 1.1)},
        {"pitch_semitones": (float("nan"), 1.0)},
        {"shift_max_s": -0.1},
        {"time_mask_param": -1},
        {"mixup_alpha": -0.5},
    ],
)
def test_config_validation(overrides: dict) -> None:
    name = next(iter(overrides))
    with pytest.raises(ConfigError, match=name):
        AugmentConfig(**overrides)


def test_config_flags_and_off() -> None:
    default = AugmentConfig()
    assert default.uses_waveform and default.uses_spectrogram and not default.uses_mixup
    off = AugmentConfig.off()
    assert not off.uses_waveform and not off.uses_spectrogram and not off.uses_mixup
    assert AugmentConfig(gain_db=[-3, 3]).gain_db == (-3.0, 3.0)  # lists from YAML/JSON
    assert not AugmentConfig(n_freq_masks=0, n_time_masks=0).uses_spectrogram
    wave = _clip(0.1)
    out = WaveformAugmenter(off, SR)(wave, np.random.default_rng(0))
    np.testing.assert_array_equal(out, wave)


def test_resampled_variants_are_cached_and_used_instead_of_librosa(tmp_path) -> None:
    from mlflow_audiodiag.features.store import SplitFeatures
    from mlflow_audiodiag.features.variants import resampled_variants
    from mlflow_audiodiag.training.datasets import AugmentedWaveformDataset

    rng = np.random.default_rng(0)
    waves = (0.3 * rng.standard_normal((3, 4000))).astype(np.float32)
    config = AugmentConfig(
        stretch_p=1.0, pitch_p=1.0, noise_p=0.0, gain_p=0.0, shift_p=0.0, resampled_variants=2
    )
    augmenter = WaveformAugmenter(config, sample_rate=8000)
    variants = resampled_variants(waves, augmenter, tmp_path, seed=0, progress=False)
    assert variants.shape == (3, 2, 4000)
    assert not np.allclose(variants[0, 0], variants[0, 1])  # independent draws
    assert not np.allclose(variants[0, 0], waves[0])
    stamp = next(tmp_path.glob("train_variants-*.npy")).stat().st_mtime_ns
    again = resampled_variants(waves, augmenter, tmp_path, seed=0, progress=False)
    np.testing.assert_array_equal(again, variants)
    assert next(tmp_path.glob("train_variants-*.npy")).stat().st_mtime_ns == stamp

    split = SplitFeatures(
        "train", ["a", "b", "c"], np.array([0, 1, 0]), np.zeros((3, 2, 2)), np.zeros((3, 3)), waves
    )
    dataset = AugmentedWaveformDataset(split, augmenter, seed=0, variants=variants)
    wave, label = dataset[1]
    assert any(np.allclose(wave.numpy(), variants[1, k]) for k in range(2))
    assert label == 1
