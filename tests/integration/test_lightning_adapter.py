"""AudioDiagCallback in real Lightning training runs against a real local MLflow store."""

from __future__ import annotations

import math

import mlflow
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("lightning.pytorch")
from lightning.pytorch.loggers import MLFlowLogger  # noqa: E402
from support.run_tables import epochs, monitor_json, steps  # noqa: E402

from mlflow_audiodiag import schema  # noqa: E402
from mlflow_audiodiag.integrations.lightning import AudioDiagCallback  # noqa: E402
from mlflow_audiodiag.model.transformer import AudioTransformer, ModelConfig  # noqa: E402

pytestmark = pytest.mark.integration

N_TRAIN, N_VAL, BATCH, EPOCHS = 64, 32, 8, 2
CLASSES = ["low", "mid", "high"]
GROUPS = ["embedding", "encoder.layers.0", "head"]


class Classifier(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.model = AudioTransformer(16, 40, len(CLASSES), ModelConfig(dim=32, heads=2, layers=1))
        self.batch_losses: list[float] = []

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.model(features)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        features, targets = batch
        loss = F.cross_entropy(self(features), targets)
        self.batch_losses.append(loss.item())
        return loss

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        features, targets = batch  # nothing returned: the callback reads the forward pass
        self.log("val_acc", (self(features).argmax(dim=1) == targets).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


class GradNormProbe(pl.Callback):
    """Independent total gradient norm, taken where the monitor takes it."""

    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grads = [p.grad.reshape(-1) for p in pl_module.parameters() if p.grad is not None]
        self.norms.append(torch.linalg.vector_norm(torch.cat(grads)).item())


def _loaders() -> tuple[DataLoader, DataLoader]:
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(N_TRAIN + N_VAL, 16, 40, generator=generator)
    energy = features[:, :4].mean(dim=(1, 2))
    labels = torch.bucketize(energy, energy.quantile(torch.tensor([1 / 3, 2 / 3])))
    train = TensorDataset(features[:N_TRAIN], labels[:N_TRAIN])
    val = TensorDataset(features[N_TRAIN:], labels[N_TRAIN:])
    return DataLoader(train, batch_size=BATCH, shuffle=True), DataLoader(val, batch_size=BATCH)


def _fit(callbacks: list, **trainer_kwargs) -> Classifier:
    torch.manual_seed(0)
    module = Classifier()
    trainer = pl.Trainer(
        max_epochs=EPOCHS,
        accelerator="cpu",
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=1,
        log_every_n_steps=4,
        callbacks=callbacks,
        **trainer_kwargs,
    )
    train, val = _loaders()
    trainer.fit(module, train, val)
    return module


def _assert_recorded(client: MlflowClient, run_id: str, n_steps: int) -> pd.DataFrame:
    table = steps(client, run_id)
    assert table.index.tolist() == list(range(1, n_steps + 1))
    for group in GROUPS:
        for column in (f"grad_norm/{group}", f"update_ratio/{group}"):
            assert (table[column] > 0).all() and table[column].map(math.isfinite).all(), column
    assert table["lr/0"].notna().all() and table["train/step_loss"].notna().all()
    assert table["train/step_accuracy"].notna().all()  # logits of the forward, batch targets
    per_epoch = epochs(client, run_id)
    assert per_epoch.index.tolist() == list(range(1, EPOCHS + 1))
    for column in ("val/accuracy", "val/loss", "val_pred/top_class_fraction", "train/loss"):
        assert per_epoch[column].notna().all(), column
    counts = [per_epoch[f"val_pred_count/{c}"].iloc[-1] for c in CLASSES]
    assert sum(counts) == N_VAL
    summary = monitor_json(client, run_id)
    assert summary["labels/train/n"] == N_TRAIN and summary["labels/val/n"] == N_VAL
    assert client.get_run(run_id).data.tags[schema.TAG_FRONT_END] == "lightning"
    assert schema.TAG_VERDICT in client.get_run(run_id).data.tags  # diagnosed at fit end
    return table


def test_mlflow_logger_run_records_pre_clipping_norms(tracking_uri: str) -> None:
    probe = GradNormProbe()
    logger = MLFlowLogger(experiment_name="lightning-adapter", tracking_uri=tracking_uri)
    # The probe runs after the monitor's callback, i.e. on the same unclipped gradients.
    _fit([AudioDiagCallback(classes=CLASSES), probe], logger=logger, gradient_clip_val=1e-3)

    client = MlflowClient(tracking_uri)
    n_steps = EPOCHS * N_TRAIN // BATCH
    table = _assert_recorded(client, logger.run_id, n_steps)
    assert len(probe.norms) == n_steps
    assert table["grad_norm/total"].tolist() == pytest.approx(probe.norms, rel=1e-4)
    assert table["grad_norm/total"].iloc[-1] > 1e-3  # recorded before Lightning clipped
    assert table["clip/max_norm"].tolist() == pytest.approx([1e-3] * n_steps)


def test_active_run_with_gradient_accumulation(tracking_uri: str) -> None:
    with mlflow.start_run() as run:
        module = _fit([AudioDiagCallback(classes=CLASSES)], logger=False, accumulate_grad_batches=2)

    client = MlflowClient()
    n_steps = EPOCHS * N_TRAIN // BATCH // 2
    table = _assert_recorded(client, run.info.run_id, n_steps)
    # The step loss is the mean loss of the step's two micro-batches.
    expected = [sum(module.batch_losses[i : i + 2]) / 2 for i in range(0, 2 * n_steps, 2)]
    assert table["train/step_loss"].tolist() == pytest.approx(expected, rel=1e-5)


def test_without_an_mlflow_run_fails_clearly(tracking_uri: str) -> None:
    with pytest.raises(RuntimeError, match="needs an MLflow run"):
        _fit([AudioDiagCallback()], logger=False, max_steps=1)
