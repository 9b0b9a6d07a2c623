"""Feature extraction settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mlflow_audiodiag.errors import ConfigError

FeatureKind = Literal["logmel", "mfcc"]


@dataclass(frozen=True)
class FeatureConfig:
    """How a fixed-length mono waveform becomes a ``[n_bins, n_frames]`` feature map."""

    kind: FeatureKind = "logmel"
    sample_rate: int = 16000
    clip_seconds: float = 1.0
    n_fft: int = 400
    hop_length: int = 160
    n_mels: int = 64
    n_mfcc: int = 20
    f_min: float = 20.0
    f_max: float | None = None
    top_db: float = 80.0

    def __post_init__(self) -> None:
        if self.kind not in ("logmel", "mfcc"):
            raise ConfigError(f"feature kind must be 'logmel' or 'mfcc', got {self.kind!r}")
        if self.sample_rate <= 0 or self.clip_seconds <= 0:
            raise ConfigError(
                f"sample_rate and clip_seconds must be positive, got {self.sample_rate} "
                f"and {self.clip_seconds}"
            )
        if self.hop_length <= 0 or self.n_fft <= 0 or self.n_mels <= 0:
            raise ConfigError("n_fft, hop_length and n_mels must be positive")
        if self.kind == "mfcc" and not 0 < self.n_mfcc <= self.n_mels:
            raise ConfigError(f"n_mfcc must be in 1..n_mels ({self.n_mels}), got {self.n_mfcc}")

    @property
    def num_samples(self) -> int:
        """Samples per clip after padding/cropping."""
        return int(round(self.sample_rate * self.clip_seconds))

    @property
    def n_bins(self) -> int:
        """Feature bins per frame (mel bands or cepstral coefficients)."""
        return self.n_mfcc if self.kind == "mfcc" else self.n_mels

    @property
    def n_frames(self) -> int:
        """Frames per clip (centered STFT)."""
        return self.num_samples // self.hop_length + 1
