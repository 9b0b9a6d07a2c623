"""The embedded default dataset: synthetic clips whose classes need time-frequency structure.

Classes come in pairs with the same average spectrum that differ only in temporal order
(chirps and tone pairs, generated as exact time reversals) or in modulation rate (AM, FM).
A classifier on clip-averaged spectra can tell the pairs apart but not the members of a
pair; a model over frames can. Clips are written as 16-bit WAV files with a
``manifest.csv`` (relative paths) and cached by configuration.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mlflow_audiodiag.cache import default_cache_root
from mlflow_audiodiag.data.audio_io import write_wav
from mlflow_audiodiag.data.locks import exclusive_lock
from mlflow_audiodiag.data.splits import stratified_split
from mlflow_audiodiag.errors import ConfigError

GENERATOR_VERSION = 1
CLASS_NAMES = (
    "chirp_up",
    "chirp_down",
    "tones_low_high",
    "tones_high_low",
    "am_slow",
    "am_fast",
    "fm_slow",
    "fm_fast",
)
MANIFEST_NAME = "manifest.csv"
CONFIG_NAME = "dataset.json"
CLIPS_DIR = "clips"
LOCK_NAME = ".generation.lock"
_STAGING_PREFIX = ".clips-partial-"

# Nuisance variation drawn per clip.
_EVENT_FRACTION_RANGE = (0.55, 0.8)  # event duration as a fraction of the clip
_MAX_PITCH_SEMITONES = 1.5  # every frequency times 2 ** (u / 12), |u| <= this
_TEMPO_RANGE = (0.85, 1.15)  # factor on modulation rates
_PEAK_DBFS_RANGE = (-18.0, 0.0)  # peak level of the finished clip
_FADE_SECONDS = 0.03
# Class-defining modulation and the fast "flutter" shared by both members of a pair.
_AM_DEPTH_RANGE = (0.5, 0.9)
_FM_DEVIATION_HZ_RANGE = (80.0, 160.0)
_FLUTTER_HZ_RANGE = (30.0, 45.0)
_AM_FLUTTER_DB = 4.0
_FM_FLUTTER_HZ = 100.0

Synthesizer = Callable[[int, int, float, float, np.random.Generator], np.ndarray]
"""``(n_samples, sample_rate, pitch factor, tempo factor, rng) -> event samples``."""


@dataclass(frozen=True)
class SyntheticConfig:
    """Size, balance, noise and split settings of the synthetic dataset."""

    n_classes: int = 8
    clips_per_class: int = 150
    duration_s: float = 1.0
    sample_rate: int = 16000
    snr_db: tuple[float, float] = (5.0, 20.0)
    imbalance_ratio: float = 1.0
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "snr_db", tuple(float(value) for value in self.snr_db))
        if not 2 <= self.n_classes <= len(CLASS_NAMES):
            raise ConfigError(f"n_classes must be in 2..{len(CLASS_NAMES)}, got {self.n_classes}")
        if not 0.25 <= self.duration_s <= 30.0:
            raise ConfigError(f"duration_s must be in [0.25, 30] seconds, got {self.duration_s}")
        if self.sample_rate < 8000:
            raise ConfigError(f"sample_rate must be at least 8000 Hz, got {self.sample_rate}")
        if len(self.snr_db) != 2 or self.snr_db[0] > self.snr_db[1]:
            raise ConfigError(f"snr_db must be a (low, high) pair, low <= high, got {self.snr_db}")
        if self.imbalance_ratio < 1.0:
            raise ConfigError(f"imbalance_ratio must be >= 1, got {self.imbalance_ratio}")
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 < value < 0.5:
                raise ConfigError(f"{name} must be in (0, 0.5), got {value}")
        smallest = min(self.class_counts())
        if smallest < 3:
            raise ConfigError(
                f"the smallest class would get {smallest} clip(s) (clips_per_class="
                f"{self.clips_per_class}, imbalance_ratio={self.imbalance_ratio}); every class "
                "needs at least 3 to appear in train, val and test: raise clips_per_class or "
                "lower imbalance_ratio"
            )

    @property
    def class_names(self) -> tuple[str, ...]:
        """Labels of the generated classes, in class-index order."""
        return CLASS_NAMES[: self.n_classes]

    def class_counts(self) -> list[int]:
        """Clips per class: ``clips_per_class`` for class 0 down to ``/imbalance_ratio``."""
        return [
            round(self.clips_per_class * self.imbalance_ratio ** (-index / (self.n_classes - 1)))
            for index in range(self.n_classes)
        ]

    def to_dict(self) -> dict:
        """JSON-ready settings, including the generator version."""
        settings = asdict(self)
        settings["snr_db"] = list(self.snr_db)
        return {"generator_version": GENERATOR_VERSION, **settings}

    def short_hash(self) -> str:
        """Ten hex digits identifying these settings (and the generator version)."""
        encoded = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(encoded).hexdigest()[:10]


# --- signal synthesis -------------------------------------------------------------------


def _event_envelope(n_samples: int, sample_rate: int) -> np.ndarray:
    """Symmetric raised-cosine fade in and out, so a time-reversed event has the same spectrum."""
    fade = min(int(_FADE_SECONDS * sample_rate), n_samples // 2)
    envelope = np.ones(n_samples)
    if fade > 0:
        ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(fade) + 0.5) / fade)
        envelope[:fade] = ramp
        envelope[-fade:] = ramp[::-1]
    return envelope


def _harmonic_sum(
    phase: np.ndarray, frequency: np.ndarray | float, weights: tuple[float, ...], nyquist: float
) -> np.ndarray:
    """Sum of harmonics ``k * phase`` weighted by ``weights``, skipping those above Nyquist."""
    signal = np.zeros_like(phase)
    top_frequency = np.max(frequency)
    for order, weight in enumerate(weights, start=1):
        if order * top_frequency < 0.9 * nyquist:
            signal += weight * np.sin(order * phase)
    return signal


def _phase(frequency: np.ndarray, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 2 * np.pi) + 2 * np.pi * np.cumsum(frequency) / sample_rate


def _chirp(n: int, sr: int, pitch: float, tempo: float, rng: np.random.Generator) -> np.ndarray:
    """Logarithmic sweep from 400 to 2400 Hz (times ``pitch``) with a second harmonic."""
    low, high = 400.0 * pitch, 2400.0 * pitch
    position = np.arange(n) / n
    frequency = low * (high / low) ** position
    return _harmonic_sum(_phase(frequency, sr, rng), frequency, (1.0, 0.35), sr / 2)


def _tone_pair(n: int, sr: int, pitch: float, tempo: float, rng: np.random.Generator) -> np.ndarray:
    """A 700 Hz then a 1400 Hz harmonic tone (times ``pitch``), split near the middle."""
    split = int(n * rng.uniform(0.45, 0.55))  # symmetric, so reversal keeps its distribution
    pieces = []
    for base, length in ((700.0 * pitch, split), (1400.0 * pitch, n - split)):
        frequency = np.full(length, base)
        tone = _harmonic_sum(_phase(frequency, sr, rng), base, (1.0, 0.5, 0.3), sr / 2)
        pieces.append(tone * _event_envelope(length, sr))
    return np.concatenate(pieces)


def _flutter(n: int, sr: int, max_depth: float, rng: np.random.Generator) -> np.ndarray:
    """A fast sinusoidal wobble (30-45 Hz) of random depth in ``[0, max_depth]``.

    Both members of the AM and FM pairs get it. It mostly blurs each analysis frame, so the
    slight extra blur of the faster class-defining modulation no longer shows in the
    clip-average spectrum.
    """
    t = np.arange(n) / sr
    rate_hz = rng.uniform(*_FLUTTER_HZ_RANGE)
    return rng.uniform(0.0, max_depth) * np.sin(2 * np.pi * rate_hz * t + rng.uniform(0, 2 * np.pi))


def _amplitude_modulated(rate_hz: float) -> Synthesizer:
    """Harmonic tone whose amplitude follows ``1 + depth * cos(2 pi rate t)``."""

    def synthesize(
        n: int, sr: int, pitch: float, tempo: float, rng: np.random.Generator
    ) -> np.ndarray:
        carrier_hz = 550.0 * pitch
        phase = _phase(np.full(n, carrier_hz), sr, rng)
        carrier = _harmonic_sum(phase, carrier_hz, (1.0, 0.6, 0.4), sr / 2)
        t = np.arange(n) / sr
        depth = rng.uniform(*_AM_DEPTH_RANGE)
        cycle = np.cos(2 * np.pi * rate_hz * tempo * t + rng.uniform(0, 2 * np.pi))
        flutter_db = _flutter(n, sr, _AM_FLUTTER_DB, rng)
        return carrier * (1.0 + depth * cycle) * 10.0 ** (flutter_db / 20.0)

    return synthesize


def _frequency_modulated(rate_hz: float) -> Synthesizer:
    """Pure tone around 1 kHz with a sinusoidal vibrato of random extent."""

    def synthesize(
        n: int, sr: int, pitch: float, tempo: float, rng: np.random.Generator
    ) -> np.ndarray:
        t = np.arange(n) / sr
        deviation_hz = rng.uniform(*_FM_DEVIATION_HZ_RANGE)
        vibrato = np.sin(2 * np.pi * rate_hz * tempo * t + rng.uniform(0, 2 * np.pi))
        flutter_hz = _flutter(n, sr, _FM_FLUTTER_HZ, rng)
        frequency = pitch * (1000.0 + deviation_hz * vibrato + flutter_hz)
        return _harmonic_sum(_phase(frequency, sr, rng), frequency, (1.0,), sr / 2)

    return synthesize


# Each entry: (synthesizer, reverse in time). Pair members share the synthesizer or its reversal.
_SYNTHESIZERS: dict[str, tuple[Synthesizer, bool]] = {
    "chirp_up": (_chirp, False),
    "chirp_down": (_chirp, True),
    "tones_low_high": (_tone_pair, False),
    "tones_high_low": (_tone_pair, True),
    "am_slow": (_amplitude_modulated(4.0), False),
    "am_fast": (_amplitude_modulated(13.0), False),
    "fm_slow": (_frequency_modulated(3.0), False),
    "fm_fast": (_frequency_modulated(10.0), False),
}


def _noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-power white or pink noise (pink shaped as 1/sqrt(f) in the frequency domain)."""
    white = rng.standard_normal(n)
    if rng.random() < 0.5:
        spectrum = np.fft.rfft(white)
        scale = np.ones(len(spectrum))
        scale[1:] = 1.0 / np.sqrt(np.arange(1, len(spectrum)))
        scale[0] = 0.0
        white = np.fft.irfft(spectrum * scale, n)
    return white / np.sqrt(np.mean(white**2))


