"""A plain PyTorch training loop instrumented with the package's public API, and the
diagnosis of a finished run.

Everything the benchmark calls on the monitoring and diagnosis API lives in this module
(``TrainingMonitor``, ``log_dataset``, ``after_backward``, ``clip_grad_norm_``,
``after_step``, ``end_epoch``, ``close``, ``diagnose_run``), so that a change of that API is
one edit here.
"""

from __future__ import annotations

from typing import Any

import mlflow
import torch
from torch import nn
from torch.nn import functional as F

from benchmarks.diagnosis_matrix.recipe import (
    Prepared,
    Recipe,
    make_optimizer,
    make_scheduler,
    mixup_batch,
)
from mlflow_audiodiag.diagnosis.writeback import diagnose_run
from mlflow_audiodiag.monitoring.monitor import TrainingMonitor

_EVAL_BATCH = 256


def train_user_loop(
    model: nn.Module,
    data: Prepared,
    recipe: Recipe,
    seed: int,
    run_name: str,
    tags: dict[str, str],
) -> str:
    """Trains ``model`` as a hand-written loop would, in a new MLflow run; returns its id."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    optimizer = make_optimizer(model, recipe)
    scheduler = make_scheduler(optimizer, recipe)
    with mlflow.start_run(run_name=run_name, tags=tags) as run:
        mlflow.log_params(recipe.params())
        monitor = TrainingMonitor(model, optimizer)
        monitor.log_dataset("train", data.y_train, data.classes, features=data.x_train)
        monitor.log_dataset("val", data.y_val, data.classes, features=data.x_val)
        if any(isinstance(m, nn.MultiheadAttention) for m in model.modules()):
            monitor.set_attention_probe(data.x_val[:16])
        for epoch in range(1, recipe.epochs + 1):
            train_loss, train_accuracy = _train_epoch(
                model, optimizer, monitor, data, recipe, generator
            )
            if scheduler is not None:
                scheduler.step()
            val_logits = _predict(model, data.x_val)
            monitor.end_epoch(
                epoch,
                data.y_val,
                val_logits,
                classes=data.classes,
                metrics={
                    "train/loss": train_loss,
                    "train/accuracy": train_accuracy,
                    "val/loss": F.cross_entropy(val_logits, data.y_val).item(),
                    "val/accuracy": (val_logits.argmax(1) == data.y_val).float().mean().item(),
                },
            )
        monitor.close()
    return run.info.run_id


def _train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    monitor: TrainingMonitor,
    data: Prepared,
    recipe: Recipe,
    generator: torch.Generator,
) -> tuple[float, float]:
    model.train()
    order = torch.randperm(len(data.y_train), generator=generator)
    losses, correct = [], 0
    for start in range(0, len(order), recipe.batch_size):
        batch = order[start : start + recipe.batch_size]
        inputs, targets = data.x_train[batch], data.y_train[batch]
        if recipe.mixup is not None:
            inputs, targets, other, lam = mixup_batch(inputs, targets, recipe, generator)
            logits = model(inputs)
            loss = lam * F.cross_entropy(logits, targets) + (1 - lam) * F.cross_entropy(
                logits, other
            )
        else:
            logits = model(inputs)
            loss = F.cross_entropy(logits, targets)
        optimizer.zero_grad()
        loss.backward()
        monitor.after_backward(loss)
        if recipe.grad_clip > 0:
            monitor.clip_grad_norm_(recipe.grad_clip)
        if not recipe.skip_step:
            optimizer.step()
        monitor.after_step()
        losses.append(loss.detach())
        correct += int((logits.argmax(1) == targets).sum())
    return torch.stack(losses).mean().item(), correct / len(order)


@torch.no_grad()
def _predict(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    model.eval()
    batches = range(0, len(inputs), _EVAL_BATCH)
    return torch.cat([model(inputs[i : i + _EVAL_BATCH]) for i in batches])


def diagnose(run_id: str, write: bool = True) -> dict[str, Any]:
    """The package's diagnosis of ``run_id`` as plain values (written back to the run)."""
    diagnosis = diagnose_run(run_id, write=write)
    return {
        "verdict": diagnosis.verdict,
        "primary_cause": diagnosis.primary_cause or "none",
        "findings": [
            {"code": f.code, "severity": f.severity.value, "score": f.score, "title": f.title}
            for f in diagnosis.findings
        ],
        "skipped_checks": sorted(diagnosis.skipped_checks),
    }
