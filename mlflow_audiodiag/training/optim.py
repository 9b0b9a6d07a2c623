"""Optimizer and learning-rate schedule construction."""

from __future__ import annotations

import math

import torch
from torch import nn

from mlflow_audiodiag.training.config import OptimConfig


def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.Optimizer:
    """AdamW or SGD; biases, norms, embeddings and tokens get no weight decay."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_vector = param.ndim <= 1 or name.endswith(("cls_token", "pos_embedding"))
        (no_decay if is_vector else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, foreach=True)
    return torch.optim.AdamW(groups, lr=config.lr, foreach=True)


class LRSchedule:
    """One interface over the supported schedules.

    ``step_batch`` is called after every optimizer step, ``step_epoch`` after validation with
    the validation loss; each schedule reacts to the call that fits it.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        config: OptimConfig,
        steps_per_epoch: int,
        epochs: int,
    ) -> None:
        self.config = config
        self.per_batch: torch.optim.lr_scheduler.LRScheduler | None = None
        self.per_epoch: torch.optim.lr_scheduler.LRScheduler | None = None
        self.plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
        if config.scheduler == "warmup_cosine":
            warmup = max(1, config.warmup_epochs * steps_per_epoch)
            total = max(warmup + 1, epochs * steps_per_epoch)

            def factor(step: int) -> float:
                if step < warmup:
                    return (step + 1) / warmup
                progress = (step - warmup) / (total - warmup)
                return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

            self.per_batch = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        elif config.scheduler == "step":
            self.per_epoch = torch.optim.lr_scheduler.StepLR(
                optimizer, step_size=config.step_size, gamma=config.gamma
            )
        elif config.scheduler == "plateau":
            self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer,
                mode="min",
                factor=config.plateau_factor,
                patience=config.plateau_patience,
            )

    def step_batch(self) -> None:
        if self.per_batch is not None:
            self.per_batch.step()

    def step_epoch(self, val_loss: float) -> None:
        if self.per_epoch is not None:
            self.per_epoch.step()
        if self.plateau is not None:
            self.plateau.step(val_loss)
