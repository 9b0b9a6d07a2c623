"""Training-time augmentation: waveform ops, SpecAugment and mixup."""

from __future__ import annotations

from dataclasses import dataclass, fields

import librosa
import numpy as np
import torch
import torchaudio
from torch import nn

from mlflow_audiodiag.errors import ConfigError, DataError
from mlflow_audiodiag.features.waveform import fix_length

_PROBABILITIES = ("noise_p", "gain_p", "shift_p", "stretch_p", "pitch_p", "specaug_p")
_RANGES = ("noise_snr_db", "gain_db", "stretch_rate", "pitch_semitones")
_NON_NEGATIVE = (
    "shift_max_s",
    "freq_mask_param",
    "time_mask_param",
    "n_freq_masks",
    "n_time_masks",
    "mixup_alpha",
)
_SILENCE_POWER = 1e-12
_STFT_KWARGS = {"n_fft": 512, "hop_length": 128}


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of each augmentation; ranges are ``(low, high)`` inclusive."""

    noise_p: float = 0.5
    noise_snr_db: tuple[float, float] = (10.0, 30.0)
    gain_p: float = 0.5
    gain_db: tuple[float, float] = (-6.0, 6.0)
    shift_p: float = 0.5
    shift_max_s: float = 0.1
    stretch_p: float = 0.0
    stretch_rate: tuple[float, float] = (0.9, 1.1)
    pitch_p: float = 0.0
    pitch_semitones: tuple[float, float] = (-2.0, 2.0)
    specaug_p: float = 0.5
    freq_mask_param: int = 8
    time_mask_param: int = 12
    n_freq_masks: int = 1
    n_time_masks: int = 2
    mixup_alpha: float = 0.0
    resampled_variants: int = 4

    def __post_init__(self) -> None:
        for name in _PROBABILITIES:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"augment {name} must be a probability in [0, 1], got {value}")
        for name in _RANGES:
            value = getattr(self, name)
            if len(value) != 2:
                raise ConfigError(f"augment {name} must be a (low, high) pair, got {value!r}")
            low, high = float(value[0]), float(value[1])
            if not (np.isfinite(low) and np.isfinite(high)) or low > high:
                raise ConfigError(
                    f"augment {name} must be a finite (low, high) pair with low <= high, "
                    f"got {value!r}"
                )
            object.__setattr__(self, name, (low, high))
        for name in _NON_NEGATIVE:
            value = getattr(self, name)
            if value < 0:
                raise ConfigError(f"augment {name} must be >= 0, got {value}")
        if self.resampled_variants < 0:
            raise ConfigError(
                "augment resampled_variants must be >= 0 (0 = stretch/pitch on the fly), "
                f"got {self.resampled_variants}"
            )
        if self.stretch_rate[0] <= 0:
            raise ConfigError(
                f"augment stretch_rate must be positive (1.0 = unchanged), got {self.stretch_rate}"
            )

    @property
    def uses_waveform(self) -> bool:
        """Whether any waveform op (noise, gain, shift, stretch, pitch) can fire."""
        return any(
            p > 0 for p in (self.noise_p, self.gain_p, self.shift_p, self.stretch_p, self.pitch_p)
        )

    @property
    def uses_resampling(self) -> bool:
        """Whether the expensive librosa ops (time-stretch, pitch-shift) can fire."""
        return self.stretch_p > 0 or self.pitch_p > 0

    @property
    def uses_spectrogram(self) -> bool:
        """Whether SpecAugment can mask anything."""
        masks_freq = self.n_freq_masks > 0 and self.freq_mask_param > 0
        masks_time = self.n_time_masks > 0 and self.time_mask_param > 0
        return self.specaug_p > 0 and (masks_freq or masks_time)

    @property
    def uses_mixup(self) -> bool:
        """Whether batches are mixed."""
        return self.mixup_alpha > 0

    @classmethod
    def off(cls) -> AugmentConfig:
        """A configuration with every augmentation disabled."""
        disabled = {f.name: 0.0 for f in fields(cls) if f.name.endswith("_p")}
        return cls(**disabled, mixup_alpha=0.0)


class WaveformAugmenter:
    """Random waveform ops on a 1-D float32 clip; the output keeps the input length.

    Order: time stretch, pitch shift, time shift (zero fill), gain, white noise. Each op fires
    independently with its probability; the noise SNR is relative to the clip's own power.
    """

    def __init__(self, config: AugmentConfig, sample_rate: int) -> None:
        if sample_rate <= 0:
            raise ConfigError(f"sample_rate must be positive, got {sample_rate}")
        self.config = config
        self.sample_rate = sample_rate

    def __call__(self, wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if wave.ndim != 1:
            raise DataError(
                f"expected a mono 1-D waveform, got shape {tuple(wave.shape)}; "
                "downmix before augmenting"
            )
        if not np.all(np.isfinite(wave)):
            raise DataError("waveform contains NaN/inf samples; fix or drop the source clip")
        return self.perturb(self.resample(wave, rng), rng)

    def resample(self, wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The expensive ops only: time stretch and pitch shift, each with its probability.

        Their results can be computed ahead of training (see :mod:`.variants`)."""
        cfg = self.config
        out = np.asarray(wave, dtype=np.float32)
        if rng.random() < cfg.stretch_p:
            out = self.time_stretch(out, rng.uniform(*cfg.stretch_rate))
        if rng.random() < cfg.pitch_p:
            out = self.pitch_shift(out, rng.uniform(*cfg.pitch_semitones))
        return out

    def perturb(self, wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The cheap ops: time shift, gain and noise, each with its probability."""
        cfg = self.config
        out = np.asarray(wave, dtype=np.float32)
        if rng.random() < cfg.shift_p:
            max_shift = int(round(cfg.shift_max_s * self.sample_rate))
            if max_shift > 0:
                shift = int(rng.integers(1, max_shift + 1)) * int(rng.choice((-1, 1)))
                out = self.time_shift(out, shift)
        if rng.random() < cfg.gain_p:
            out = self.gain(out, rng.uniform(*cfg.gain_db))
        if rng.random() < cfg.noise_p:
            out = self.add_noise(out, rng.uniform(*cfg.noise_snr_db), rng)
        return out.astype(np.float32, copy=False)

    def time_stretch(self, wave: np.ndarray, rate: float) -> np.ndarray:
        """Phase-vocoder stretch by ``rate`` (>1 faster), center-cropped/padded back."""
        if rate == 1.0 or wave.size == 0:
            return wave
        stretched = librosa.effects.time_stretch(wave, rate=rate, **_STFT_KWARGS)
        return fix_length(stretched.astype(np.float32), wave.shape[0])

    def pitch_shift(self, wave: np.ndarray, semitones: float) -> np.ndarray:
        """Shift pitch by ``semitones`` keeping the duration."""
        if semitones == 0.0 or wave.size == 0:
            return wave
        shifted = librosa.effects.pitch_shift(
            wave, sr=self.sample_rate, n_steps=semitones, **_STFT_KWARGS
        )
        return fix_length(shifted.astype(np.float32), wave.shape[0])

    @staticmethod
    def time_shift(wave: np.ndarray, shift: int) -> np.ndarray:
        """Delay (``shift`` > 0) or advance the clip by ``shift`` samples, filling with zeros."""
        out = np.zeros_like(wave)
        if shift == 0:
            out[:] = wave
        elif abs(shift) < wave.shape[0]:
            if shift > 0:
                out[shift:] = wave[:-shift]
            else:
                out[:shift] = wave[-shift:]
        return out

    @staticmethod
    def gain(wave: np.ndarray, gain_db: float) -> np.ndarray:
        """Scale amplitude by ``gain_db`` decibels."""
        return wave * np.float32(10.0 ** (gain_db / 20.0))

    @staticmethod
    def add_noise(wave: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
        """Add white noise scaled so the clip-to-noise power ratio is exactly ``snr_db``.

        A silent clip has no reference power and is returned unchanged.
        """
        signal_power = float(np.mean(np.square(wave, dtype=np.float64))) if wave.size else 0.0
        if signal_power < _SILENCE_POWER:
            return wave
        noise = rng.standard_normal(wave.shape[0])
        noise *= np.sqrt(signal_power / 10.0 ** (snr_db / 10.0) / np.mean(noise**2))
        return (wave + noise).astype(np.float32)


class SpecAugment(nn.Module):
    """Frequency/time masking of a feature batch ``[batch, n_bins, n_frames]`` when training.

    Each example is masked with probability ``specaug_p`` using torchaudio's iid
    ``FrequencyMasking``/``TimeMasking`` with value 0 (the mean, since this runs after
    normalization). Randomness comes from ``generator`` when given, else the global RNG.
    In eval mode the module is the identity.
    """

    def __init__(self, config: AugmentConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.p = config.specaug_p
        self.generator = generator
        self.enabled = config.uses_spectrogram
        masks: list[nn.Module] = [
            torchaudio.transforms.FrequencyMasking(config.freq_mask_param, iid_masks=True)
            for _ in range(config.n_freq_masks if config.freq_mask_param > 0 else 0)
        ]
        masks += [
            torchaudio.transforms.TimeMasking(config.time_mask_param, iid_masks=True)
            for _ in range(config.n_time_masks if config.time_mask_param > 0 else 0)
        ]
        self.masks = nn.Sequential(*masks)

    def forward(
        self, features: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        if not self.training or not self.enabled or features.shape[0] == 0:
            return features
        if features.dim() != 3:
            raise DataError(
                f"SpecAugment expects [batch, n_bins, n_frames], got {tuple(features.shape)}"
            )
        generator = generator if generator is not None else self.generator
        if generator is None:
            return self._mask(features, torch.rand(features.shape[0]))
        chosen = torch.rand(features.shape[0], generator=generator)
        # torchaudio draws from the global RNG: run it on a fork seeded from ``generator``.
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        devices = [features.device] if features.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            return self._mask(features, chosen)

    def _mask(self, features: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        selected = torch.nonzero(draws < self.p).flatten()
        if selected.numel() == 0:
            return features
        selected = selected.to(features.device)
        out = features.clone()
        out[selected] = self.masks(features[selected])
        return out


def mixup(
    features: torch.Tensor,
    targets: torch.Tensor,
    alpha: float,
    generator: torch.Generator | None = None,
    weight: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Mix each example with a permuted batch-mate: ``lam * x + (1 - lam) * x[perm]``.

    ``lam ~ Beta(alpha, alpha)`` (or ``weight`` when given); the loss is ``lam *
    loss(targets_a) + (1 - lam) * loss(targets_b)``. ``alpha <= 0`` without ``weight`` returns
    the batch unchanged with ``lam = 1``.
    """
    if alpha <= 0 and weight is None:
        return features, targets, targets, 1.0
    if weight is not None:
        lam = float(weight)
    else:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    perm = torch.randperm(features.shape[0], generator=generator).to(features.device)
    mixed = lam * features + (1.0 - lam) * features[perm]
    return mixed, targets, targets[perm.to(targets.device)], lam
