"""TrainingMonitor in a hand-written loop against a real sqlite MLflow store: what arrives in
MLflow equals values computed independently in the test."""

from __future__ import annotations

import copy
from collections import Counter

import mlflow
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mlflow.tracking import MlflowClient
from torch import nn

from mlflow_audiodiag import schema
from mlflow_audiodiag.model.transformer import AudioTransformer, ModelConfig
from mlflow_audiodiag.monitoring.monitor import MonitorConfig, TrainingMonitor

pytestmark = pytest.mark.integration

CLASSES = ["dog", "cat", "bird <b>"]


def _history(client: MlflowClient, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def test_monitor_records_what_an_independent_computation_gives(tracking_uri) -> None:
    torch.manual_seed(0)
    features = torch.randn(48, 16, 40)
    labels = torch.tensor([0] * 30 + [1] * 12 + [2] * 6)
    model = AudioTransformer(16, 40, 3, ModelConfig(dim=32, heads=2, layers=2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    expected_total, expected_head, expected_lr = {}, {}, {}

    with mlflow.start_run() as run:
        monitor = TrainingMonitor(model, optimizer, config=MonitorConfig(buffer_steps=4))
        monitor.log_dataset("train", labels, CLASSES, features=features, stage="raw")
        monitor.set_attention_probe(features[:8])
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
                grads = [p.grad for p in model.parameters() if p.grad is not None]
                expected_total[step] = torch.linalg.vector_norm(
                    torch.cat([g.flatten() for g in grads])
                ).item()
                expected_head[step] = torch.linalg.vector_norm(
                    torch.cat(
                        [
                            model.norm.weight.grad,
                            model.norm.bias.grad,
                            model.head.weight.grad.flatten(),
                            model.head.bias.grad,
                        ]
                    )
                ).item()
                expected_lr[step] = optimizer.param_groups[0]["lr"]
                optimizer.step()
                monitor.after_step()
                scheduler.step()
            with torch.no_grad():
                model.eval()
                logits = model(features)
                model.train()
            monitor.end_epoch(epoch, labels, logits, classes=CLASSES)
        assert monitor.close()
        assert not monitor._artifact_dir.exists()  # logged to the run, then removed locally
    client = MlflowClient()
    run_id = run.info.run_id

    total = _history(client, run_id, schema.GRAD_NORM_PREFIX + "total")
    head = _history(client, run_id, schema.GRAD_NORM_PREFIX + "head")
    assert sorted(total) == list(range(1, 7))
    for s in range(1, 7):
        assert total[s] == pytest.approx(expected_total[s], rel=1e-4)
        assert head[s] == pytest.approx(expected_head[s], rel=1e-4)
    assert _history(client, run_id, schema.LR_PREFIX + "0") == pytest.approx(expected_lr)
    assert len(_history(client, run_id, schema.UPDATE_RATIO_PREFIX + "encoder.1")) == 6

    metrics = client.get_run(run_id).data.metrics
    counts = Counter(labels.tolist())
    for index, name in enumerate(CLASSES):
        key = schema.metric_safe(f"{schema.LABELS_PREFIX}train/count/{name}")
        assert metrics[key] == counts[index]
    assert metrics[f"{schema.LABELS_PREFIX}train/majority_fraction"] == pytest.approx(30 / 48)
    assert metrics[f"{schema.LABELS_PREFIX}train/imbalance_ratio"] == pytest.approx(5.0)
    assert metrics[f"{schema.FEATURES_PREFIX}raw/train/mean"] == pytest.approx(
        features.double().mean().item(), abs=1e-6
    )

    predicted = np.bincount(logits.argmax(1).numpy(), minlength=3)
    for index, name in enumerate(CLASSES):
        key = schema.metric_safe(schema.VAL_PRED_COUNT_PREFIX + name)
        assert _history(client, run_id, key)[2] == predicted[index]
    assert set(_history(client, run_id, schema.ATTENTION_ENTROPY_PREFIX + "1")) == {1, 2}
    artifacts = {a.path for a in client.list_artifacts(run_id, schema.ARTIFACT_DIR_MONITOR)}
    assert {
        schema.ARTIFACT_LABEL_SUMMARY,
        schema.ARTIFACT_LABEL_PLOT,
        schema.ARTIFACT_PREDICTIONS,
        schema.ARTIFACT_PARAMETER_GROUPS,
    } <= artifacts


def test_non_finite_loss_and_gradients_are_counted_not_raised(tracking_uri) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
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
    assert metrics[schema.METRIC_NONFINITE_LOSS] == nonfinite
    assert metrics[schema.METRIC_NONFINITE_GRADS] >= 1


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
