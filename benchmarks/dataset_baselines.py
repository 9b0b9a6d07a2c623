"""Baselines that show how hard the synthetic dataset is for models without time structure.

Prints the generation time of a fresh dataset, the majority-guess accuracy, and the accuracy
of a multinomial logistic regression on clip-mean log-mel features (no temporal order).

    python benchmarks/dataset_baselines.py [--n-classes 8] [--clips-per-class 150] [--seed 0]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from mlflow_audiodiag.data.audio_io import read_audio
from mlflow_audiodiag.data.sources import read_manifest
from mlflow_audiodiag.data.synthetic import SyntheticConfig, generate_dataset
from mlflow_audiodiag.features.config import FeatureConfig
from mlflow_audiodiag.features.extractor import FeatureExtractor


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-classes", type=int, default=8)
    parser.add_argument("--clips-per-class", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out-dir", type=Path, default=None, help="dataset folder (default: the cache)"
    )
    return parser.parse_args()


def fit_to_length(samples: np.ndarray, length: int) -> np.ndarray:
    if len(samples) >= length:
        return samples[:length]
    return np.pad(samples, (0, length - len(samples)))


def clip_mean_logmel(paths: list[str], feature_config: FeatureConfig) -> torch.Tensor:
    """``[n_clips, n_mels]`` log-mel averaged over frames."""
    extractor = FeatureExtractor(feature_config)
    waveforms = np.stack(
        [
            fit_to_length(read_audio(path, feature_config.sample_rate), feature_config.num_samples)
            for path in paths
        ]
    )
    features = [extractor(torch.from_numpy(batch)) for batch in np.array_split(waveforms, 16)]
    return torch.cat(features).mean(dim=-1)


def logistic_regression(
    train_x: torch.Tensor, train_y: torch.Tensor, n_classes: int, l2: float = 1e-3
) -> torch.nn.Linear:
    """Full-batch LBFGS multinomial logistic regression with a light L2 penalty."""
    torch.manual_seed(0)
    model = torch.nn.Linear(train_x.shape[1], n_classes)
    optimizer = torch.optim.LBFGS(model.parameters(), max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(train_x), train_y)
        loss = loss + l2 * model.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return model


def main() -> None:
    args = parse_args()
    config = SyntheticConfig(
        n_classes=args.n_classes, clips_per_class=args.clips_per_class, seed=args.seed
    )

    with tempfile.TemporaryDirectory() as scratch:
        start = time.perf_counter()
        generate_dataset(Path(scratch), config, progress=False)
        print(f"generation_seconds_fresh: {time.perf_counter() - start:.2f}")

    manifest = generate_dataset(args.out_dir, config, progress=True)
    print(f"dataset: {manifest.parent}")
    table = read_manifest(manifest)
    classes = sorted(table["label"].unique())
    label_ids = torch.tensor(table["label"].map(classes.index).to_numpy())
    masks = {
        split: torch.tensor((table["split"] == split).to_numpy())
        for split in ("train", "val", "test")
    }
    print("clips: " + ", ".join(f"{split}={int(mask.sum())}" for split, mask in masks.items()))

    majority = Counter(label_ids[masks["train"]].tolist()).most_common(1)[0][0]
    for split in ("val", "test"):
        accuracy = (label_ids[masks[split]] == majority).float().mean().item()
        print(f"majority_{split}_accuracy: {accuracy:.3f}")

    features = clip_mean_logmel(table["path"].tolist(), FeatureConfig())
    mean = features[masks["train"]].mean(dim=0)
    std = features[masks["train"]].std(dim=0).clamp_min(1e-6)
    standardized = (features - mean) / std
    model = logistic_regression(
        standardized[masks["train"]], label_ids[masks["train"]], len(classes)
    )
    with torch.no_grad():
        predictions = model(standardized).argmax(dim=1)
    for split in ("train", "val", "test"):
        accuracy = (predictions[masks[split]] == label_ids[masks[split]]).float().mean().item()
        print(f"linear_clip_mean_logmel_{split}_accuracy: {accuracy:.3f}")


if __name__ == "__main__":
    main()
