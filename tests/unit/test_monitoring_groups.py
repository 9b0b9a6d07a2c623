"""Default parameter groups mean "per layer" for any model, in forward order."""

import re

import pytest
import torch
from torch import nn

from mlflow_audiodiag.model.transformer import AudioTransformer, ModelConfig
from mlflow_audiodiag.monitoring.capture import ForwardOrder
from mlflow_audiodiag.monitoring.groups import ParameterGroups


def _transformer(layers: int = 2) -> AudioTransformer:
    return AudioTransformer(16, 40, 3, ModelConfig(dim=32, heads=2, layers=layers))


def _names(groups: ParameterGroups, group: str) -> set[str]:
    return {name for name, _ in groups[group]}


def _forward_order(model: nn.Module, *inputs: torch.Tensor) -> list[str]:
    groups = ParameterGroups.default(model)
    ForwardOrder(groups.root(model), lambda first: groups.reorder(_prefixed(groups, first)))
    model(*inputs)
    return groups.order


def _prefixed(groups: ParameterGroups, first: dict[str, int]) -> dict[str, int]:
    return {f"{groups.prefix}{name}".rstrip("."): i for name, i in first.items()}


class _CNN(nn.Module):
    """A user's CNN: conv blocks in an nn.Sequential, then a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )  # fmt: skip
        self.classifier = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x.unsqueeze(1)).flatten(1))


class _Reversed(nn.Module):
    """Registered head first, run last: forward order is not registration order."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(8, 2)
        self.blocks = nn.ModuleList(nn.Linear(8, 8) for _ in range(3))
        self.stem = nn.Linear(4, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = torch.relu(block(x))
        return self.head(x)


class _GRU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(8, 16, num_layers=3, batch_first=True, bidirectional=True)
        self.norm = nn.LayerNorm(32)
        self.out = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(self.rnn(x)[0][:, -1]))


def test_the_audio_transformer_gets_stem_one_group_per_layer_and_head() -> None:
    model = _transformer(layers=3)
    groups = ParameterGroups.default(model)
    assert list(groups) == [
        "embedding",
        "encoder.layers.0",
        "encoder.layers.1",
        "encoder.layers.2",
        "head",
    ]
    assert _names(groups, "embedding") == {
        "cls_token",
        "pos_embedding",
        "embedding.proj.weight",
        "embedding.proj.bias",
    }
    assert _names(groups, "head") == {"norm.weight", "norm.bias", "head.weight", "head.bias"}
    tracked = [id(p) for p in groups.parameters()]
    assert sorted(tracked) == sorted(id(p) for p in model.parameters())


def test_a_plain_sequential_mlp_gets_one_readable_group_per_layer() -> None:
    mlp = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.BatchNorm1d(16), nn.Linear(16, 4))
    groups = ParameterGroups.default(mlp)
    assert list(groups) == ["linear.0", "linear.3"]  # never a bare "0"
    assert _names(groups, "linear.0") == {"0.weight", "0.bias", "2.weight", "2.bias"}


def test_a_cnn_gets_a_group_per_conv_block_with_its_norm_and_the_classifier() -> None:
    groups = ParameterGroups.default(_CNN())
    assert list(groups) == ["features.0", "features.4", "classifier"]
    assert _names(groups, "features.4") >= {"features.5.weight", "features.5.bias"}


def test_a_multi_layer_rnn_is_split_per_layer() -> None:
    groups = ParameterGroups.default(_GRU())
    assert list(groups) == ["rnn.l0", "rnn.l1", "rnn.l2", "out"]
    assert "rnn.weight_hh_l1_reverse" in _names(groups, "rnn.l1")


def test_groups_follow_the_forward_pass_not_registration() -> None:
    model = _Reversed()
    assert list(ParameterGroups.default(model)) == [
        "head",
        "blocks.0",
        "blocks.1",
        "blocks.2",
        "stem",
    ]
    assert _forward_order(model, torch.randn(2, 4)) == [
        "stem",
        "blocks.0",
        "blocks.1",
        "blocks.2",
        "head",
    ]


def test_a_wrapper_is_grouped_as_the_model_it_holds() -> None:
    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = _Reversed()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x)

    wrapper = Wrapper()
    groups = ParameterGroups.default(wrapper)
    assert groups.prefix == "model."
    assert _names(groups, "stem") == {"model.stem.weight", "model.stem.bias"}
    assert _forward_order(wrapper, torch.randn(2, 4))[0] == "stem"


def test_more_blocks_than_the_cap_are_merged_in_runs_of_neighbours() -> None:
    deep = nn.Sequential(*[nn.Linear(4, 4) for _ in range(100)])
    groups = ParameterGroups.default(deep, max_groups=48)
    assert len(groups) == 48
    assert list(groups)[:2] == ["linear.0-1", "linear.2-3"]
    described = groups.describe()
    assert described["merged_from"] == 100 and "merged" in described["note"]
    assert sum(len(params) for params in groups.values()) == 200


def test_prefixes_match_whole_components_and_the_longest_wins() -> None:
    model = _Reversed()
    groups = ParameterGroups.from_prefixes(
        model, {"blocks": ["blocks"], "block1": ["blocks.1."], "out": ["head"]}
    )
    assert list(groups) == ["blocks", "block1", "out", "other"]
    assert _names(groups, "block1") == {"blocks.1.weight", "blocks.1.bias"}
    assert _names(groups, "other") == {"stem.weight", "stem.bias"}


def test_prefix_that_matches_nothing_is_named() -> None:
    with pytest.raises(ValueError, match="'encoder.layer.0'"):
        ParameterGroups.from_prefixes(_transformer(), {"enc": ["encoder.layer.0"]})


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
    assert fractions["encoder.layers.0"] == 0.0
    assert all(p.requires_grad for p in groups.parameters())
    described = groups.describe()["groups"]
    assert described["head"]["frozen"] == ["head.weight"]
    assert described["head"]["param_count"] == head_total


def test_a_hugging_face_audio_transformer_gets_one_group_per_encoder_layer_in_order() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.ASTConfig(
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
        num_mel_bins=16,
        max_length=32,
        patch_size=8,
        frequency_stride=8,
        time_stride=8,
        num_labels=4,
    )
    model = transformers.ASTForAudioClassification(config)  # random weights, no download
    order = _forward_order(model, torch.randn(2, 32, 16))
    layers = [g for g in order if re.search(r"\.layers?\.\d+$", g)]
    assert [int(g.rsplit(".", 1)[1]) for g in layers] == [0, 1, 2]
    assert order.index(layers[-1]) - order.index(layers[0]) == 2  # one group per layer
    assert order[0] == "audio_spectrogram_transformer.embeddings"
    assert order[-1] == "classifier"