def synthesize_clip(
    class_name: str, config: SyntheticConfig, rng: np.random.Generator
) -> np.ndarray:
    """One float32 clip of ``class_name`` with random gain, timing, pitch, tempo and noise.

    The noise power is set from the clip-average signal power and an SNR drawn from
    ``config.snr_db``; the clip is then scaled to a random peak level below 0 dBFS.
    """
    if class_name not in _SYNTHESIZERS:
        raise ConfigError(f"unknown synthetic class {class_name!r}; known: {list(CLASS_NAMES)}")
    synthesize, reverse = _SYNTHESIZERS[class_name]
    sr = config.sample_rate
    n_clip = int(round(config.duration_s * sr))
    n_event = int(n_clip * rng.uniform(*_EVENT_FRACTION_RANGE))
    pitch = 2.0 ** (rng.uniform(-_MAX_PITCH_SEMITONES, _MAX_PITCH_SEMITONES) / 12.0)
    tempo = rng.uniform(*_TEMPO_RANGE)

    event = synthesize(n_event, sr, pitch, tempo, rng) * _event_envelope(n_event, sr)
    if reverse:
        event = event[::-1]
    onset = int(rng.integers(0, n_clip - n_event + 1))
    clip = np.zeros(n_clip)
    clip[onset : onset + n_event] = event / np.sqrt(np.mean(event**2))

    snr_db = rng.uniform(*config.snr_db)
    event_power_over_clip = n_event / n_clip
    clip += _noise(n_clip, rng) * math.sqrt(event_power_over_clip * 10.0 ** (-snr_db / 10.0))
    peak = 10.0 ** (rng.uniform(*_PEAK_DBFS_RANGE) / 20.0) * 0.99
    return (clip * peak / np.max(np.abs(clip))).astype(np.float32)


