"""Log-mel and MFCC extraction with torchaudio transforms."""

from __future__ import annotations

import torch
import torchaudio
from torch import nn

from mlflow_audiodiag.features.config import FeatureConfig


class FeatureExtractor(nn.Module):
    """Maps waveforms ``[batch, samples]`` to features ``[batch, n_bins, n_frames]``.

    Log-mel is ``MelSpectrogram`` power converted to dB; MFCC uses torchaudio's ``MFCC``
    on the same mel settings. The module has no trainable parameters and can be part of an
    exported inference model.
    """

    def __init__(self, config: FeatureConfig) -> None:
        super().__init__()
        self.config = config
        mel_kwargs = {
            "n_fft": config.n_fft,
            "hop_length": config.hop_length,
            "n_mels": config.n_mels,
            "f_min": config.f_min,
            "f_max": config.f_max,
        }
        if config.kind == "mfcc":
            self.transform: nn.Module = torchaudio.transforms.MFCC(
                sample_rate=config.sample_rate,
                n_mfcc=config.n_mfcc,
                log_mels=False,
                melkwargs=mel_kwargs,
            )
        else:
            self.transform = nn.Sequential(
                torchaudio.transforms.MelSpectrogram(sample_rate=config.sample_rate, **mel_kwargs),
                torchaudio.transforms.AmplitudeToDB(stype="power", top_db=config.top_db),
            )

    @torch.no_grad()
    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if waveform.dim() == 1:
            waveform = waveform.unsqueeze(0)
        # A channel axis per clip keeps torchaudio's top_db clamp per clip, not per batch.
        return self.transform(waveform.float().unsqueeze(1)).squeeze(1)
