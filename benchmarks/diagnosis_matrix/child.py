"""What one child process does: train one matrix cell in a real MLflow run, diagnose it and
write the result as JSON."""

from __future__ import annotations

import functools
import json
import logging
import os
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import mlflow
import torch

from benchmarks.diagnosis_matrix.spec import RunSpec


def _train(spec: RunSpec, experiment: str) -> str:
    """Trains ``spec`` with its front-end; returns the MLflow run id."""
    if spec.front_end == "bundled":
        from benchmarks.diagnosis_matrix.bundled import train_bundled

        return train_bundled(spec)
    from benchmarks.diagnosis_matrix.data import load_arrays
    from benchmarks.diagnosis_matrix.models import build_model
    from benchmarks.diagnosis_matrix.recipe import prepare

    recipe = spec.definition.recipe_for(spec.arch)
    train_arrays = load_arrays(spec.dataset_variant, recipe.features)
    val_arrays = (
        load_arrays(spec.dataset_variant, recipe.val_features)
        if recipe.val_features
        else train_arrays
    )
    data = prepare(train_arrays, val_arrays, recipe, spec.seed)
    torch.manual_seed(spec.seed)
    model = build_model(
        spec.arch,
        data.x_train.shape[1],
        len(data.classes),
        recipe.size,
        recipe.variant,
        recipe.dropout,
    )
    if spec.front_end == "lightning":
        from benchmarks.diagnosis_matrix.lightning_loop import train_lightning

        return train_lightning(model, data, recipe, spec.seed, spec.key, spec.tags(), experiment)
    from benchmarks.diagnosis_matrix.user_loop import train_user_loop

    return train_user_loop(model, data, recipe, spec.seed, spec.key, spec.tags())


def _best_val_accuracy(run_id: str) -> float | None:
    history = mlflow.tracking.MlflowClient().get_metric_history(run_id, "val/accuracy")
    values = [m.value for m in history if m.value == m.value]
    return max(values) if values else None


def execute(spec: RunSpec, tracking_uri: str, experiment: str, write_back: bool) -> dict:
    """Trains and diagnoses ``spec``; never raises (errors are part of the result)."""
    from benchmarks.diagnosis_matrix.user_loop import diagnose

    started = time.monotonic()
    result: dict[str, Any] = {**spec.to_dict(), "key": spec.key, "expected": spec.expected}
    try:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_experiment(experiment)
        run_id = _train(spec, experiment)
        result["run_id"] = run_id
        result["train_seconds"] = round(time.monotonic() - started, 1)
        result.update(diagnose(run_id, write=write_back and spec.front_end != "bundled"))
        result["best_val_accuracy"] = _best_val_accuracy(run_id)
        result["status"] = "ok"
    except Exception as error:  # reported in the table, never lost
        result.update(status="error", error=f"{type(error).__name__}: {error}")
        result["traceback"] = traceback.format_exc(limit=8)
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def use_delivery(mode: str) -> None:
    """Sends the monitor's points through ``mode``: ``process`` (the package's default) or
    ``thread`` (no extra Python process per run; the points and the diagnosis are the same).
    """
    if mode == "process":
        return
    from mlflow_audiodiag.monitoring import monitor, sink

    monitor.SinkConfig = functools.partial(sink.SinkConfig, delivery=mode)


def child_main(
    spec_dict: dict,
    result_path: str,
    tracking_uri: str,
    experiment: str,
    write_back: bool,
    delivery: str,
) -> None:
    """Entry point of a child process: its own session (so that a timeout can kill its
    whole process group), one thread, quiet logs; the result JSON is written atomically."""
    os.setsid()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    use_delivery(delivery)
    result = execute(RunSpec(**spec_dict), tracking_uri, experiment, write_back)
    partial = Path(result_path + ".partial")
    partial.write_text(json.dumps(result, indent=2))
    partial.replace(result_path)
