"""Feature normalization fitted on training features only.

Statistics come from a streaming pass over training batches (:func:`fit_normalization`), are
logged with the run as ``normalization.json`` (:class:`NormalizationStats`) and are applied by
:class:`FeatureNormalizer`, which keeps them as buffers so they travel with an exported model.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch import nn

from mlflow_audiodiag.errors import ConfigError, DataError
from mlflow_audiodiag.numeric import merge_moments

NormalizationMode = Literal["none", "per_utterance", "global", "per_bin"]
NORMALIZATION_MODES: tuple[str, ...] = get_args(NormalizationMode)
FITTED_MODES: tuple[str, ...] = ("global", "per_bin")
STD_EPS = 1e-5


def _check_mode(mode: str) -> None:
    if mode not in NORMALIZATION_MODES:
        raise ConfigError(
            f"normalization mode must be one of {', '.join(NORMALIZATION_MODES)}; got {mode!r}"
        )


def _as_float64_array(batch: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(batch, torch.Tensor):
        return batch.detach().to("cpu", torch.float64).numpy()
    return np.asarray(batch, dtype=np.float64)


class RunningFeatureStats:
    """Streaming per-bin mean/variance over feature batches ``[batch, n_bins, n_frames]``.

    Batches are merged with Chan et al.'s parallel update in float64, so the full data set is
    never held in memory. Standard deviations are population values (``ddof=0``).
    """

    def __init__(self) -> None:
        self._count = 0
        self._n_clips = 0
        self._n_batches = 0
        self._mean: np.ndarray | None = None
        self._m2: np.ndarray | None = None

    def update(self, batch: torch.Tensor | np.ndarray) -> None:
        """Add one batch of features ``[batch, n_bins, n_frames]``."""
        index = self._n_batches
        values = _as_float64_array(batch)
        if values.ndim != 3:
            raise DataError(
                f"feature batch {index} has shape {values.shape}; expected "
                "[batch, n_bins, n_frames]"
            )
        n_bad = int(values.size - np.count_nonzero(np.isfinite(values)))
        if n_bad:
            raise DataError(
                f"feature batch {index} contains {n_bad} non-finite values (NaN/inf); "
                "find the clips that produce them (silent, corrupt or clipped audio) and fix "
                "or drop them before fitting normalization"
            )
        if self._mean is not None and values.shape[1] != self._mean.shape[0]:
            raise DataError(
                f"feature batch {index} has {values.shape[1]} bins but earlier batches had "
                f"{self._mean.shape[0]}; all batches must come from the same FeatureConfig"
            )
        self._n_batches += 1
        batch_count = values.shape[0] * values.shape[2]
        if batch_count == 0:
            return
        batch_mean = values.mean(axis=(0, 2))
        batch_m2 = ((values - batch_mean[None, :, None]) ** 2).sum(axis=(0, 2))
        self._n_clips += values.shape[0]
        if self._mean is None or self._m2 is None or self._count == 0:
            self._count, self._mean, self._m2 = batch_count, batch_mean, batch_m2
            return
        self._count, self._mean, self._m2 = merge_moments(
            self._count, self._mean, self._m2, batch_count, batch_mean, batch_m2
        )

    def _require_data(self) -> tuple[np.ndarray, np.ndarray]:
        if self._mean is None or self._m2 is None or self._count == 0:
            raise DataError(
                "no feature values were seen; the training split is empty or every batch "
                "was empty - check the manifest and split settings"
            )
        return self._mean, self._m2

    @property
    def count(self) -> int:
        """Values seen per bin (clips x frames)."""
        return self._count

    @property
    def n_clips(self) -> int:
        """Clips seen."""
        return self._n_clips

    @property
    def per_bin_mean(self) -> np.ndarray:
        """Mean of each bin, shape ``[n_bins]``."""
        mean, _ = self._require_data()
        return mean.copy()

    @property
    def per_bin_std(self) -> np.ndarray:
        """Population standard deviation of each bin, shape ``[n_bins]``."""
        _, m2 = self._require_data()
        return np.sqrt(np.maximum(m2 / self._count, 0.0))

    @property
    def global_mean(self) -> float:
        """Mean over all bins and frames."""
        mean, _ = self._require_data()
        return float(mean.mean())  # every bin has the same count

    @property
    def global_std(self) -> float:
        """Population standard deviation over all bins and frames."""
        mean, m2 = self._require_data()
        between = ((mean - mean.mean()) ** 2).sum() * self._count
        total_m2 = m2.sum() + between
        return float(np.sqrt(max(total_m2 / (self._count * mean.shape[0]), 0.0)))


@dataclass(frozen=True)
class NormalizationStats:
    """Fitted normalization: one value (global), one per bin (per_bin) or none."""

    mode: NormalizationMode
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    n_clips: int = 0
    n_frames: int = 0

    def __post_init__(self) -> None:
        _check_mode(self.mode)
        object.__setattr__(self, "mean", [float(v) for v in self.mean])
        object.__setattr__(self, "std", [float(v) for v in self.std])
        if len(self.mean) != len(self.std):
            raise ConfigError(
                f"normalization mean has {len(self.mean)} values but std has {len(self.std)}; "
                "regenerate normalization.json by refitting on the training split"
            )
        expected = {"none": 0, "per_utterance": 0, "global": 1}.get(self.mode)
        if expected is not None and len(self.mean) != expected:
            raise ConfigError(
                f"mode {self.mode!r} stores {expected} mean/std values, got {len(self.mean)}"
            )
        if self.mode == "per_bin" and not self.mean:
            raise ConfigError("mode 'per_bin' needs one mean/std value per bin, got none")
        if any(s < 0 or not np.isfinite(s) for s in self.std) or not all(np.isfinite(self.mean)):
            raise ConfigError("normalization mean/std must be finite and std non-negative")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (the content of ``normalization.json``)."""
        return {
            "mode": self.mode,
            "mean": list(self.mean),
            "std": list(self.std),
            "n_clips": self.n_clips,
            "n_frames": self.n_frames,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NormalizationStats:
        """Inverse of :meth:`to_dict`."""
        if "mode" not in data:
            raise ConfigError(f"normalization stats need a 'mode' key; got keys {sorted(data)}")
        return cls(
            mode=data["mode"],
            mean=list(data.get("mean", [])),
            std=list(data.get("std", [])),
            n_clips=int(data.get("n_clips", 0)),
            n_frames=int(data.get("n_frames", 0)),
        )


def fit_normalization(
    batches: Iterable[torch.Tensor | np.ndarray], mode: NormalizationMode
) -> NormalizationStats:
    """Fit ``mode`` on TRAINING feature batches ``[batch, n_bins, n_frames]`` only.

    ``none`` and ``per_utterance`` fit nothing and do not consume ``batches``.
    """
    _check_mode(mode)
    if mode not in FITTED_MODES:
        return NormalizationStats(mode=mode)
    stats = RunningFeatureStats()
    for batch in batches:
        stats.update(batch)
    if mode == "global":
        mean, std = [stats.global_mean], [stats.global_std]
    else:
        mean, std = stats.per_bin_mean.tolist(), stats.per_bin_std.tolist()
    return NormalizationStats(
        mode=mode, mean=mean, std=std, n_clips=stats.n_clips, n_frames=stats.count
    )


class FeatureNormalizer(nn.Module):
    """Applies fitted :class:`NormalizationStats` to features ``[batch, n_bins, n_frames]``.

    ``mean``/``std`` are buffers, so they are part of the ``state_dict`` and of an exported
    model. Division is by ``std + 1e-5``.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, stats: NormalizationStats) -> None:
        super().__init__()
        self.mode = stats.mode
        self.register_buffer("mean", torch.tensor(stats.mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(stats.std, dtype=torch.float32))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.mode == "none":
            return features
        if self.mode == "per_utterance":
            dims = (-2, -1)
            mean = features.mean(dim=dims, keepdim=True)
            std = features.std(dim=dims, keepdim=True, unbiased=False)
            return (features - mean) / (std + STD_EPS)
        if self.mode == "global":
            return (features - self.mean) / (self.std + STD_EPS)
        if features.shape[-2] != self.mean.shape[0]:
            raise DataError(
                f"features have {features.shape[-2]} bins but the per_bin normalization was "
                f"fitted on {self.mean.shape[0]}; use the FeatureConfig the model was trained with"
            )
        return (features - self.mean[:, None]) / (self.std[:, None] + STD_EPS)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, n_values={self.mean.numel()}"
