"""Deliberate training faults (:class:`~mlflow_audiodiag.training.config.FaultConfig`), applied
to the data and the model before training; the loop applies ``skip_optimizer_step``."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from mlflow_audiodiag import schema
from mlflow_audiodiag.errors import ConfigError
from mlflow_audiodiag.features.store import FeatureStore
from mlflow_audiodiag.training.config import FaultConfig


def apply_data_faults(store: FeatureStore, faults: FaultConfig, seed: int) -> FeatureStore:
    """Training labels turned into class 0 or shuffled separately from the clips (once, as a
    label column shuffled on its own), and val/test features shifted, as configured."""
    if not (faults.labels_to_class0 or faults.eval_feature_offset or faults.shuffle_labels):
        return store
    splits = dict(store.splits)
    train = splits.get(schema.SPLIT_TRAIN)
    if faults.shuffle_labels and train is not None:
        shuffled = np.random.default_rng(seed + 1).permutation(train.labels)
        train = dataclasses.replace(train, labels=shuffled)
        splits[schema.SPLIT_TRAIN] = train
    if faults.labels_to_class0 > 0 and train is not None:
        rng = np.random.default_rng(seed)
        labels = train.labels.copy()
        labels[rng.random(len(labels)) < faults.labels_to_class0] = 0
        splits[schema.SPLIT_TRAIN] = dataclasses.replace(train, labels=labels)
    if faults.eval_feature_offset:
        for name in (schema.SPLIT_VAL, schema.SPLIT_TEST):
            if (split := splits.get(name)) is not None:
                shifted = np.asarray(split.features, dtype=np.float32) + faults.eval_feature_offset
                splits[name] = dataclasses.replace(split, features=shifted)
    return dataclasses.replace(store, splits=splits)


class Saturation(nn.Module):
    """``sigmoid(x + bias)``: a squashing step biased deep into saturation, where its gradient
    (about ``exp(-bias)``) vanishes."""

    def __init__(self, bias: float) -> None:
        super().__init__()
        self.bias = bias

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(tokens + self.bias)


def apply_model_faults(model: nn.Module, faults: FaultConfig) -> None:
    """Frozen parameters, scaled attention initialisation and saturated token embeddings."""
    if faults.embedding_saturation > 0:
        # The bundled model applies ``dropout`` to patch tokens plus positions: saturate there.
        if not isinstance(getattr(model, "dropout", None), nn.Dropout):
            raise ConfigError("embedding_saturation needs the bundled AudioTransformer")
        model.dropout = nn.Sequential(model.dropout, Saturation(faults.embedding_saturation))
    if faults.attention_init_scale != 1.0:
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, nn.MultiheadAttention) and module.in_proj_weight is not None:
                    dim = module.embed_dim
                    module.in_proj_weight[: 2 * dim].mul_(faults.attention_init_scale)
    prefixes = [p.strip() for p in faults.freeze.split(",") if p.strip()]
    if prefixes:
        names = [name for name, _ in model.named_parameters()]
        unmatched = [p for p in prefixes if not any(n.startswith(p) for n in names)]
        if unmatched:
            raise ConfigError(
                f"freeze: no parameter name starts with {', '.join(unmatched)}; "
                f"names start with: {', '.join(sorted({n.split('.')[0] for n in names}))}"
            )
        for name, param in model.named_parameters():
            if any(name.startswith(p) for p in prefixes):
                param.requires_grad_(False)
