"""The exported model: waveform in, class logits out."""

from __future__ import annotations

import torch
from torch import nn

from mlflow_audiodiag.features.extractor import FeatureExtractor
from mlflow_audiodiag.features.normalization import FeatureNormalizer
from mlflow_audiodiag.model.transformer import AudioTransformer


class WaveformClassifier(nn.Module):
    """Feature extraction, the fitted normalization and the transformer as one module.

    This is what a run logs as its model, so inference applies exactly the training pipeline.
    Input: mono waveforms ``[B, samples]`` at the training sample rate and clip length.
    """

    def __init__(
        self,
        extractor: FeatureExtractor,
        normalizer: FeatureNormalizer,
        transformer: AudioTransformer,
        classes: list[str],
    ) -> None:
        super().__init__()
        self.extractor = extractor
        self.normalizer = normalizer
        self.transformer = transformer
        self.classes = list(classes)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.transformer(self.normalizer(self.extractor(waveform)))
