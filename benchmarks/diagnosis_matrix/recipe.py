"""How a user-written run trains: optimizer, schedule, features, model size and the faults a
user really makes, as one frozen settings object shared by the plain loop and Lightning."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from benchmarks.diagnosis_matrix.data import Arrays


@dataclass(frozen=True)
class Recipe:
    """Training settings of one user-written run (defaults: a healthy run).

    Faults: ``features`` other than ``logmel`` (``power``: no dB; ``log_padded``: log(0));
    ``normalize=False``; ``val_features`` (val read through another front end);
    ``labels`` ``shuffled`` (train labels permuted once, apart from the clips) or
    ``to_class0`` (``labels_fraction`` of them set to class 0); ``skip_step``
    (``optimizer.step()`` forgotten); ``mixup`` (range of a mixup weight that leaves [0, 1]);
    ``variant`` (see :func:`~.models.build_model`).
    """

    epochs: int = 12
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    grad_clip: float = 0.0
    schedule: str = "constant"
    batch_size: int = 32
    features: str = "logmel"
    normalize: bool = True
    val_features: str = ""
    size: str = "small"
    variant: str = ""
    dropout: float = 0.1
    train_per_class: int = 0
    val_per_class: int = 0
    labels: str = ""
    labels_fraction: float = 0.0
    skip_step: bool = False
    mixup: tuple[float, float] | None = None

    def replace(self, **changes: Any) -> Recipe:
        return dataclasses.replace(self, **changes)

    def params(self) -> dict[str, str]:
        """What a user would log as run parameters (their own names)."""
        out = {
            "epochs": self.epochs,
            "optimizer": self.optimizer,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "batch_size": self.batch_size,
            "schedule": self.schedule,
            "grad_clip": self.grad_clip,
            "dropout": self.dropout,
            "features": self.features,
            "model_size": self.size,
        }
        return {key: str(value) for key, value in out.items()}


# Healthy learning rates per architecture (Adam).
ARCH_LR = {"cnn": 3e-3, "gru": 2e-3, "mlp": 3e-3, "transformer": 1e-3}


def make_optimizer(model: torch.nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            recipe.lr,
            momentum=recipe.momentum,
            weight_decay=recipe.weight_decay,
        )
    return torch.optim.Adam(model.parameters(), recipe.lr, weight_decay=recipe.weight_decay)


def make_scheduler(
    optimizer: torch.optim.Optimizer, recipe: Recipe
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Stepped once per epoch: ``step`` (x0.5 every 4 epochs) or ``cosine`` (to 0)."""
    if recipe.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=4, gamma=0.5)
    if recipe.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=recipe.epochs)
    return None


@dataclass
class Prepared:
    """Train/val tensors as the model sees them, after the user's preprocessing."""

    classes: list[str]
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor


def prepare(train_arrays: Arrays, val_arrays: Arrays, recipe: Recipe, seed: int) -> Prepared:
    """Subsets, label faults and train-fitted standardization (mean and std over all bins)."""
    rng = np.random.default_rng(seed)
    x_train, y_train = train_arrays.split("train")
    x_val, y_val = val_arrays.split("val")
    if recipe.train_per_class:
        x_train, y_train = _per_class(x_train, y_train, recipe.train_per_class, rng)
    if recipe.val_per_class:
        x_val, y_val = _per_class(x_val, y_val, recipe.val_per_class, rng)
    if recipe.labels == "shuffled":
        y_train = y_train[torch.from_numpy(rng.permutation(len(y_train)))]
    elif recipe.labels == "to_class0":
        y_train = y_train.clone()
        y_train[torch.from_numpy(rng.random(len(y_train)) < recipe.labels_fraction)] = 0
    if recipe.normalize:
        mean, std = x_train.mean(), x_train.std()
        x_train, x_val = (x_train - mean) / std, (x_val - mean) / std
    return Prepared(train_arrays.classes, x_train, y_train, x_val, y_val)


def _per_class(
    x: torch.Tensor, y: torch.Tensor, count: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    keep = np.concatenate(
        [rng.permutation(np.flatnonzero(y.numpy() == c))[:count] for c in np.unique(y.numpy())]
    )
    keep = torch.from_numpy(np.sort(keep))
    return x[keep], y[keep]


def mixup_batch(
    x: torch.Tensor, y: torch.Tensor, recipe: Recipe, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Mixed inputs, both targets and the mixing weight (drawn from ``recipe.mixup``)."""
    low, high = recipe.mixup or (0.0, 1.0)
    lam = float(low + (high - low) * torch.rand((), generator=generator))
    order = torch.randperm(len(y), generator=generator)
    return lam * x + (1 - lam) * x[order], y, y[order], lam
