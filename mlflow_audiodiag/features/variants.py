"""Time-stretched / pitch-shifted training clips computed once, before training.

librosa's phase-vocoder ops cost milliseconds per clip, far more than a training step spends
per clip, so applying them on the fly makes data loading the bottleneck. Instead each training
clip gets ``resampled_variants`` independent draws of :meth:`WaveformAugmenter.resample`
(each op with its own probability, so some variants are the clip unchanged), cached as a
memory-mapped ``.npy`` next to the feature cache. Each epoch picks one variant per clip at
random and applies the cheap ops (shift, gain, noise) on top.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from mlflow_audiodiag.data.locks import exclusive_lock
from mlflow_audiodiag.features.augment import WaveformAugmenter

_RESAMPLING_FIELDS = ("stretch_p", "stretch_rate", "pitch_p", "pitch_semitones")


def resampled_variants(
    waveforms: np.ndarray,
    augmenter: WaveformAugmenter,
    cache_dir: Path,
    seed: int,
    progress: bool = True,
) -> np.ndarray:
    """``[clips, variants, samples]`` memory map of resampled training clips (cached)."""
    config = augmenter.config
    n_variants = config.resampled_variants
    settings = {name: asdict(config)[name] for name in _RESAMPLING_FIELDS}
    key = hashlib.sha256(
        json.dumps([settings, n_variants, seed, augmenter.sample_rate, waveforms.shape]).encode()
    ).hexdigest()[:12]
    path = Path(cache_dir) / f"train_variants-{key}.npy"
    if not path.exists():
        with exclusive_lock(path.with_suffix(".lock")):  # one process computes, others wait
            if not path.exists():
                _compute_variants(path, waveforms, augmenter, seed, progress)
    return np.load(path, mmap_mode="r")


def _compute_variants(
    path: Path, waveforms: np.ndarray, augmenter: WaveformAugmenter, seed: int, progress: bool
) -> None:
    n_variants = augmenter.config.resampled_variants
    partial = path.with_suffix(".partial.npy")
    out = np.lib.format.open_memmap(
        partial, mode="w+", dtype=np.float32, shape=(len(waveforms), n_variants, waveforms.shape[1])
    )
    for index in tqdm(
        range(len(waveforms)), desc="Stretch/pitch variants", unit="clip", disable=not progress
    ):
        wave = np.array(waveforms[index])
        for variant in range(n_variants):
            rng = np.random.default_rng([seed, index, variant])
            out[index, variant] = augmenter.resample(wave, rng)
    out.flush()
    del out
    partial.replace(path)  # complete files only: a crash leaves no usable-looking cache
