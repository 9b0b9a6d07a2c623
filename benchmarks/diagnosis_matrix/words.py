"""The spoken-words dataset: synthesised words as 16-bit WAV files plus ``manifest.csv``.

Each clip is one word of :data:`~.speech.WORDS` said by one of ``n_speakers`` voices at a
random speaking rate and pitch contour, placed at a random onset in a 1 s clip, with room
reverb, background noise (white, pink, brown or hum) at an SNR drawn from ``snr_db`` and a
random loudness. Generation is deterministic by ``seed``, cached by settings under
``$AUDIODIAG_CACHE_DIR`` and published by renaming a finished folder.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy import signal

from benchmarks.diagnosis_matrix.speech import (
    SAMPLE_RATE,
    WORDS,
    Speaker,
    random_speaker,
    synthesize_word,
)

GENERATOR_VERSION = 1
MANIFEST = "manifest.csv"
SETTINGS = "dataset.json"


@dataclass(frozen=True)
class WordsConfig:
    """Size, difficulty, balance and split of the spoken-words dataset."""

    n_words: int = 10
    clips_per_word: int = 64
    snr_db: tuple[float, float] = (5.0, 25.0)
    imbalance_ratio: float = 1.0
    n_speakers: int = 40
    reverb_s: tuple[float, float] = (0.05, 0.4)
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0

    def __post_init__(self) -> None:
        if not 2 <= self.n_words <= len(WORDS):
            raise ValueError(f"n_words must be in 2..{len(WORDS)}, got {self.n_words}")
        if self.imbalance_ratio < 1:
            raise ValueError("imbalance_ratio must be >= 1")
        object.__setattr__(self, "snr_db", tuple(float(v) for v in self.snr_db))
        object.__setattr__(self, "reverb_s", tuple(float(v) for v in self.reverb_s))

    @property
    def words(self) -> list[str]:
        return list(WORDS)[: self.n_words]

    def counts(self) -> list[int]:
        """Clips per word: ``clips_per_word`` falling geometrically to ``/imbalance_ratio``."""
        steps = max(self.n_words - 1, 1)
        return [
            max(4, round(self.clips_per_word * self.imbalance_ratio ** (-i / steps)))
            for i in range(self.n_words)
        ]

    def to_dict(self) -> dict:
        return {"generator_version": GENERATOR_VERSION, **asdict(self)}

    def short_hash(self) -> str:
        encoded = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(encoded).hexdigest()[:10]


def cache_root() -> Path:
    """``$AUDIODIAG_CACHE_DIR``, else ``~/.cache/mlflow-audiodiag``."""
    explicit = os.environ.get("AUDIODIAG_CACHE_DIR")
    return Path(explicit).expanduser() if explicit else Path.home() / ".cache/mlflow-audiodiag"


def _room(n: int, rt60: float, rng: np.random.Generator) -> np.ndarray:
    """A noise-tail impulse response decaying 60 dB in ``rt60`` seconds, direct path first."""
    length = max(int(rt60 * SAMPLE_RATE), 16)
    t = np.arange(length) / SAMPLE_RATE
    tail = rng.standard_normal(length) * 10 ** (-3 * t / rt60)
    tail[: int(0.003 * SAMPLE_RATE)] = 0.0  # first reflections arrive after the direct sound
    response = np.concatenate([[1.0], 0.3 * tail / np.sqrt(np.sum(tail**2) + 1e-12)])
    return response[: n // 2]


def _background(n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-power white, pink or brown noise, or mains hum with harmonics over white noise."""
    kind = rng.integers(4)
    white = rng.standard_normal(n)
    if kind == 1:  # pink: -3 dB/octave
        spectrum = np.fft.rfft(white)
        scale = 1.0 / np.sqrt(np.maximum(np.arange(len(spectrum)), 1))
        noise = np.fft.irfft(spectrum * scale, n)
    elif kind == 2:  # brown: -6 dB/octave, high-passed at 40 Hz
        noise = signal.lfilter([1.0], [1.0, -0.995], white)
        highpass = signal.butter(1, 40, "highpass", fs=SAMPLE_RATE, output="sos")
        noise = signal.sosfilt(highpass, noise)
    elif kind == 3:
        t = np.arange(n) / SAMPLE_RATE
        base = rng.choice([50.0, 60.0])
        noise = sum(np.sin(2 * np.pi * base * h * t + rng.uniform(0, 6.3)) / h for h in (1, 2, 3))
        noise = noise + 0.3 * white
    else:
        noise = white
    return noise / np.sqrt(np.mean(noise**2))


