"""Small numeric helpers shared by the data pipeline and the monitor (numpy only)."""

from __future__ import annotations

import numpy as np

SILENCE_DBFS = -60.0
"""A clip whose RMS level is below this is counted as silent."""
CLIP_LEVEL = 0.999
"""A sample at or above this magnitude is at full scale."""
CLIPPED_SHARE = 0.001
"""A clip with at least this share of full-scale samples is counted as clipped."""


def clip_levels(samples: np.ndarray) -> tuple[float, float, float]:
    """``(rms_dbfs, peak_dbfs, full_scale_share)`` of a finite mono clip in ``[-1, 1]``."""
    magnitude = np.abs(np.asarray(samples, dtype=np.float64))
    if magnitude.size == 0:
        return float("-inf"), float("-inf"), 0.0
    rms = float(np.sqrt(np.mean(magnitude**2)))
    peak = float(magnitude.max())
    return (
        20.0 * np.log10(max(rms, 1e-10)),
        20.0 * np.log10(max(peak, 1e-10)),
        float(np.mean(magnitude >= CLIP_LEVEL)),
    )


def merge_moments(
    count_a: np.ndarray | float,
    mean_a: np.ndarray,
    m2_a: np.ndarray,
    count_b: np.ndarray | float,
    mean_b: np.ndarray,
    m2_b: np.ndarray,
) -> tuple[np.ndarray | float, np.ndarray, np.ndarray]:
    """Chan et al.'s parallel combination of two ``(count, mean, M2)`` summaries, per bin.

    Counts may differ per bin (arrays) or be shared (scalars); an empty side leaves the other
    unchanged.
    """
    total = count_a + count_b
    delta = mean_b - mean_a
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(total > 0, count_b / np.maximum(total, 1), 0.0)
        cross = np.where(total > 0, delta**2 * count_a * count_b / np.maximum(total, 1), 0.0)
    return total, mean_a + delta * share, m2_a + m2_b + cross