# --- dataset on disk --------------------------------------------------------------------


def _is_complete(out_dir: Path, config: SyntheticConfig) -> bool:
    manifest, settings = out_dir / MANIFEST_NAME, out_dir / CONFIG_NAME
    if not (manifest.is_file() and settings.is_file()):
        return False
    try:
        return json.loads(settings.read_text(encoding="utf-8")) == config.to_dict()
    except (OSError, json.JSONDecodeError):
        return False


def _write_manifest(out_dir: Path, rows: list[tuple[str, str, str]]) -> Path:
    """Write ``manifest.csv`` atomically (through a temporary file)."""
    partial = out_dir / (MANIFEST_NAME + ".partial")
    with partial.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split"])
        writer.writerows(rows)
    manifest_path = out_dir / MANIFEST_NAME
    os.replace(partial, manifest_path)
    return manifest_path


def generate_dataset(
    out_dir: Path | None = None, config: SyntheticConfig | None = None, progress: bool = True
) -> Path:
    """Write the synthetic dataset (WAV clips + ``manifest.csv``) and return the manifest path.

    ``out_dir`` defaults to ``default_cache_root()/synthetic-<config hash>``. An existing
    dataset with the same settings (``dataset.json``) is reused; otherwise the ``clips``
    folder and manifest are replaced. Processes generating the same folder take turns (a lock
    file): the first generates, the others wait and reuse its result. Clips are written to a
    staging folder that replaces ``clips`` in one rename, and the manifest is written last, so
    an interrupted generation is never reused and no reader sees a folder half written.
    """
    config = config or SyntheticConfig()
    if out_dir is None:
        out_dir = default_cache_root() / f"synthetic-{config.short_hash()}"
    out_dir = Path(out_dir)
    if _is_complete(out_dir, config):
        return out_dir / MANIFEST_NAME
    out_dir.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(out_dir / LOCK_NAME):
        if _is_complete(out_dir, config):  # generated by another process while we waited
            return out_dir / MANIFEST_NAME
        return _generate(out_dir, config, progress)


