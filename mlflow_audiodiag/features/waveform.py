"""Fixed-length waveforms: cropping and padding."""

from __future__ import annotations

import numpy as np

from mlflow_audiodiag.errors import ConfigError, DataError


def fix_length(
    wave: np.ndarray, num_samples: int, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Return a copy of the 1-D ``wave`` with exactly ``num_samples`` samples.

    Longer clips are center-cropped, or randomly cropped when ``rng`` is given (training);
    shorter clips are zero-padded symmetrically, the extra sample (if odd) going to the end.
    """
    if num_samples <= 0:
        raise ConfigError(f"num_samples must be positive, got {num_samples}")
    if wave.ndim != 1:
        raise DataError(
            f"expected a mono 1-D waveform, got shape {tuple(wave.shape)}; "
            "downmix multi-channel audio before fixing its length"
        )
    length = wave.shape[0]
    if length >= num_samples:
        excess = length - num_samples
        start = excess // 2 if rng is None else int(rng.integers(0, excess + 1))
        return wave[start : start + num_samples].copy()
    missing = num_samples - length
    left = missing // 2
    return np.pad(wave, (left, missing - left))
