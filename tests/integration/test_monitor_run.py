"""TrainingMonitor in hand-written loops against a real sqlite MLflow store: what the run holds
equals values computed independently in the test, and every contract signal is recorded."""

from __future__ import annotations

import copy
import json
from collections import Counter
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from mlflow.tracking import MlflowClient
from torch import nn

from mlflow_audiodiag import schema, signals, watch
from mlflow_audiodiag.model.transformer import AudioTransformer, ModelConfig
from mlflow_audiodiag.monitoring.monitor import MonitorConfig, TrainingMonitor

pytestmark = pytest.mark.integration

CLASSES = ["dog", "cat", "bird <b>", "x<y"]


def _artifact(client: MlflowClient, run_id: str, path: str, tmp_path: Path) -> Path:
    return Path(client.download_artifacts(run_id, path, str(tmp_path)))


def _table(client: MlflowClient, run_id: str, path: str, tmp_path: Path) -> pd.DataFrame:
    return pd.read_parquet(_artifact(client, run_id, path, tmp_path))


def test_the_step_and_epoch_tables_hold_what_an_independent_computation_gives(
    tracking_uri, tmp_path
) -> None:
    torch.manual_seed(0)
    features = torch.randn(48, 16, 40)
    labels = torch.tensor([0] * 24 + [1] * 12 + [2] * 6 + [3] * 6)
    model = AudioTransformer(16, 40, 4, ModelConfig(dim=32, heads=2, layers=2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    expected: dict[int, dict[str, float]] = {}
    with mlflow.start_run() as run:
        monitor = TrainingMonitor(
            model, optimizer, config=MonitorConfig(buffer_steps=4), classes=CLASSES
        )
        monitor.log_dataset("train", labels, features=features, stage="raw")
        step = 0
        for epoch in (1, 2):
            for start in range(0, 48, 16):
                loss = F.cross_entropy(
                    model(features[start : start + 16]), labels[start : start + 16]
                )
                optimizer.zero_grad()
                loss.backward()
                monitor.after_backward(loss)
                step += 1
                grads = [p.grad.flatten() for p in model.parameters() if p.grad is not None]
                head = [model.norm.weight, model.norm.bias, model.head.weight, model.head.bias]
                expected[step] = {
                    "total": torch.linalg.vector_norm(torch.cat(grads)).item(),
                    "head": torch.linalg.vector_norm(
                        torch.cat([p.grad.flatten() for p in head])
                    ).item(),
                    "lr": optimizer.param_groups[0]["lr"],
                    "loss": loss.item(),
                }
                optimizer.step()
                monitor.after_step()
                scheduler.step()
            with torch.no_grad():
                model.eval()
                logits = model(features)
                model.train()
            row = monitor.end_epoch(epoch, labels, logits)
        assert monitor.close()
    client, run_id = MlflowClient(), run.info.run_id

    steps = _table(client, run_id, schema.ARTIFACT_STEPS, tmp_path).set_index("step")
    assert steps.index.tolist() == list(range(1, 7))
    for s in range(1, 7):
        assert steps.loc[s, "grad_norm/total"] == pytest.approx(expected[s]["total"], rel=1e-4)
        assert steps.loc[s, "grad_norm/head"] == pytest.approx(expected[s]["head"], rel=1e-4)
        assert steps.loc[s, "lr/0"] == pytest.approx(expected[s]["lr"])
        assert steps.loc[s, "train/step_loss"] == pytest.approx(expected[s]["loss"], rel=1e-5)
    assert (steps["update_ratio/encoder.layers.1"] > 0).all()
    assert steps["clip/max_norm"].isna().all()  # no clipping

    epochs = _table(client, run_id, schema.ARTIFACT_EPOCHS, tmp_path).set_index("epoch")
    assert epochs.loc[1, "train/loss"] == pytest.approx(
        np.mean([expected[s]["loss"] for s in (1, 2, 3)])
    )
    assert epochs.loc[2, "train/last_step"] == 6
    predicted = logits.argmax(dim=1)
    assert row["val/accuracy"] == pytest.approx((predicted == labels).float().mean().item())
    assert row["val/loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)
    counts = np.bincount(predicted.numpy(), minlength=4)
    for index, name in enumerate(CLASSES):  # class names as given: no mangling, no merging
        assert epochs.loc[2, f"val_pred_count/{name}"] == counts[index]
    assert {"attention_entropy/layer0", "attention_entropy/layer1"} <= set(epochs.columns)

    summary = json.loads(_artifact(client, run_id, schema.ARTIFACT_SUMMARY, tmp_path).read_text())
    histogram = Counter(labels.tolist())
    for index, name in enumerate(CLASSES):
        assert summary[f"labels/train/count/{name}"] == histogram[index]
        assert summary[f"labels/val/count/{name}"] == histogram[index]  # from end_epoch
    assert summary["labels/train/majority_fraction"] == pytest.approx(24 / 48)
    assert summary["data/val_majority_accuracy"] == pytest.approx(24 / 48)
    assert summary["features/raw/train/mean"] == pytest.approx(features.double().mean().item())

    groups = json.loads(
        _artifact(client, run_id, schema.ARTIFACT_PARAMETER_GROUPS, tmp_path).read_text()
    )
    assert groups["order"] == ["embedding", "encoder.layers.0", "encoder.layers.1", "head"]
    metrics = client.get_run(run_id).data.metrics
    assert len(metrics) <= 40
    assert not any(key.startswith(("val_pred_count/", "labels/train/count/")) for key in metrics)


def test_watch_records_every_contract_signal_from_hooks_alone(tracking_uri, tmp_path) -> None:
    """A loop that only calls watch() and end_epoch(): torch's clipping is detected, the loss
    and targets are read off the loss function, the inputs off the model."""
    torch.manual_seed(0)
    x, y = torch.randn(96, 12), torch.randint(0, 3, (96,))
    model = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    loss_fn = nn.CrossEntropyLoss()
    totals, losses = [], []
    monitor = watch(model, optimizer, loss_fn=loss_fn, classes=["a", "b", "c"], diagnose=False)
    for epoch in (1, 2):
        for start in range(0, 96, 32):
            optimizer.zero_grad()
            loss = loss_fn(model(x[start : start + 32]), y[start : start + 32])
            loss.backward()
            totals.append(nn.utils.clip_grad_norm_(model.parameters(), 0.1).item())
            losses.append(loss.item())
            optimizer.step()
        with torch.no_grad():
            model.eval()
            monitor.end_epoch(epoch, y, model(x))
            model.train()
    run_id = monitor.run_id
    assert monitor.close()
    client = MlflowClient()
    assert client.get_run(run_id).info.status == "FINISHED"  # watch() started and ended it
    steps = _table(client, run_id, schema.ARTIFACT_STEPS, tmp_path)
    assert steps["grad_norm/total"].tolist() == pytest.approx(totals, rel=1e-4)  # pre-clip
    assert steps["train/step_loss"].tolist() == pytest.approx(losses, rel=1e-5)
    clipped = steps["clip/max_norm"].dropna()
    assert len(clipped) == 6 and clipped.tolist() == pytest.approx([0.1] * 6, rel=1e-4)
    assert steps["train/step_accuracy"].notna().all()
    summary = json.loads(_artifact(client, run_id, schema.ARTIFACT_SUMMARY, tmp_path).read_text())
    assert summary["labels/train/n"] == 96  # every target of the first epoch
    assert summary["features/input/train/n_clips"] == 96
    assert "feature_shift/input/val_vs_train_smd_max" in summary
    assert client.get_run(run_id).data.tags[schema.TAG_FRONT_END] == "watch"
    for key in client.get_run(run_id).data.metrics:  # one point per step, once-signals once
        history = [m.step for m in client.get_metric_history(run_id, key)]
        assert len(history) == len(set(history)), (key, history)


def test_negative_losses_and_invalid_soft_targets_are_recorded(tracking_uri, tmp_path) -> None:
    torch.manual_seed(0)
    model = nn.Linear(6, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return -(targets * logits.log_softmax(dim=1)).sum(dim=1).mean()

    class SoftLoss(nn.Module):
        def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            return soft_cross_entropy(logits, targets)

    loss_fn = SoftLoss()
    monitor = watch(model, optimizer, loss_fn=loss_fn, diagnose=False)
    one_hot = F.one_hot(torch.arange(8) % 3, 3).float()  # neighbours differ in class
    mixed = 1.5 * one_hot - 0.5 * one_hot.roll(1, dims=0)  # mixup with a weight of 1.5
    for targets in (one_hot, mixed):
        optimizer.zero_grad()
        loss_fn(model(torch.randn(8, 6)), targets).backward()
        optimizer.step()
    monitor.end_epoch(1)
    run_id = monitor.run_id
    assert monitor.close()
    steps = _table(MlflowClient(), run_id, schema.ARTIFACT_STEPS, tmp_path)
    assert steps[signals.INVALID_TARGETS.name].tolist() == [0.0, pytest.approx(1.0)]


def test_non_finite_loss_and_gradients_are_counted_not_raised(tracking_uri, tmp_path) -> None:
    model = nn.Sequential(nn.Linear(4, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with mlflow.start_run() as run:
        monitor = TrainingMonitor(model, optimizer)
        nonfinite = 0
        for poisoned in (False, True, False):
            x = torch.randn(8, 4)
            if poisoned:
                x[0, 0] = float("nan")
            loss = F.cross_entropy(model(x), torch.zeros(8, dtype=torch.long))
            optimizer.zero_grad()
            loss.backward()
            nonfinite += int(not torch.isfinite(loss))
            monitor.after_backward(loss)
            optimizer.step()
            monitor.after_step()
        monitor.end_epoch(1)
        assert monitor.close()
    metrics = MlflowClient().get_run(run.info.run_id).data.metrics
    assert nonfinite >= 1  # the poisoned step (and, through NaN weights, what follows)
    assert metrics[signals.NONFINITE_LOSS.name] == nonfinite
    assert metrics[signals.NONFINITE_GRADS.name] >= 1


def test_per_step_series_reach_mlflow_downsampled(tracking_uri) -> None:
    model = nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with mlflow.start_run() as run:
        monitor = TrainingMonitor(model, optimizer)
        for _ in range(2000):
            optimizer.zero_grad()
            loss = F.cross_entropy(model(torch.randn(4, 4)), torch.zeros(4, dtype=torch.long))
            loss.backward()
            monitor.after_backward(loss)
            optimizer.step()
            monitor.after_step()
        monitor.end_epoch(1)
        assert monitor.close()
    client = MlflowClient()
    for key in (signals.STEP_LOSS.name, schema.METRIC_LOG10_UPDATE_RATIO, schema.METRIC_LOG10_LR):
        history = client.get_metric_history(run.info.run_id, key)
        assert 100 < len(history) < 300, key  # 40 * log2(2000 / 40 + 1) = 227 points
    ratio = client.get_metric_history(run.info.run_id, schema.METRIC_LOG10_UPDATE_RATIO)
    assert all(-8 < m.value < 0 for m in ratio)  # readable in the UI's charts


@pytest.mark.parametrize(
    ("unfreeze_head", "every_n_steps"),
    [
        (False, 1),  # reuses the recorded norms
        (True, 1),  # the head, frozen when the monitor was built, trains: torch's function
        (False, 2),  # every other step is not recorded: torch's function
    ],
)
def test_monitor_clipping_equals_torch_clipping(tracking_uri, unfreeze_head, every_n_steps) -> None:
    torch.manual_seed(0)
    features, labels = torch.randn(16, 16, 40), torch.randint(0, 3, (16,))
    models = [AudioTransformer(16, 40, 3, ModelConfig(dim=32, heads=2, layers=2, dropout=0.0))]
    models.append(copy.deepcopy(models[0]))
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1) for m in models]
    config = MonitorConfig(every_n_steps=every_n_steps)
    with mlflow.start_run():
        models[1].head.requires_grad_(not unfreeze_head)
        monitor = TrainingMonitor(models[1], optimizers[1], config=config)
        models[1].head.requires_grad_(True)
        for _ in range(3):
            totals = []
            for index, (model, optimizer) in enumerate(zip(models, optimizers, strict=True)):
                optimizer.zero_grad()
                F.cross_entropy(model(features), labels).backward()
                if index == 0:
                    totals.append(nn.utils.clip_grad_norm_(model.parameters(), 0.05))
                else:
                    monitor.after_backward()
                    totals.append(monitor.clip_grad_norm_(0.05))
                optimizer.step()
            monitor.after_step()
            assert totals[1].item() == pytest.approx(totals[0].item(), rel=1e-6)
            assert totals[0].item() > 0.05  # the clipping bites
            for plain, monitored in zip(*(m.parameters() for m in models), strict=True):
                torch.testing.assert_close(monitored, plain)
        assert monitor.close()


def test_explicit_calls_are_refused_when_hooks_record_the_steps(tracking_uri) -> None:
    model = nn.Linear(2, 2)
    monitor = watch(model, torch.optim.SGD(model.parameters(), lr=0.1), diagnose=False)
    with pytest.raises(RuntimeError, match="optimizer's hooks"):
        monitor.after_backward()
    assert monitor.close()
