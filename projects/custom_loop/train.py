"""A hand-written PyTorch training loop over mlflow-audiodiag's data, features and model.

It shows the pieces a user combines in their own script: the clip table, the feature cache,
train-only normalization, augmentation, the transformer, and plain MLflow logging.
"""

from __future__ import annotations

import argparse

import mlflow
import numpy as np
import torch
import torch.nn.functional as F

from mlflow_audiodiag.data.sources import load_clip_table
from mlflow_audiodiag.data.synthetic import SyntheticConfig, default_cache_root, generate_dataset
from mlflow_audiodiag.features.augment import AugmentConfig, SpecAugment
from mlflow_audiodiag.features.config import FeatureConfig
from mlflow_audiodiag.features.normalization import FeatureNormalizer, fit_normalization
from mlflow_audiodiag.features.store import build_feature_store
from mlflow_audiodiag.model.transformer import AudioTransformer, ModelConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=lambda s: int(float(s)), default=15)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--data",
        default="",
        help="manifest CSV or audio folder (default: the embedded synthetic dataset)",
    )
    args = parser.parse_args()
    torch.manual_seed(0)

    # 1. Audio -> clip table (path, label, split).
    source = args.data or generate_dataset(None, SyntheticConfig(clips_per_class=100))
    table = load_clip_table(source)

    # 2. Clips -> cached log-mel features; normalization fitted on the training split only.
    features = FeatureConfig()
    store = build_feature_store(table, features, default_cache_root())
    train, val = store.split("train"), store.split("val")
    normalizer = FeatureNormalizer(
        fit_normalization([torch.from_numpy(np.array(train.features))], "per_bin")
    )
    spec_augment = SpecAugment(AugmentConfig(specaug_p=0.5))

    # 3. The transformer and an ordinary loop.
    model = AudioTransformer(features.n_bins, features.n_frames, len(store.classes), ModelConfig())
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    x_train = normalizer(torch.from_numpy(np.array(train.features)))
    y_train = torch.from_numpy(train.labels)
    x_val = normalizer(torch.from_numpy(np.array(val.features)))
    y_val = torch.from_numpy(val.labels)

    with mlflow.start_run():
        mlflow.log_params({"epochs": args.epochs, "lr": args.lr, "classes": len(store.classes)})
        for epoch in range(1, args.epochs + 1):
            model.train()
            spec_augment.train()
            order = torch.randperm(len(y_train))
            losses = []
            for start in range(0, len(order), 32):
                batch = order[start : start + 32]
                loss = F.cross_entropy(model(spec_augment(x_train[batch])), y_train[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
            model.eval()
            with torch.no_grad():
                val_logits = model(x_val)
            val_accuracy = (val_logits.argmax(1) == y_val).float().mean().item()
            mlflow.log_metrics(
                {
                    "train/loss": float(np.mean(losses)),
                    "val/loss": F.cross_entropy(val_logits, y_val).item(),
                    "val/accuracy": val_accuracy,
                },
                step=epoch,
            )
            print(f"epoch {epoch}: val accuracy {val_accuracy:.3f}")


if __name__ == "__main__":
    main()