def _generate(out_dir: Path, config: SyntheticConfig, progress: bool) -> Path:
    """Writes the dataset into ``out_dir``; the caller holds the generation lock."""
    (out_dir / MANIFEST_NAME).unlink(missing_ok=True)
    for leftover in out_dir.glob(f"{_STAGING_PREFIX}*"):  # from an interrupted generation
        shutil.rmtree(leftover, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=out_dir))
    retired = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=out_dir))
    try:
        jobs = [
            (class_index, class_name, clip_index)
            for class_index, (class_name, count) in enumerate(
                zip(config.class_names, config.class_counts(), strict=True)
            )
            for clip_index in range(count)
        ]
        relative_paths: list[str] = []
        for class_index, class_name, clip_index in tqdm(
            jobs, desc="Synthesizing clips", unit="clip", disable=not progress
        ):
            rng = np.random.default_rng([config.seed, class_index, clip_index])
            name = f"{class_name}/{class_name}_{clip_index:05d}.wav"
            write_wav(staging / name, synthesize_clip(class_name, config, rng), config.sample_rate)
            relative_paths.append(f"{CLIPS_DIR}/{name}")
        clips = out_dir / CLIPS_DIR
        if clips.exists():
            os.replace(clips, retired / CLIPS_DIR)
        os.replace(staging, clips)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(retired, ignore_errors=True)

    labels = [class_name for _, class_name, _ in jobs]
    splits = stratified_split(labels, config.val_fraction, config.test_fraction, config.seed)
    (out_dir / CONFIG_NAME).write_text(json.dumps(config.to_dict(), indent=2), encoding="utf-8")
    return _write_manifest(out_dir, list(zip(relative_paths, labels, splits, strict=True)))
