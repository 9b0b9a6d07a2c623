"""Log-mel/MFCC extraction: shapes, batch independence, frequency placement."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlflow_audiodiag.features.config import FeatureConfig
from mlflow_audiodiag.features.extractor import FeatureExtractor


def _tone(freq_hz: float, config: FeatureConfig, amplitude: float = 0.5) -> torch.Tensor:
    t = torch.arange(config.num_samples, dtype=torch.float32) / config.sample_rate
    return amplitude * torch.sin(2 * torch.pi * freq_hz * t)


@pytest.mark.parametrize("kind", ["logmel", "mfcc"])
def test_feature_shape_matches_config(kind: str) -> None:
    config = FeatureConfig(kind=kind)
    waves = torch.randn(3, config.num_samples) * 0.1

    features = FeatureExtractor(config)(waves)

    assert features.shape == (3, config.n_bins, config.n_frames)
    assert torch.isfinite(features).all()


def test_single_clip_gets_batch_axis() -> None:
    config = FeatureConfig()
    features = FeatureExtractor(config)(torch.randn(config.num_samples) * 0.1)
    assert features.shape == (1, config.n_bins, config.n_frames)


@pytest.mark.parametrize("kind", ["logmel", "mfcc"])
def test_clip_features_do_not_depend_on_batch_mates(kind: str) -> None:
    config = FeatureConfig(kind=kind)
    extractor = FeatureExtractor(config)
    quiet = _tone(440.0, config, amplitude=1e-3)
    loud = torch.randn(config.num_samples) * 10.0

    alone = extractor(quiet.unsqueeze(0))[0]
    in_batch = extractor(torch.stack([loud, quiet]))[1]

    torch.testing.assert_close(alone, in_batch, rtol=1e-5, atol=1e-4)


def test_tone_energy_lands_in_expected_mel_band() -> None:
    config = FeatureConfig()
    tone_hz = 1000.0
    f_max = config.f_max or config.sample_rate / 2

    def hz_to_mel(hz: float) -> float:  # HTK scale, as torchaudio's MelSpectrogram
        return 2595.0 * np.log10(1.0 + hz / 700.0)

    band_edges = np.linspace(hz_to_mel(config.f_min), hz_to_mel(f_max), config.n_mels + 2)
    expected_band = int(np.argmin(np.abs(band_edges[1:-1] - hz_to_mel(tone_hz))))

    features = FeatureExtractor(config)(_tone(tone_hz, config).unsqueeze(0))[0]
    loudest_band = int(features.mean(dim=1).argmax())

    assert abs(loudest_band - expected_band) <= 1
