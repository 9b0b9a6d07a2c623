import pytest
import torch

from mlflow_audiodiag.errors import ConfigError
from mlflow_audiodiag.features.config import FeatureConfig
from mlflow_audiodiag.features.extractor import FeatureExtractor
from mlflow_audiodiag.features.normalization import FeatureNormalizer, NormalizationStats
from mlflow_audiodiag.model.inference import WaveformClassifier
from mlflow_audiodiag.model.transformer import AudioTransformer, ModelConfig


@pytest.mark.parametrize(
    "config",
    [
        ModelConfig(),
        ModelConfig(patch_bins=16, patch_frames=10, layers=1, dim=32, heads=2),
        ModelConfig(norm_position="post", layers=2, dim=32, heads=2),
    ],
)
def test_forward_backward_reaches_every_parameter(config: ModelConfig) -> None:
    torch.manual_seed(0)
    model = AudioTransformer(n_bins=64, n_frames=101, n_classes=5, config=config)
    features = torch.randn(3, 64, 101)
    logits = model(features)
    assert logits.shape == (3, 5)
    logits.sum().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_patch_count() -> None:
    model = AudioTransformer(64, 101, 3, ModelConfig(patch_bins=16, patch_frames=10))
    assert model.embedding.num_patches == 4 * 10
    assert model.pos_embedding.shape[1] == 41


def test_token_order_matters() -> None:
    """Positional embeddings make the model sensitive to temporal order (needed by the data)."""
    torch.manual_seed(0)
    model = AudioTransformer(16, 40, 2, ModelConfig(dim=32, heads=2, layers=1, dropout=0.0))
    model.eval()
    features = torch.randn(1, 16, 40)
    reversed_in_time = features.flip(-1)
    assert not torch.allclose(model(features), model(reversed_in_time))


def test_bad_configs_name_the_problem() -> None:
    with pytest.raises(ConfigError, match="divisible"):
        ModelConfig(dim=30, heads=4)
    with pytest.raises(ConfigError, match="larger than the features"):
        AudioTransformer(16, 8, 2, ModelConfig(patch_frames=10))
    with pytest.raises(ConfigError, match="at least 2 classes"):
        AudioTransformer(16, 40, 1, ModelConfig())
    with pytest.raises(ConfigError, match="norm_position must be 'pre' or 'post'"):
        ModelConfig(norm_position="middle")  # type: ignore[arg-type]


@pytest.mark.parametrize(("position", "norm_first"), [("pre", True), ("post", False)])
def test_norm_position_sets_each_encoder_layer(position: str, norm_first: bool) -> None:
    model = AudioTransformer(16, 40, 2, ModelConfig(dim=32, heads=2, norm_position=position))
    assert all(layer.norm_first is norm_first for layer in model.encoder.layers)


def test_waveform_classifier_applies_the_training_pipeline() -> None:
    features_config = FeatureConfig(clip_seconds=0.5)
    extractor = FeatureExtractor(features_config)
    normalizer = FeatureNormalizer(
        NormalizationStats(mode="global", mean=[-40.0], std=[20.0], n_clips=1, n_frames=1)
    )
    transformer = AudioTransformer(
        features_config.n_bins, features_config.n_frames, 3, ModelConfig(layers=1, dim=32)
    ).eval()
    model = WaveformClassifier(extractor, normalizer, transformer, ["a", "b", "c"]).eval()
    waves = torch.randn(4, features_config.num_samples) * 0.1
    expected = transformer(normalizer(extractor(waves)))
    torch.testing.assert_close(model(waves), expected)
