"""AST-style transformer classifier over spectrogram patches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from mlflow_audiodiag.errors import ConfigError


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of :class:`AudioTransformer`.

    ``patch_bins`` x ``patch_frames`` is the patch size. ``patch_bins=0`` means full-height
    patches (all bins of ``patch_frames`` frames form one token), which is cheap and suits short
    clips; a positive value tiles the spectrogram in both axes as in AST. ``norm_position``:
    each encoder layer normalizes its input (``"pre"``, stable at high learning rates) or its
    residual sum (``"post"``, the original transformer's layout, which needs warmup and care).
    """

    dim: int = 96
    heads: int = 4
    layers: int = 3
    mlp_ratio: float = 2.0
    dropout: float = 0.1
    patch_bins: int = 0
    patch_frames: int = 4
    norm_position: Literal["pre", "post"] = "pre"

    def __post_init__(self) -> None:
        if self.dim <= 0 or self.layers <= 0 or self.heads <= 0:
            raise ConfigError("dim, heads and layers must be positive")
        if self.dim % self.heads:
            raise ConfigError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.patch_frames <= 0 or self.patch_bins < 0:
            raise ConfigError("patch_frames must be positive and patch_bins >= 0")
        if self.norm_position not in ("pre", "post"):
            raise ConfigError(f"norm_position must be 'pre' or 'post', got {self.norm_position!r}")


class PatchEmbedding(nn.Module):
    """Cuts ``[B, F, T]`` features into non-overlapping patches and projects them to ``dim``."""

    def __init__(self, n_bins: int, n_frames: int, config: ModelConfig) -> None:
        super().__init__()
        patch_bins = config.patch_bins or n_bins
        if patch_bins > n_bins or config.patch_frames > n_frames:
            raise ConfigError(
                f"patch {patch_bins}x{config.patch_frames} is larger than the features "
                f"{n_bins}x{n_frames}; lower patch_bins/patch_frames"
            )
        self.proj = nn.Conv2d(
            1,
            config.dim,
            kernel_size=(patch_bins, config.patch_frames),
            stride=(patch_bins, config.patch_frames),
        )
        self.num_patches = (n_bins // patch_bins) * (n_frames // config.patch_frames)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        patches = self.proj(features.unsqueeze(1))  # [B, dim, F', T']
        return patches.flatten(2).transpose(1, 2)  # [B, num_patches, dim]


class AudioTransformer(nn.Module):
    """Patch embedding, learned positional embedding, CLS token, encoder, final norm, linear head.

    Input: normalized features ``[B, n_bins, n_frames]``; output: logits ``[B, n_classes]``.
    """

    def __init__(self, n_bins: int, n_frames: int, n_classes: int, config: ModelConfig) -> None:
        super().__init__()
        if n_classes < 2:
            raise ConfigError(f"need at least 2 classes, got {n_classes}")
        self.config = config
        self.embedding = PatchEmbedding(n_bins, n_frames, config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.dim))
        self.pos_embedding = nn.Parameter(
            torch.randn(1, self.embedding.num_patches + 1, config.dim) * 0.02
        )
        self.dropout = nn.Dropout(config.dropout)
        layer = nn.TransformerEncoderLayer(
            d_model=config.dim,
            nhead=config.heads,
            dim_feedforward=int(config.dim * config.mlp_ratio),
            dropout=config.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=config.norm_position == "pre",
        )
        self.encoder = nn.TransformerEncoder(
            layer, num_layers=config.layers, enable_nested_tensor=False
        )
        self.norm = nn.LayerNorm(config.dim)
        self.head = nn.Linear(config.dim, n_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        tokens = self.embedding(features)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        tokens = self.dropout(torch.cat([cls, tokens], dim=1) + self.pos_embedding)
        encoded = self.encoder(tokens)
        return self.head(self.norm(encoded[:, 0]))
