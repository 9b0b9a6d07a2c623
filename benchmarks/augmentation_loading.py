"""Is data loading with augmentation a bottleneck? Measured side by side in one process.

For one epoch of the default embedded dataset it times:
  * the training compute (forward, backward, optimizer step) on cached features;
  * producing the same batches with the default waveform augmentation (noise, gain, shift)
    plus feature extraction, in the main process and with DataLoader workers;
  * the same with time-stretch and pitch-shift always on (the expensive librosa ops), applied
    on the fly and, as the training does by default, drawn from variants precomputed once.
It prints each loading time as a ratio to the compute time: below 1.0 the model, not the data,
sets the pace (with workers, loading overlaps compute).

    python benchmarks/augmentation_loading.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from mlflow_audiodiag.data.synthetic import default_cache_root
from mlflow_audiodiag.features.augment import AugmentConfig, WaveformAugmenter
from mlflow_audiodiag.features.extractor import FeatureExtractor
from mlflow_audiodiag.features.store import build_feature_store
from mlflow_audiodiag.features.variants import resampled_variants
from mlflow_audiodiag.model.transformer import AudioTransformer
from mlflow_audiodiag.training.config import TrainConfig
from mlflow_audiodiag.training.dataset_source import resolve_clip_table
from mlflow_audiodiag.training.datasets import (
    AugmentedWaveformDataset,
    CachedFeatureDataset,
    make_loader,
)
from mlflow_audiodiag.training.optim import build_optimizer


def _time_loading(loader, extractor: FeatureExtractor | None) -> float:
    start = time.perf_counter()
    for inputs, _ in loader:
        if extractor is not None:
            extractor(inputs)
    return time.perf_counter() - start


def _time_compute(config: TrainConfig, loader, n_classes: int) -> float:
    torch.manual_seed(0)
    features = config.features
    model = AudioTransformer(features.n_bins, features.n_frames, n_classes, config.model)
    optimizer = build_optimizer(model, config.optim)
    batches = list(loader)
    start = time.perf_counter()
    for inputs, targets in batches:
        loss = torch.nn.functional.cross_entropy(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    config = TrainConfig()
    table, _ = resolve_clip_table(config.data, config.features, progress=False)
    store = build_feature_store(
        table, config.features, default_cache_root(), waveform_splits=("train",), progress=False
    )
    train = store.split("train")
    extractor = FeatureExtractor(config.features)
    batch = config.loop.batch_size
    heavy = replace(config.augment, stretch_p=1.0, pitch_p=1.0)

    def augmented(augment: AugmentConfig, workers: int, variants=None):
        dataset = AugmentedWaveformDataset(
            train,
            WaveformAugmenter(augment, config.features.sample_rate),
            seed=0,
            variants=variants,
        )
        return make_loader(dataset, batch, shuffle=True, seed=0, num_workers=workers)

    with tempfile.TemporaryDirectory() as variant_dir:
        start = time.perf_counter()
        heavy_variants = resampled_variants(
            train.waveforms,
            WaveformAugmenter(heavy, config.features.sample_rate),
            Path(variant_dir),
            seed=0,
            progress=False,
        )
        precompute_s = time.perf_counter() - start
        heavy_variants = np.array(heavy_variants)  # keep them after the folder goes

    cached = make_loader(CachedFeatureDataset(train), batch, shuffle=True, seed=0)
    cases = {
        "cached features, no augmentation": (cached, None),
        "default waveform augmentation, 0 workers": (augmented(config.augment, 0), extractor),
        "default waveform augmentation, 2 workers": (augmented(config.augment, 2), extractor),
        "stretch+pitch every clip, 0 workers": (augmented(heavy, 0), extractor),
        "stretch+pitch every clip, 2 workers": (augmented(heavy, 2), extractor),
        f"stretch+pitch from {heavy.resampled_variants} precomputed variants, 0 workers": (
            augmented(heavy, 0, heavy_variants),
            extractor,
        ),
    }
    compute = []
    loading: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):  # alternate so drift affects all cases alike
        compute.append(_time_compute(config, cached, len(store.classes)))
        for name, (loader, ext) in cases.items():
            loading[name].append(_time_loading(loader, ext))

    compute_s = statistics.median(compute)
    print(f"clips per epoch: {len(train)}, batch size {batch}, repeats {args.repeats}")
    print(f"training compute per epoch: {compute_s:.2f} s")
    print(
        f"precomputing {heavy.resampled_variants} stretch+pitch variants per clip (once): "
        f"{precompute_s:.1f} s"
    )
    for name, times in loading.items():
        seconds = statistics.median(times)
        print(f"{name}: {seconds:.2f} s per epoch, ratio to compute {seconds / compute_s:.2f}")


if __name__ == "__main__":
    main()
