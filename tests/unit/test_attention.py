import pytest
import torch
from torch import nn

from mlflow_audiodiag.model.transformer import AudioTransformer, ModelConfig
from mlflow_audiodiag.monitoring.attention import attention_entropy

DIM = 32


def _model(layers: int = 2) -> AudioTransformer:
    torch.manual_seed(0)
    return AudioTransformer(16, 40, 3, ModelConfig(dim=DIM, heads=2, layers=layers))


def _inputs() -> torch.Tensor:
    return torch.randn(3, 16, 40, generator=torch.Generator().manual_seed(1))


def _attention_modules(model: nn.Module) -> list[nn.MultiheadAttention]:
    return [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)]


class _UserModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(8, 2)  # sequence-first, called positionally
        self.out = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attended, _ = self.attention(x, x, x, None, False)
        return self.out(attended.mean(0))


def test_one_value_per_encoder_layer_in_unit_range() -> None:
    values = attention_entropy(_model(layers=3), _inputs())
    assert len(values) == 3
    assert all(0.0 < v <= 1.0 for v in values)


def test_zero_query_key_projections_give_uniform_attention() -> None:
    model = _model()
    with torch.no_grad():
        for module in _attention_modules(model):
            module.in_proj_weight[: 2 * DIM].zero_()
            module.in_proj_bias[: 2 * DIM].zero_()
    assert attention_entropy(model, _inputs()) == pytest.approx([1.0, 1.0], abs=1e-5)


def test_peaked_attention_has_lower_entropy() -> None:
    model = _model()
    baseline = attention_entropy(model, _inputs())
    with torch.no_grad():
        for module in _attention_modules(model):
            identity = torch.eye(DIM) * 20.0
            module.in_proj_weight[:DIM] = identity
            module.in_proj_weight[DIM : 2 * DIM] = identity
    peaked = attention_entropy(model, _inputs())
    assert all(p < 0.5 * b for p, b in zip(peaked, baseline, strict=True))


def test_probing_leaves_the_model_as_it_was() -> None:
    model = _model()
    inputs = _inputs()
    model.eval()
    with torch.no_grad():
        before = model(inputs)
    model.train()
    model.encoder.layers[1].eval()  # mixed modes come back as they were
    fastpath = torch.backends.mha.get_fastpath_enabled()
    attention_entropy(model, inputs)
    assert model.training and model.encoder.layers[0].training
    assert not model.encoder.layers[1].training
    assert torch.backends.mha.get_fastpath_enabled() == fastpath
    for module in _attention_modules(model):
        assert not module._forward_hooks and not module._forward_pre_hooks
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(inputs), before)


def test_user_models() -> None:
    torch.manual_seed(0)
    values = attention_entropy(_UserModel(), torch.randn(5, 2, 8))
    assert len(values) == 1 and 0.0 < values[0] <= 1.0
    assert attention_entropy(nn.Sequential(nn.Linear(4, 2)), torch.randn(2, 4)) == []


def test_frozen_model_in_eval_mode_is_still_probed() -> None:
    """Frozen weights would otherwise let the fused encoder path skip the attention hooks."""
    model = _model()
    model.requires_grad_(False)
    model.eval()
    values = attention_entropy(model, _inputs())
    assert len(values) == 2 and all(0.0 < v <= 1.0 for v in values)
