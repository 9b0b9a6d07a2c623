"""Framework adapters for :class:`~mlflow_audiodiag.monitoring.monitor.TrainingMonitor`.

* :mod:`.lightning`: ``AudioDiagCallback`` for ``lightning.pytorch.Trainer``.
* :mod:`.huggingface`: ``AudioDiagTrainerCallback`` for ``transformers.Trainer``.

Each adapter imports its framework when the adapter module itself is imported, so the core
package never needs Lightning or Transformers installed.
"""
