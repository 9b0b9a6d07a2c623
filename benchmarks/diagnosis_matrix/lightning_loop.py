"""The Lightning front-end: a LightningModule as a user writes it, an ``MLFlowLogger`` for
its own metrics and the package's ``AudioDiagCallback`` for the diagnostic signals.

The forgotten ``optimizer.step()`` is made the way Lightning allows it: manual optimization
with ``manual_backward`` and no step.
"""

from __future__ import annotations

import lightning.pytorch as pl
import mlflow
import torch
from lightning.pytorch.loggers import MLFlowLogger
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.diagnosis_matrix.recipe import (
    Prepared,
    Recipe,
    make_optimizer,
    make_scheduler,
    mixup_batch,
)
from mlflow_audiodiag.integrations.lightning import AudioDiagCallback


class LitClassifier(pl.LightningModule):
    """Cross-entropy training of ``model``; logs ``train/*`` and ``val/*`` per epoch."""

    def __init__(self, model: nn.Module, recipe: Recipe, seed: int) -> None:
        super().__init__()
        self.model = model
        self.recipe = recipe
        self.mix_generator = torch.Generator().manual_seed(seed)
        self.automatic_optimization = not recipe.skip_step
        self.save_hyperparameters(recipe.params())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        inputs, targets = batch
        if self.recipe.mixup is not None:
            inputs, targets, other, lam = mixup_batch(
                inputs, targets, self.recipe, self.mix_generator
            )
            logits = self(inputs)
            loss = lam * F.cross_entropy(logits, targets) + (1 - lam) * F.cross_entropy(
                logits, other
            )
        else:
            logits = self(inputs)
            loss = F.cross_entropy(logits, targets)
        accuracy = (logits.argmax(1) == targets).float().mean()
        self.log("train/loss", loss, on_step=False, on_epoch=True)
        self.log("train/accuracy", accuracy, on_step=False, on_epoch=True)
        if not self.automatic_optimization:
            optimizer = self.optimizers()
            optimizer.zero_grad()
            self.manual_backward(loss)  # ... and optimizer.step() forgotten
        return loss

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> dict:
        inputs, targets = batch
        logits = self(inputs)
        self.log("val/loss", F.cross_entropy(logits, targets), on_epoch=True)
        self.log("val/accuracy", (logits.argmax(1) == targets).float().mean(), on_epoch=True)
        return {"logits": logits, "targets": targets}

    def configure_optimizers(self):  # noqa: ANN201 - Lightning's union of return types
        optimizer = make_optimizer(self.model, self.recipe)
        scheduler = make_scheduler(optimizer, self.recipe)
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": scheduler}


def train_lightning(
    model: nn.Module,
    data: Prepared,
    recipe: Recipe,
    seed: int,
    run_name: str,
    tags: dict[str, str],
    experiment: str,
) -> str:
    """Fits ``model`` with Lightning into a new run of ``experiment`` (the logger's, on the
    current tracking URI); returns its id."""
    pl.seed_everything(seed, verbose=False)
    generator = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(
        TensorDataset(data.x_train, data.y_train),
        batch_size=recipe.batch_size,
        shuffle=True,
        generator=generator,
    )
    val_loader = DataLoader(TensorDataset(data.x_val, data.y_val), batch_size=256)
    logger = MLFlowLogger(
        experiment_name=experiment,
        tracking_uri=mlflow.get_tracking_uri(),
        run_name=run_name,
        tags=tags,
    )
    trainer = pl.Trainer(
        max_epochs=recipe.epochs,
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=[AudioDiagCallback(classes=data.classes)],
        gradient_clip_val=recipe.grad_clip or None,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=10,
    )
    trainer.fit(LitClassifier(model, recipe, seed), train_loader, val_loader)
    return logger.run_id
