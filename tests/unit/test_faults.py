"""The deliberate faults of the fault zoo do exactly what they say."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mlflow_audiodiag.errors import ConfigError
from mlflow_audiodiag.features.extractor import FeatureExtractor
from mlflow_audiodiag.features.normalization import FeatureNormalizer, fit_normalization
from mlflow_audiodiag.features.store import FeatureStore, SplitFeatures
from mlflow_audiodiag.model.transformer import AudioTransformer, ModelConfig
from mlflow_audiodiag.training.config import FaultConfig, TrainConfig
from mlflow_audiodiag.training.faults import apply_data_faults, apply_model_faults
from mlflow_audiodiag.training.loop import Trainer

BINS, FRAMES, CLASSES = 8, 16, 4


def _split(name: str, n: int, seed: int) -> SplitFeatures:
    rng = np.random.default_rng(seed)
    return SplitFeatures(
        name=name,
        paths=[f"{name}/{i}.wav" for i in range(n)],
        labels=rng.integers(0, CLASSES, n),
        features=rng.normal(size=(n, BINS, FRAMES)).astype(np.float32),
        levels=np.zeros((n, 3)),
    )


def _store() -> FeatureStore:
    splits = {
        name: _split(name, n, i)
        for i, (name, n) in enumerate([("train", 400), ("val", 40), ("test", 40)])
    }
    return FeatureStore([f"c{i}" for i in range(CLASSES)], splits, [], 0, Path("."))


def _model(seed: int = 0) -> AudioTransformer:
    torch.manual_seed(seed)
    config = ModelConfig(dim=16, heads=2, layers=1, dropout=0.0, patch_frames=4)
    return AudioTransformer(BINS, FRAMES, CLASSES, config)


@pytest.mark.parametrize(
    "bad",
    [
        {"labels_to_class0": 1.5},
        {"labels_to_class0": -0.1},
        {"attention_init_scale": 0.0},
        {"embedding_saturation": -1.0},
    ],
)
def test_fault_values_out_of_range_are_rejected(bad: dict) -> None:
    with pytest.raises(ConfigError):
        FaultConfig(**bad)


def test_faults_are_off_by_default() -> None:
    assert not FaultConfig().active
    assert FaultConfig(skip_optimizer_step=True).active
    assert apply_data_faults(store := _store(), FaultConfig(), seed=0) is store


def test_labels_fall_back_to_class0_in_train_only_and_val_test_shift() -> None:
    store = _store()
    faults = FaultConfig(labels_to_class0=0.9, eval_feature_offset=2.5)
    faulty = apply_data_faults(store, faults, seed=0)
    share = float(np.mean(faulty.splits["train"].labels == 0))
    assert 0.88 <= share <= 0.96  # 90% forced plus the quarter of the rest that was 0 already
    changed = faulty.splits["train"].labels != store.splits["train"].labels
    assert np.all(faulty.splits["train"].labels[changed] == 0)
    np.testing.assert_array_equal(faulty.splits["train"].features, store.splits["train"].features)
    for name in ("val", "test"):
        np.testing.assert_array_equal(faulty.splits[name].labels, store.splits[name].labels)
        np.testing.assert_allclose(
            faulty.splits[name].features, store.splits[name].features + 2.5, rtol=1e-6
        )
    assert float(np.mean(store.splits["train"].labels == 0)) < 0.4  # the input is untouched


def test_freeze_turns_off_matching_parameters_and_names_unknown_prefixes() -> None:
    model = _model()
    apply_model_faults(model, FaultConfig(freeze="embedding, encoder"))
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("embedding", "encoder")) for n in frozen)
    assert model.head.weight.requires_grad
    with pytest.raises(ConfigError, match="decoder"):
        apply_model_faults(_model(), FaultConfig(freeze="decoder"))


def test_attention_init_scale_multiplies_query_and_key_weights_only() -> None:
    plain, scaled = _model(), _model()
    apply_model_faults(scaled, FaultConfig(attention_init_scale=30.0))
    before = plain.encoder.layers[0].self_attn.in_proj_weight
    after = scaled.encoder.layers[0].self_attn.in_proj_weight
    dim = before.shape[1]
    torch.testing.assert_close(after[: 2 * dim], 30.0 * before[: 2 * dim])
    torch.testing.assert_close(after[2 * dim :], before[2 * dim :])


def _embedding_grad_norm(model: AudioTransformer) -> float:
    features = torch.randn(8, BINS, FRAMES, generator=torch.Generator().manual_seed(1))
    model(features).logsumexp(dim=1).sum().backward()
    grads = [p.grad.reshape(-1) for n, p in model.named_parameters() if n.startswith("embedding")]
    return float(torch.linalg.vector_norm(torch.cat(grads)))


def test_embedding_saturation_makes_the_embedding_gradient_vanish() -> None:
    saturated = _model()
    apply_model_faults(saturated, FaultConfig(embedding_saturation=30.0))
    assert _embedding_grad_norm(_model()) > 1e-3
    assert _embedding_grad_norm(saturated) < 1e-9


def _trainer(faults: FaultConfig) -> tuple[Trainer, torch.Tensor, torch.Tensor]:
    options = {"dim": 16, "heads": 2, "layers": 1, "dropout": 0.0, "n_mels": BINS}
    options.update({"specaug_p": 0.0, "progress": False})
    base = TrainConfig.from_flat(options)
    config = TrainConfig(**{**base.__dict__, "faults": faults})
    features = torch.randn(16, BINS, FRAMES)
    stats = fit_normalization([features], "per_bin")
    trainer = Trainer(
        _model(), FeatureExtractor(config.features), FeatureNormalizer(stats), config, CLASSES
    )
    return trainer, features, torch.arange(16) % CLASSES


def test_skip_optimizer_step_computes_gradients_but_never_changes_weights() -> None:
    trainer, features, targets = _trainer(FaultConfig(skip_optimizer_step=True))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    for _ in range(3):
        trainer.train_step(features, targets)
    assert all(p.grad is not None for p in trainer.model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))


def test_shuffle_labels_permutes_the_training_labels_once_against_their_clips() -> None:
    store = _store()
    shuffled = apply_data_faults(store, FaultConfig(shuffle_labels=True), seed=0)
    before, after = store.split("train").labels, shuffled.split("train").labels
    assert sorted(after.tolist()) == sorted(before.tolist())  # the same label histogram
    assert (after != before).mean() > 0.5  # most clips carry another clip's label
    again = apply_data_faults(store, FaultConfig(shuffle_labels=True), seed=0)
    assert np.array_equal(again.split("train").labels, after)  # fixed: a model can memorise it
    assert np.array_equal(shuffled.split("val").labels, store.split("val").labels)
