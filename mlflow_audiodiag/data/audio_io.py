"""Reading and writing audio files (soundfile only; resampling with torchaudio)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as audio_functional

from mlflow_audiodiag.errors import DataError
from mlflow_audiodiag.numeric import (  # noqa: F401 - part of this module's interface
    CLIP_LEVEL,
    CLIPPED_SHARE,
    SILENCE_DBFS,
    clip_levels,
)


def read_audio(path: str | Path, target_sr: int) -> np.ndarray:
    """Return the clip at ``path`` as mono float32 samples at ``target_sr`` Hz.

    Multi-channel audio is downmixed by averaging the channels; other sample rates are
    resampled. Raises ``DataError`` for a missing, unreadable, empty, non-finite or
    digitally silent file.
    """
    if target_sr <= 0:
        raise DataError(f"target sample rate must be positive, got {target_sr}")
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"audio file {path} does not exist: fix the path or remove the clip from the dataset"
        )
    try:
        samples, source_sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError) as error:
        raise DataError(
            f"audio file {path} is not a readable audio file ({error}): re-export it as "
            "WAV/FLAC/OGG or remove it from the dataset"
        ) from error
    if samples.shape[0] == 0:
        raise DataError(
            f"audio file {path} has no samples (zero-length clip): remove it from the dataset"
        )
    if not np.isfinite(samples).all():
        bad_count = int((~np.isfinite(samples)).sum())
        raise DataError(
            f"audio file {path} contains {bad_count} NaN or infinite sample values: re-export "
            "it from the source recording or remove it from the dataset"
        )
    mono = samples.mean(axis=1, dtype=np.float32)
    if not np.any(mono):
        raise DataError(
            f"audio file {path} is all zeros (digital silence): remove it from the dataset "
            "or replace it with the intended recording"
        )
    if source_sr != target_sr:
        mono = audio_functional.resample(
            torch.from_numpy(mono), orig_freq=int(source_sr), new_freq=int(target_sr)
        ).numpy()
    return np.ascontiguousarray(mono, dtype=np.float32)


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int) -> None:
    """Write mono or ``[samples, channels]`` audio as 16-bit PCM WAV, creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.asarray(samples), int(sample_rate), subtype="PCM_16", format="WAV")
