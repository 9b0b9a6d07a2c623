import pytest
import torch
from torch import nn

from mlflow_audiodiag.model.transformer import AudioTransformer, ModelConfig
from mlflow_audiodiag.monitoring.groups import ParameterGroups


def _transformer(layers: int = 2) -> AudioTransformer:
    return AudioTransformer(16, 40, 3, ModelConfig(dim=32, heads=2, layers=layers))


class _UserModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8))
        self.act = nn.ReLU()
        self.classifier = nn.Linear(8, 2)
        self.scale = nn.Parameter(torch.ones(1))
        self.blocks = nn.ModuleList(nn.Linear(2, 2) for _ in range(11))


def _names(groups: ParameterGroups, group: str) -> set[str]:
    return {name for name, _ in groups[group]}


def test_default_groups_of_the_audio_transformer() -> None:
    model = _transformer(layers=3)
    groups = ParameterGroups.default(model)
    assert list(groups) == ["embedding", "encoder.0", "encoder.1", "encoder.2", "head"]
    assert _names(groups, "embedding") == {
        "cls_token",
        "pos_embedding",
        "embedding.proj.weight",
        "embedding.proj.bias",
    }
    assert _names(groups, "head") == {"norm.weight", "norm.bias", "head.weight", "head.bias"}
    assert all(n.startswith("encoder.layers.1.") for n in _names(groups, "encoder.1"))
    tracked = [id(p) for p in groups.parameters()]
    assert sorted(tracked) == sorted(id(p) for p in model.parameters())
    assert groups.frozen_fraction() == dict.fromkeys(groups, 0.0)


def test_default_groups_of_any_model_follow_top_level_children() -> None:
    model = _UserModel()
    groups = ParameterGroups.default(model)
    assert list(groups) == ["backbone", "classifier", "blocks", "other"]  # act has no parameters
    assert _names(groups, "other") == {"scale"}
    assert len(groups.parameters()) == len(list(model.parameters()))


def test_prefixes_match_whole_components_and_the_longest_wins() -> None:
    model = _UserModel()
    groups = ParameterGroups.from_prefixes(
        model, {"blocks": ["blocks"], "block1": ["blocks.1."], "head": ["classifier"]}
    )
    assert list(groups) == ["blocks", "block1", "head", "other"]
    assert _names(groups, "block1") == {"blocks.1.weight", "blocks.1.bias"}
    assert "blocks.10.weight" in _names(groups, "blocks")
    assert _names(groups, "other") == {
        "backbone.0.weight",
        "backbone.0.bias",
        "backbone.2.weight",
        "backbone.2.bias",
        "scale",
    }


def test_prefix_that_matches_nothing_is_named() -> None:
    with pytest.raises(ValueError, match="'encoder.layer.0'"):
        ParameterGroups.from_prefixes(_transformer(), {"enc": ["encoder.layer.0"]})
    with pytest.raises(ValueError, match="'bloc'"):
        ParameterGroups.from_prefixes(_UserModel(), {"b": ["bloc"]})


def test_frozen_parameters_are_reported_not_tracked() -> None:
    model = _transformer()
    for param in model.embedding.parameters():
        param.requires_grad_(False)
    model.cls_token.requires_grad_(False)
    model.pos_embedding.requires_grad_(False)
    model.head.weight.requires_grad_(False)
    groups = ParameterGroups.default(model)
    assert "embedding" in groups and groups["embedding"] == []
    head_total = sum(p.numel() for p in (*model.norm.parameters(), *model.head.parameters()))
    fractions = groups.frozen_fraction()
    assert fractions["embedding"] == 1.0
    assert fractions["head"] == pytest.approx(model.head.weight.numel() / head_total)
    assert fractions["encoder.0"] == 0.0
    assert all(p.requires_grad for p in groups.parameters())
    described = groups.describe()
    assert described["head"]["frozen"] == ["head.weight"]
    assert described["head"]["param_count"] == head_total
    metrics = groups.metrics()
    assert metrics["frozen_fraction/embedding"] == 1.0
    assert metrics["param_count/head"] == head_total
