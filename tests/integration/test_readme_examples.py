"""The README's plain-loop, Lightning and Hugging Face examples, run as written (read from the
README, so they cannot drift), on a healthy and a too-low learning rate, on real audio."""

from __future__ import annotations

import re
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient
from support.audio_data import AudioSplits, embedded_audio
from torch import nn

from mlflow_audiodiag.diagnosis.rules import LR_TOO_LOW
from mlflow_audiodiag.reporting.writeback import diagnose_run

pytestmark = [pytest.mark.integration, pytest.mark.slow]

README = Path(__file__).resolve().parents[2] / "README.md"
EPOCHS = 10


def readme_example(name: str) -> str:
    """The python block that follows ``<!-- example: name -->`` in the README."""
    found = re.search(
        rf"<!-- example: {re.escape(name)} -->\s*```python\n(.*?)```", README.read_text(), re.S
    )
    assert found, f"README has no example {name!r}"
    return found.group(1)


@pytest.fixture(scope="module")
def audio(tmp_path_factory: pytest.TempPathFactory) -> AudioSplits:
    return embedded_audio(tmp_path_factory.mktemp("readme-audio"))


class SmallCNN(nn.Module):
    """Conv blocks over mel bins that keep the time axis, then a classifier."""

    def __init__(self, n_mels: int, n_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(n_mels, 32, 5, padding=2), nn.BatchNorm1d(32), nn.ReLU(),
            nn.Conv1d(32, 32, 5, padding=2, stride=2), nn.BatchNorm1d(32), nn.ReLU(),
        )  # fmt: skip
        self.classifier = nn.Linear(32 * 2, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        return self.classifier(torch.cat([h.mean(dim=2), h.amax(dim=2)], dim=1))


class GRUClassifier(nn.Module):
    def __init__(self, n_mels: int, n_classes: int) -> None:
        super().__init__()
        self.rnn = nn.GRU(n_mels, 48, num_layers=2, batch_first=True)
        self.out = nn.Linear(48, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.rnn(x.transpose(1, 2))[0].mean(dim=1))


def _ast(n_mels: int, n_frames: int, n_classes: int) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    config = transformers.ASTConfig(
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=96,
        num_mel_bins=n_mels,
        max_length=n_frames,
        patch_size=16,
        frequency_stride=8,
        time_stride=8,
        num_labels=n_classes,
    )
    return transformers.ASTForAudioClassification(config)  # random weights, no download


def _run(example: str, audio: AudioSplits, learning_rate: float, tmp_path: Path) -> str:
    torch.manual_seed(0)
    train_loader, val_loader = audio.loaders()
    n_mels, n_frames = audio.train[0].shape[1:]
    namespace = {
        "class_names": audio.classes,
        "epochs": EPOCHS,
        "learning_rate": learning_rate,
        "train_loader": train_loader,
        "val_loader": val_loader,
    }
    if example == "plain-loop":
        namespace["model"] = SmallCNN(n_mels, len(audio.classes))
    elif example == "lightning":
        pytest.importorskip("lightning")
        namespace["network"] = GRUClassifier(n_mels, len(audio.classes))
    else:
        namespace["model"] = _ast(n_mels, n_frames, len(audio.classes))
        namespace["train_dataset"], namespace["val_dataset"] = audio.hf_datasets()
        namespace["output_dir"] = str(tmp_path / "hf")
    exec(compile(readme_example(example), f"README:{example}", "exec"), namespace)
    return mlflow.last_active_run().info.run_id


@pytest.mark.parametrize("example", ["plain-loop", "lightning", "huggingface"])
@pytest.mark.parametrize(
    ("learning_rate", "verdict", "cause"),
    [(3e-3, "healthy", None), (1e-6, "stagnant", LR_TOO_LOW)],
    ids=["healthy", "lr_too_low"],
)
def test_readme_example_is_diagnosed_right(
    example: str,
    learning_rate: float,
    verdict: str,
    cause: str | None,
    audio,
    tracking_uri,
    tmp_path: Path,
) -> None:
    run_id = _run(example, audio, learning_rate, tmp_path)
    client = MlflowClient()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["audiodiag.verdict"] == verdict  # written back when training ended
    diagnosis = diagnose_run(run_id, client, write=False)
    assert (diagnosis.verdict, diagnosis.primary_cause) == (verdict, cause)
    assert diagnosis.skipped_checks == {}  # every contract signal was recorded
    for finding in diagnosis.findings:
        assert "?" not in finding.fix and "-P " not in finding.fix, finding.fix
    assert len(run.data.metrics) <= 40
