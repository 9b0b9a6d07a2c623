"""Classifiers as a user would write them, on log-mel input ``[batch, mels, frames]``.

``build_model(arch, n_mels, n_classes, size, variant, dropout)``: ``size`` is ``small``
(default), ``tiny`` (too small to fit) or ``big`` (over-parameterised); ``variant`` is a
deliberate architectural fault: ``sigmoid_deep`` (deep sigmoid stack) or ``qk_scale``
(attention query/key weights x30).
"""

from __future__ import annotations

import torch
from torch import nn

ARCHITECTURES = ("cnn", "gru", "mlp", "transformer")


class SmallCNN(nn.Module):
    """Conv blocks (conv, batch norm, ReLU, pooling) and a linear classifier."""

    def __init__(
        self,
        n_classes: int,
        channels: tuple[int, ...] = (8, 16, 32),
        dropout: float = 0.1,
        activation: type[nn.Module] = nn.ReLU,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = 1
        for index, width in enumerate(channels):
            layers.append(nn.Conv2d(previous, width, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(width))
            layers.append(activation())
            last = index == len(channels) - 1
            layers.append(nn.AdaptiveMaxPool2d(1) if last else nn.MaxPool2d(2))
            previous = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(previous, n_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x.unsqueeze(1)))


class GRUClassifier(nn.Module):
    """A GRU over mel frames; its outputs, max-pooled over time, go to a linear head."""

    def __init__(
        self, n_mels: int, n_classes: int, hidden: int = 64, layers: int = 1, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.rnn = nn.GRU(n_mels, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Neighbouring frames averaged in pairs (20 ms steps): half the recurrent steps.
        frames = nn.functional.avg_pool1d(x, 2, ceil_mode=True).transpose(1, 2)
        outputs, _ = self.rnn(frames)
        return self.head(outputs.amax(dim=1))


def pooled(x: torch.Tensor) -> torch.Tensor:
    """Mean and standard deviation of every mel band over time."""
    return torch.cat([x.mean(dim=2), x.std(dim=2)], dim=1)


class PooledMLP(nn.Module):
    """An MLP on clip-level statistics (mean and std of each mel band)."""

    def __init__(
        self,
        n_mels: int,
        n_classes: int,
        hidden: int = 128,
        depth: int = 2,
        dropout: float = 0.1,
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = 2 * n_mels
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), activation(), nn.Dropout(dropout)]
            width = hidden
        self.net = nn.Sequential(*layers, nn.Linear(width, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(pooled(x))


class TransformerClassifier(nn.Module):
    """Frames projected to tokens, learned positions, ``nn.TransformerEncoder``, mean pool."""

    def __init__(
        self,
        n_mels: int,
        n_classes: int,
        dim: int = 64,
        heads: int = 4,
        layers: int = 2,
        dropout: float = 0.1,
        max_frames: int = 256,
    ) -> None:
        super().__init__()
        self.proj = nn.Linear(n_mels, dim)
        self.pos = nn.Parameter(torch.zeros(1, max_frames, dim))
        nn.init.normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(
            dim, heads, dim_feedforward=2 * dim, dropout=dropout, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Frames averaged in groups of four (40 ms tokens): a quarter of the tokens.
        frames = nn.functional.avg_pool1d(x, 4, ceil_mode=True).transpose(1, 2)
        tokens = self.proj(frames) + self.pos[:, : frames.shape[1]]
        return self.head(self.encoder(tokens).mean(dim=1))


_SIZES: dict[str, dict[str, dict]] = {
    "cnn": {"tiny": {"channels": (8, 8)}, "big": {"channels": (32, 64, 128)}},
    "gru": {"tiny": {"hidden": 3}, "big": {"hidden": 256, "layers": 2}},
    "mlp": {"tiny": {"hidden": 3, "depth": 1}, "big": {"hidden": 1024, "depth": 3}},
    "transformer": {
        "tiny": {"dim": 4, "heads": 1, "layers": 1},
        "big": {"dim": 128, "heads": 4, "layers": 4},
    },
}


def build_model(
    arch: str,
    n_mels: int,
    n_classes: int,
    size: str = "small",
    variant: str = "",
    dropout: float = 0.1,
) -> nn.Module:
    """The user model ``arch`` at ``size`` with the architectural fault ``variant``."""
    kwargs = dict(_SIZES[arch].get(size, {}))
    if arch == "cnn":
        if variant == "sigmoid_deep":
            kwargs.update(channels=(8, 8, 8, 8, 8, 16), activation=nn.Sigmoid, batch_norm=False)
        model: nn.Module = SmallCNN(n_classes, dropout=dropout, **kwargs)
    elif arch == "gru":
        model = GRUClassifier(n_mels, n_classes, dropout=dropout, **kwargs)
    elif arch == "mlp":
        if variant == "sigmoid_deep":
            kwargs.update(depth=10, hidden=64, activation=nn.Sigmoid)
        model = PooledMLP(n_mels, n_classes, dropout=dropout, **kwargs)
    elif arch == "transformer":
        model = TransformerClassifier(n_mels, n_classes, dropout=dropout, **kwargs)
    else:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    _apply_variant(model, variant)
    return model


def _apply_variant(model: nn.Module, variant: str) -> None:
    with torch.no_grad():
        if variant == "qk_scale":
            for module in model.modules():
                if isinstance(module, nn.MultiheadAttention):
                    dim = module.embed_dim
                    module.in_proj_weight[: 2 * dim].mul_(30.0)
        elif variant not in ("", "sigmoid_deep"):
            raise ValueError(f"unknown model variant {variant!r}")
