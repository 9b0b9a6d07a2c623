"""AudioDiagTrainerCallback in real transformers.Trainer runs against a real local MLflow store."""

from __future__ import annotations

import math
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from support.run_tables import epochs, steps  # noqa: E402

from mlflow_audiodiag import schema  # noqa: E402
from mlflow_audiodiag.integrations.huggingface import AudioDiagTrainerCallback  # noqa: E402
from mlflow_audiodiag.model.transformer import AudioTransformer, ModelConfig  # noqa: E402

pytestmark = pytest.mark.integration

N_TRAIN, N_VAL, BATCH, EPOCHS = 64, 32, 8, 2
CLASSES = ["low", "mid", "high"]
GROUPS = ["embedding", "encoder.layers.0", "head"]


class Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.model = AudioTransformer(16, 40, len(CLASSES), ModelConfig(dim=32, heads=2, layers=1))

    def forward(
        self, input_values: torch.Tensor, labels: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        logits = self.model(input_values)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = F.cross_entropy(logits, labels)
        return out


class Clips(Dataset):
    def __init__(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_values": self.features[index], "labels": self.labels[index]}


class GradNormProbe(transformers.TrainerCallback):
    """Independent total gradient norm, taken where the monitor takes it."""

    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs) -> None:
        grads = [p.grad.reshape(-1) for p in model.parameters() if p.grad is not None]
        self.norms.append(torch.linalg.vector_norm(torch.cat(grads)).item())


def _datasets() -> tuple[Clips, Clips]:
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(N_TRAIN + N_VAL, 16, 40, generator=generator)
    energy = features[:, :4].mean(dim=(1, 2))
    labels = torch.bucketize(energy, energy.quantile(torch.tensor([1 / 3, 2 / 3])))
    return Clips(features[:N_TRAIN], labels[:N_TRAIN]), Clips(features[N_TRAIN:], labels[N_TRAIN:])


def _train(
    tmp_path: Path, accumulation: int, metrics_fn: bool = True
) -> tuple[transformers.Trainer, GradNormProbe]:
    torch.manual_seed(0)
    callback, probe = AudioDiagTrainerCallback(classes=CLASSES), GradNormProbe()
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf"),
        num_train_epochs=EPOCHS,
        per_device_train_batch_size=BATCH,
        per_device_eval_batch_size=BATCH,
        gradient_accumulation_steps=accumulation,
        learning_rate=1e-3,
        eval_strategy="epoch",
        save_strategy="no",
        logging_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        dataloader_pin_memory=False,
        seed=0,
    )
    train, val = _datasets()
    trainer = transformers.Trainer(
        model=Classifier(),
        args=args,
        train_dataset=train,
        eval_dataset=val,
        callbacks=[callback, probe],
        compute_metrics=callback.compute_metrics() if metrics_fn else None,
    )
    trainer.train()
    return trainer, probe


def _assert_recorded(client: MlflowClient, run_id: str, probe: GradNormProbe, n_steps: int):
    table = steps(client, run_id)
    assert table.index.tolist() == list(range(1, n_steps + 1))
    # Norms before the Trainer's clipping (max_grad_norm=1.0): clipped, they are the probe's.
    total = table["grad_norm/total"].to_numpy()
    assert list(np.minimum(total, 1.0)) == pytest.approx(probe.norms, rel=1e-4)
    assert total.max() > 1.0  # the clipping bit, and the record shows the norm before it
    assert table["clip/max_norm"].tolist() == pytest.approx([1.0] * n_steps)
    for group in GROUPS:
        for column in (f"grad_norm/{group}", f"update_ratio/{group}"):
            assert table[column].map(math.isfinite).all(), column
    assert {"lr/0", "lr/1"} <= set(table.columns)  # decay / no-decay groups of AdamW
    assert table["train/step_loss"].notna().all()  # the model's own loss
    assert table["train/step_accuracy"].notna().all()
    per_epoch = epochs(client, run_id)
    assert per_epoch.index.tolist() == list(range(1, EPOCHS + 1))
    for column in ("val/accuracy", "val/loss", "val_pred/top_class_fraction", "train/loss"):
        assert per_epoch[column].notna().all(), column
    assert sum(per_epoch[f"val_pred_count/{c}"].iloc[-1] for c in CLASSES) == N_VAL
    tags = client.get_run(run_id).data.tags
    assert tags[schema.TAG_FRONT_END] == "huggingface" and schema.TAG_VERDICT in tags
    return per_epoch


def test_callback_starts_and_ends_its_own_run(tracking_uri: str, tmp_path: Path) -> None:
    trainer, probe = _train(tmp_path, accumulation=1)

    assert mlflow.active_run() is None
    client = MlflowClient()
    (run,) = mlflow.search_runs(output_format="list")
    assert run.info.status == "FINISHED"
    n_steps = EPOCHS * N_TRAIN // BATCH
    assert len(probe.norms) == n_steps
    per_epoch = _assert_recorded(client, run.info.run_id, probe, n_steps)
    evals = [e for e in trainer.state.log_history if "eval_accuracy" in e]
    assert len(evals) == EPOCHS
    assert per_epoch["val/accuracy"].iloc[-1] == pytest.approx(evals[-1]["eval_accuracy"])


def test_active_run_with_gradient_accumulation(tracking_uri: str, tmp_path: Path) -> None:
    with mlflow.start_run() as run:
        _, probe = _train(tmp_path, accumulation=2, metrics_fn=False)  # logits from forwards
        assert mlflow.active_run().info.run_id == run.info.run_id  # not ended by the callback

    n_steps = EPOCHS * N_TRAIN // BATCH // 2
    assert len(probe.norms) == n_steps
    _assert_recorded(MlflowClient(), run.info.run_id, probe, n_steps)
