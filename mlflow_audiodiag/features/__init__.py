"""Waveform to features: log-mel/MFCC extraction, normalization, augmentation, caching."""
