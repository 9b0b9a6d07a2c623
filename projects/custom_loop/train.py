"""A hand-written PyTorch training loop over mlflow-audiodiag's data, features and model.

It shows the pieces a user combines in their own script: the clip table, the feature cache,
train-only normalization, augmentation, the transformer, the training monitor and the
diagnosis of the finished run.
"""

from __future__ import annotations

import argparse

import mlflow
import numpy as np
import torch
import torch.nn.functional as F

from mlflow_audiodiag.cache import default_cache_root
from mlflow_audiodiag.data.sources import load_clip_table
from mlflow_audiodiag.data.synthetic import SyntheticConfig, generate_dataset
from mlflow_audiodiag.features.augment import AugmentConfig, SpecAugment
from mlflow_audiodiag.features.config import FeatureConfig
from mlflow_audiodiag.features.normalization import FeatureNormalizer, fit_normalization
from mlflow_audiodiag.features.store import build_feature_store
from mlflow_audiodiag.model.transformer import AudioTransformer, ModelConfig
from mlflow_audiodiag.monitoring.monitor import TrainingMonitor
from mlflow_audiodiag.reporting.writeback import diagnose_run


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

    with mlflow.start_run() as run:
        mlflow.log_params({"epochs": args.epochs, "lr": args.lr, "classes": len(store.classes)})
        # 4. The monitor records the evidence a diagnosis needs, with a few explicit calls.
        monitor = TrainingMonitor(model, optimizer)
        monitor.log_dataset("train", y_train, store.classes, features=x_train)
        monitor.log_dataset("val", y_val, store.classes, features=x_val)
        monitor.set_attention_probe(x_val[:16])
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
                monitor.after_backward(loss)
                optimizer.step()
                monitor.after_step()
                losses.append(loss.detach())
            model.eval()
            with torch.no_grad():
                val_logits = model(x_val)
            val_accuracy = (val_logits.argmax(1) == y_val).float().mean().item()
            monitor.end_epoch(
                epoch,
                y_val,
                val_logits,
                classes=store.classes,
                metrics={
                    "train/loss": torch.stack(losses).mean().item(),
                    "val/loss": F.cross_entropy(val_logits, y_val).item(),
                    "val/accuracy": val_accuracy,
                },
            )
            print(f"epoch {epoch}: val accuracy {val_accuracy:.3f}")
        monitor.close()
    # 5. The verdict, cause, evidence and fix, written back to the run.
    diagnosis = diagnose_run(run.info.run_id)
    print(f"diagnosis: {diagnosis.verdict} (most likely cause: {diagnosis.primary_cause})")


if __name__ == "__main__":
    main()
