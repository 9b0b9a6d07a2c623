"""Reading real audio files: bad input raises DataError, good input comes back mono, resampled."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mlflow_audiodiag.data.audio_io import read_audio, write_wav
from mlflow_audiodiag.errors import DataError


def tone(frequency: float, sample_rate: int, seconds: float = 1.0, amplitude: float = 0.5):
    t = np.arange(int(sample_rate * seconds)) / sample_rate
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def dominant_frequency(samples: np.ndarray, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / sample_rate)[np.argmax(spectrum)])


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.wav"
    with pytest.raises(DataError, match="nowhere.wav.*does not exist"):
        read_audio(missing, 16000)


def test_corrupt_bytes_are_not_a_readable_audio_file(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEthis is not audio" * 4)
    with pytest.raises(DataError, match="corrupt.wav is not a readable audio file"):
        read_audio(corrupt, 16000)


def test_zero_length_clip(tmp_path: Path) -> None:
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 16000, subtype="PCM_16")
    with pytest.raises(DataError, match="empty.wav has no samples"):
        read_audio(empty, 16000)


def test_all_zero_clip_is_digital_silence(tmp_path: Path) -> None:
    silent = tmp_path / "silent.wav"
    write_wav(silent, np.zeros(1600, dtype=np.float32), 16000)
    with pytest.raises(DataError, match="silent.wav is all zeros"):
        read_audio(silent, 16000)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_non_finite_float_samples(tmp_path: Path, bad_value: float) -> None:
    samples = tone(440, 16000, 0.1)
    samples[10] = bad_value
    path = tmp_path / "float.wav"
    sf.write(path, samples, 16000, subtype="FLOAT")
    with pytest.raises(DataError, match="float.wav contains 1 NaN or infinite"):
        read_audio(path, 44100)


def test_stereo_is_downmixed_by_mean(tmp_path: Path) -> None:
    left = tone(440, 16000, 0.5, amplitude=0.6)
    right = np.full_like(left, 0.1)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    mono = read_audio(path, 16000)
    assert mono.dtype == np.float32 and mono.ndim == 1
    np.testing.assert_allclose(mono, (left + right) / 2, atol=1e-6)


@pytest.mark.parametrize("source_rate", [8000, 44100])
def test_resampling_keeps_frequency_and_level(tmp_path: Path, source_rate: int) -> None:
    path = tmp_path / f"tone_{source_rate}.wav"
    sf.write(path, tone(1000, source_rate), source_rate, subtype="FLOAT")
    resampled = read_audio(path, 16000)
    assert resampled.dtype == np.float32
    assert abs(len(resampled) - 16000) <= 1
    assert abs(dominant_frequency(resampled, 16000) - 1000) <= 2
    middle = resampled[1000:-1000]  # skip filter edge effects
    assert rms(middle) == pytest.approx(0.5 / np.sqrt(2), rel=0.02)


def test_write_wav_round_trip_creates_folders(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "clip.wav"
    samples = tone(300, 16000, 0.2)
    write_wav(path, samples, 16000)
    info = sf.info(path)
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    np.testing.assert_allclose(read_audio(path, 16000), samples, atol=1 / 2**15)
