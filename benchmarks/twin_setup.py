"""Shared by the monitor-overhead benchmarks: the default training setup and two identical
trainers (one to stay plain, one to instrument) on the embedded dataset."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from mlflow_audiodiag.data.synthetic import default_cache_root
from mlflow_audiodiag.features.extractor import FeatureExtractor
from mlflow_audiodiag.features.normalization import (
    FeatureNormalizer,
    NormalizationStats,
    fit_normalization,
)
from mlflow_audiodiag.features.store import FeatureStore, SplitFeatures, build_feature_store
from mlflow_audiodiag.model.transformer import AudioTransformer
from mlflow_audiodiag.monitoring.distributed import DistContext
from mlflow_audiodiag.training.config import TrainConfig
from mlflow_audiodiag.training.dataset_source import resolve_clip_table
from mlflow_audiodiag.training.loop import Trainer


@dataclass
class DefaultSetup:
    config: TrainConfig
    store: FeatureStore
    train: SplitFeatures
    raw: torch.Tensor  # training features before normalization
    stats: NormalizationStats
    n_classes: int
    model: AudioTransformer  # seeded initial weights shared by both copies


def default_setup() -> DefaultSetup:
    config = TrainConfig.from_flat({"progress": False})
    table, _ = resolve_clip_table(config.data, config.features, progress=False)
    store = build_feature_store(
        table,
        config.features,
        default_cache_root(),
        waveform_splits=("train",) if config.augment.uses_waveform else (),
        progress=False,
    )
    train = store.split("train")
    raw = torch.from_numpy(np.array(train.features))
    stats = fit_normalization([raw], config.data.normalization)
    n_classes = len(store.classes)
    torch.manual_seed(0)
    features = config.features
    model = AudioTransformer(features.n_bins, features.n_frames, n_classes, config.model)
    return DefaultSetup(config, store, train, raw, stats, n_classes, model)


def twin_trainers(setup: DefaultSetup, ctx: DistContext | None = None) -> list[Trainer]:
    """Two trainers with identical initial weights, as ``mlflow-audiodiag train`` builds them."""
    return [
        Trainer(
            copy.deepcopy(setup.model),
            FeatureExtractor(setup.config.features),
            FeatureNormalizer(setup.stats),
            setup.config,
            setup.n_classes,
            dist_ctx=ctx,
        )
        for _ in range(2)
    ]
