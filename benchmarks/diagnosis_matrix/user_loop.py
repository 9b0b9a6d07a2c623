"""A plain PyTorch training loop instrumented the way the README shows (``watch``), and the
diagnosis of a finished run.

Everything the benchmark calls on the monitoring and diagnosis API lives in this module, so
that a change of that API is one edit here. The loop is a user's: ``nn.CrossEntropyLoss``,
torch's own ``clip_grad_norm_``, a scheduler; the monitor sees it through ``watch()`` and
``end_epoch`` only, plus ``log_loss`` where the loss is assembled from several calls (mixup).
"""

from __future__ import annotations

from typing import Any

import mlflow
import torch
from torch import nn

from benchmarks.diagnosis_matrix.recipe import (
    Prepared,
    Recipe,
    make_optimizer,
    make_scheduler,
    mixup_batch,
)
from mlflow_audiodiag import TrainingMonitor, watch
from mlflow_audiodiag.reporting.writeback import diagnose_run

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
    criterion = nn.CrossEntropyLoss()
    with mlflow.start_run(run_name=run_name, tags=tags) as run:
        mlflow.log_params(recipe.params())
        monitor = watch(model, optimizer, loss_fn=criterion, classes=data.classes, diagnose=False)
        for epoch in range(1, recipe.epochs + 1):
            _train_epoch(model, optimizer, criterion, monitor, data, recipe, generator)
            if scheduler is not None:
                scheduler.step()
            monitor.end_epoch(epoch, data.y_val, _predict(model, data.x_val))
        monitor.close()
    return run.info.run_id


def _train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    monitor: TrainingMonitor,
    data: Prepared,
    recipe: Recipe,
    generator: torch.Generator,
) -> None:
    model.train()
    order = torch.randperm(len(data.y_train), generator=generator)
    for start in range(0, len(order), recipe.batch_size):
        batch = order[start : start + recipe.batch_size]
        inputs, targets = data.x_train[batch], data.y_train[batch]
        optimizer.zero_grad()
        if recipe.mixup is not None:
            inputs, targets, other, lam = mixup_batch(inputs, targets, recipe, generator)
            logits = model(inputs)
            loss = lam * criterion(logits, targets) + (1 - lam) * criterion(logits, other)
            monitor.log_loss(loss)  # assembled from two calls: hand the monitor the sum
        else:
            loss = criterion(model(inputs), targets)
        loss.backward()
        if recipe.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        if not recipe.skip_step:
            optimizer.step()


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
