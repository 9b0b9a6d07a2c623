"""AudioDiagTrainerCallback in real transformers.Trainer runs against a real local MLflow store."""

from __future__ import annotations

import math
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from mlflow_audiodiag.monitoring.adapters.huggingface import (  # noqa: E402
    AudioDiagTrainerCallback,
)

from mlflow_audiodiag import schema  # noqa: E402
from mlflow_audiodiag.model.transformer import AudioTransformer, ModelConfig  # noqa: E402

pytestmark = pytest.mark.integration

N_TRAIN, N_VAL, BATCH, EPOCHS = 64, 32, 8, 2
CLASSES = ["low", "mid", "high"]
GROUPS = ["embedding", "encoder.0", "head"]


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


def _train(tmp_path: Path, accumulation: int) -> tuple[transformers.Trainer, GradNormProbe]:
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
        compute_metrics=callback.compute_metrics(),
    )
    trainer.train()
    return trainer, probe


def _history(client: MlflowClient, run_id: str, key: str) -> list:
    return sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)


def _assert_recorded(client: MlflowClient, run_id: str, probe: GradNormProbe, n_steps: int) -> None:
    steps = list(range(1, n_steps + 1))
    total = _history(client, run_id, schema.GRAD_NORM_PREFIX + "total")
    assert [m.step for m in total] == steps
    # Post-clipping norms (max_grad_norm=1.0), identical to the probe's.
    assert [m.value for m in total] == pytest.approx(probe.norms, rel=1e-4)
    assert max(m.value for m in total) <= 1.0 + 1e-4
    for group in GROUPS:
        for prefix in (schema.GRAD_NORM_PREFIX, schema.UPDATE_RATIO_PREFIX):
            history = _history(client, run_id, prefix + group)
            assert [m.step for m in history] == steps, prefix + group
            assert all(math.isfinite(m.value) for m in history)
    for index in (0, 1):  # decay / no-decay param groups of the Trainer's AdamW
        assert [m.step for m in _history(client, run_id, f"{schema.LR_PREFIX}{index}")] == steps
    for key in ("accuracy", "top_class_fraction", "hist_entropy"):
        history = _history(client, run_id, schema.VAL_PRED_PREFIX + key)
        assert [m.step for m in history] == list(range(1, EPOCHS + 1)), key
    counts = [_history(client, run_id, schema.VAL_PRED_COUNT_PREFIX + c) for c in CLASSES]
    assert sum(h[-1].value for h in counts) == N_VAL


def test_callback_starts_and_ends_its_own_run(tracking_uri: str, tmp_path: Path) -> None:
    trainer, probe = _train(tmp_path, accumulation=1)

    assert mlflow.active_run() is None
    client = MlflowClient()
    (run,) = mlflow.search_runs(output_format="list")
    assert run.info.status == "FINISHED"
    n_steps = EPOCHS * N_TRAIN // BATCH
    assert len(probe.norms) == n_steps
    _assert_recorded(client, run.info.run_id, probe, n_steps)
    evals = [e for e in trainer.state.log_history if "eval_accuracy" in e]
    assert len(evals) == EPOCHS
    val_accuracy = _history(client, run.info.run_id, schema.VAL_PRED_PREFIX + "accuracy")
    assert val_accuracy[-1].value == pytest.approx(evals[-1]["eval_accuracy"])


def test_active_run_with_gradient_accumulation(tracking_uri: str, tmp_path: Path) -> None:
    with mlflow.start_run() as run:
        _, probe = _train(tmp_path, accumulation=2)
        assert mlflow.active_run().info.run_id == run.info.run_id  # not ended by the callback

    n_steps = EPOCHS * N_TRAIN // BATCH // 2
    assert len(probe.norms) == n_steps
    _assert_recorded(MlflowClient(), run.info.run_id, probe, n_steps)
