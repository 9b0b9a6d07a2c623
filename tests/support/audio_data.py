"""Small real-audio datasets for tests: the embedded corpus's WAV files as standardized log-mel
features, split as generated."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from mlflow_audiodiag.data.sources import load_clip_table
from mlflow_audiodiag.data.synthetic import SyntheticConfig, generate_dataset
from mlflow_audiodiag.features.config import FeatureConfig
from mlflow_audiodiag.features.store import build_feature_store


@dataclass(frozen=True)
class AudioSplits:
    """Standardized log-mel features ``[clips, mels, frames]`` and labels per split."""

    classes: list[str]
    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]

    def loaders(self, batch_size: int = 32) -> tuple[DataLoader, DataLoader]:
        generator = torch.Generator().manual_seed(0)
        return (
            DataLoader(TensorDataset(*self.train), batch_size, shuffle=True, generator=generator),
            DataLoader(TensorDataset(*self.val), batch_size * 2),
        )

    def hf_datasets(self) -> tuple[Dataset, Dataset]:
        """``{"input_values": [frames, mels], "labels": int}`` items, as HF models take them."""
        return _Items(*self.train), _Items(*self.val)


class _Items(Dataset):
    def __init__(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        self.features, self.labels = features.transpose(1, 2).contiguous(), labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_values": self.features[index], "labels": self.labels[index]}


def embedded_audio(cache_root: Path, clips_per_class: int = 30, n_mels: int = 32) -> AudioSplits:
    """The embedded corpus (8 classes of real WAV files) as standardized log-mel features."""
    manifest = generate_dataset(
        None, SyntheticConfig(clips_per_class=clips_per_class, seed=0), progress=False
    )
    features = FeatureConfig(n_mels=n_mels)
    store = build_feature_store(load_clip_table(manifest), features, cache_root, progress=False)
    train, val = store.split("train"), store.split("val")
    x_train = np.asarray(train.features, dtype=np.float32)
    mean = x_train.mean(axis=(0, 2), keepdims=True)
    std = x_train.std(axis=(0, 2), keepdims=True) + 1e-6

    def tensors(split) -> tuple[torch.Tensor, torch.Tensor]:
        x = (np.asarray(split.features, dtype=np.float32) - mean) / std
        return torch.from_numpy(x), torch.from_numpy(np.asarray(split.labels, dtype=np.int64))

    return AudioSplits(list(store.classes), tensors(train), tensors(val))
