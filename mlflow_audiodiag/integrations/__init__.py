"""Framework integrations: the monitor and the end-of-training diagnosis as callbacks.

* :mod:`.lightning`: ``AudioDiagCallback`` for ``lightning.pytorch.Trainer``.
* :mod:`.huggingface`: ``AudioDiagTrainerCallback`` for ``transformers.Trainer``.

Each integration imports its framework when its module is imported, so the core package never
needs Lightning or Transformers installed.
"""