def synthesize_clip(
    word: str, speaker: Speaker, config: WordsConfig, rng: np.random.Generator
) -> np.ndarray:
    """One float32 clip of 1 s: the word with reverb, background noise and random level."""
    n_clip = SAMPLE_RATE
    rate = rng.uniform(0.8, 1.25)
    speech = synthesize_word(WORDS[word], speaker, rate, rng)
    if len(speech) > int(0.9 * n_clip):  # a slow speaker: keep the word inside the clip
        speech = signal.resample(speech, int(0.9 * n_clip))
    speech = signal.fftconvolve(speech, _room(n_clip, rng.uniform(*config.reverb_s), rng))
    speech = speech[:n_clip]
    onset = int(rng.integers(0, n_clip - min(len(speech), n_clip) + 1))
    clip = np.zeros(n_clip)
    clip[onset : onset + len(speech)] = speech
    active = len(speech) / n_clip
    snr_db = rng.uniform(*config.snr_db)
    clip += _background(n_clip, rng) * np.sqrt(active * np.mean(speech**2) * 10 ** (-snr_db / 10))
    peak = 10 ** (rng.uniform(-24.0, -1.0) / 20)
    return (clip * peak / np.max(np.abs(clip))).astype(np.float32)


def _splits(counts: list[int], config: WordsConfig) -> list[list[str]]:
    """Per word, a shuffled list of split names with at least one val and one test clip."""
    rng = np.random.default_rng([config.seed, 7])
    out = []
    for count in counts:
        n_val = max(1, round(count * config.val_fraction))
        n_test = max(1, round(count * config.test_fraction))
        names = ["val"] * n_val + ["test"] * n_test + ["train"] * (count - n_val - n_test)
        out.append(list(rng.permutation(names)))
    return out


def generate_words(config: WordsConfig | None = None, root: Path | None = None) -> Path:
    """Writes the dataset (once per settings) and returns its ``manifest.csv``."""
    config = config or WordsConfig()
    folder = (root or cache_root()) / f"words-{config.short_hash()}"
    if (folder / MANIFEST).is_file():
        return folder / MANIFEST
    partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    speakers = [
        random_speaker(np.random.default_rng([config.seed, 1, i])) for i in range(config.n_speakers)
    ]
    rows = []
    for index, (word, count, splits) in enumerate(
        zip(config.words, config.counts(), _splits(config.counts(), config), strict=True)
    ):
        for clip_index in range(count):
            rng = np.random.default_rng([config.seed, 2, index, clip_index])
            speaker = speakers[int(rng.integers(len(speakers)))]
            relative = f"clips/{word}/{word}_{clip_index:04d}.wav"
            (partial / relative).parent.mkdir(parents=True, exist_ok=True)
            sf.write(
                partial / relative,
                synthesize_clip(word, speaker, config, rng),
                SAMPLE_RATE,
                subtype="PCM_16",
            )
            rows.append((relative, word, splits[clip_index]))
    with (partial / MANIFEST).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split"])
        writer.writerows(rows)
    (partial / SETTINGS).write_text(json.dumps(config.to_dict(), indent=2), encoding="utf-8")
    try:
        partial.rename(folder)
    except OSError:  # another process published the same dataset first
        shutil.rmtree(partial, ignore_errors=True)
    return folder / MANIFEST
