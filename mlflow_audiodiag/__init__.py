"""mlflow-audiodiag: audio classifier training on MLflow that records why validation stagnates.

The public API, for any PyTorch loop::

    from mlflow_audiodiag import TrainingMonitor, watch, diagnose

    monitor = watch(model, optimizer, loss_fn=criterion)   # one line: hooks record every step
    ...                                                    # monitor.end_epoch(...) per epoch
    monitor.close()                                        # delivers, then diagnoses the run
    diagnose(run_id)                                       # any run, again, at any time
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["TrainingMonitor", "MonitorConfig", "watch", "diagnose", "__version__"]

if TYPE_CHECKING:
    from mlflow_audiodiag.api import diagnose, watch
    from mlflow_audiodiag.monitoring.monitor import MonitorConfig, TrainingMonitor

_LAZY = {
    "TrainingMonitor": "mlflow_audiodiag.monitoring.monitor",
    "MonitorConfig": "mlflow_audiodiag.monitoring.monitor",
    "watch": "mlflow_audiodiag.api",
    "diagnose": "mlflow_audiodiag.api",
}


def __getattr__(name: str) -> Any:
    """Imports the public API on first use, so that the CLI starts without torch."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mlflow_audiodiag' has no attribute {name!r}")
