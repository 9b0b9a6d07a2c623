"""The example project under projects/ runs against a real tracking store."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from support import processes

from mlflow_audiodiag.data.synthetic import SyntheticConfig, generate_dataset

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCRIPT = Path(__file__).resolve().parents[2] / "projects" / "custom_loop" / "train.py"


def test_custom_loop_example_trains_and_logs(tracking_uri, cache_root, tmp_path: Path) -> None:
    manifest = generate_dataset(
        tmp_path / "data", SyntheticConfig(n_classes=3, clips_per_class=10), progress=False
    )
    done = processes.run(
        [sys.executable, str(SCRIPT), "--epochs", "2", "--data", str(manifest)],
        env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri,
             "AUDIODIAG_CACHE_DIR": str(cache_root)},
        cwd=tmp_path, timeout_s=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    runs = MlflowClient(tracking_uri).search_runs(["0"])
    assert len(runs) == 1
    history = MlflowClient(tracking_uri).get_metric_history(runs[0].info.run_id, "val/accuracy")
    assert [m.step for m in history] == [1, 2]
