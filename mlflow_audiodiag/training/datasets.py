"""Torch datasets and loaders over a :class:`~mlflow_audiodiag.features.store.FeatureStore`."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from mlflow_audiodiag.features.augment import WaveformAugmenter
from mlflow_audiodiag.features.store import SplitFeatures


class CachedFeatureDataset(Dataset):
    """Unaugmented cached features ``[n_bins, n_frames]`` with their class index."""

    def __init__(self, split: SplitFeatures) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(np.array(self.split.features[index])), int(self.split.labels[index])


class AugmentedWaveformDataset(Dataset):
    """Cached training waveforms passed through a :class:`WaveformAugmenter`.

    The random draws for a clip depend only on ``(seed, epoch, index)``, so results do not
    change with the number of DataLoader workers. Call :meth:`set_epoch` before each epoch.
    With ``variants`` (``[clips, k, samples]``, precomputed stretch/pitch draws) a random
    variant replaces the expensive ops and only the cheap ones run per epoch.
    """

    def __init__(
        self,
        split: SplitFeatures,
        augmenter: WaveformAugmenter,
        seed: int,
        variants: np.ndarray | None = None,
    ) -> None:
        if split.waveforms is None:
            raise ValueError(f"split {split.name!r} was cached without waveforms")
        self.split = split
        self.augmenter = augmenter
        self.seed = seed
        self.variants = variants
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        if self.variants is not None:
            variant = np.array(self.variants[index, rng.integers(self.variants.shape[1])])
            wave = self.augmenter.perturb(variant, rng)
        else:
            wave = self.augmenter(np.array(self.split.waveforms[index]), rng)
        return torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)), int(
            self.split.labels[index]
        )


def class_counts(labels: np.ndarray, n_classes: int) -> np.ndarray:
    return np.bincount(labels, minlength=n_classes)


def balanced_sampler(labels: np.ndarray, n_classes: int, seed: int) -> WeightedRandomSampler:
    """Draws every class equally often in expectation (with replacement)."""
    counts = class_counts(labels, n_classes).astype(np.float64)
    weights = 1.0 / counts[labels]
    generator = torch.Generator().manual_seed(seed)
    return WeightedRandomSampler(
        torch.as_tensor(weights), num_samples=len(labels), replacement=True, generator=generator
    )


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    num_workers: int = 0,
    sampler: torch.utils.data.Sampler | None = None,
) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=num_workers,
        generator=generator,
        drop_last=False,
    )
