"""Resolves a :class:`DataConfig` to a clip table: the user's audio or the embedded corpus."""

from __future__ import annotations

import pandas as pd

from mlflow_audiodiag.data.sources import load_clip_table
from mlflow_audiodiag.data.synthetic import SyntheticConfig, generate_dataset
from mlflow_audiodiag.features.config import FeatureConfig
from mlflow_audiodiag.training.config import DataConfig


def synthetic_config(data: DataConfig, features: FeatureConfig) -> SyntheticConfig:
    """The embedded corpus matching the run's sample rate and clip length."""
    return SyntheticConfig(
        n_classes=data.synthetic_classes,
        clips_per_class=data.synthetic_clips_per_class,
        duration_s=features.clip_seconds,
        sample_rate=features.sample_rate,
        snr_db=tuple(data.synthetic_snr_db),
        imbalance_ratio=data.synthetic_imbalance_ratio,
        val_fraction=data.val_fraction,
        test_fraction=data.test_fraction,
        seed=data.synthetic_seed,
    )


def resolve_clip_table(
    data: DataConfig, features: FeatureConfig, progress: bool = True
) -> tuple[pd.DataFrame, str]:
    """Returns the clip table and a human-readable description of where it came from."""
    if data.source:
        table = load_clip_table(
            data.source,
            val_fraction=data.val_fraction,
            test_fraction=data.test_fraction,
            seed=data.split_seed,
        )
        return table, data.source
    manifest = generate_dataset(None, synthetic_config(data, features), progress=progress)
    return load_clip_table(manifest), f"synthetic:{manifest.parent}"
