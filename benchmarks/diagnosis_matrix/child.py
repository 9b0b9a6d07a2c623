"""What one child process does: train one matrix cell in a real MLflow run, diagnose it and
write the result as JSON."""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
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


def _values(client: mlflow.tracking.MlflowClient, run_id: str, key: str) -> list[float]:
    history = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
    return [m.value for m in history]


def observed_pattern(run_id: str) -> dict[str, float | None]:
    """What the run really did (to check that its fault produced its pattern): accuracy
    and loss at the start, best and end, gradient norms early and late, non-finite losses."""
    client = mlflow.tracking.MlflowClient()
    out: dict[str, float | None] = {}

    def finite(values: list[float]) -> list[float]:
        return [v for v in values if math.isfinite(v)]

    val = finite(_values(client, run_id, "val/accuracy"))
    train = finite(_values(client, run_id, "train/accuracy"))
    loss = _values(client, run_id, "train/loss")
    grads = finite(_values(client, run_id, "grad_norm/total"))
    quarter = max(1, len(grads) // 4)
    out["epochs"] = float(len(val))
    out["val_first"] = val[0] if val else None
    out["val_best"] = max(val) if val else None
    out["val_last"] = val[-1] if val else None
    out["train_acc_last"] = train[-1] if train else None
    out["train_loss_first"] = loss[0] if loss else None
    out["train_loss_min"] = min(finite(loss)) if finite(loss) else None
    out["train_loss_last"] = loss[-1] if loss else None
    out["grad_norm_early"] = statistics.median(grads[:quarter]) if grads else None
    out["grad_norm_late"] = statistics.median(grads[-quarter:]) if grads else None
    out["grad_norm_max"] = max(grads) if grads else None
    layers = [k for k in client.get_run(run_id).data.metrics if k.startswith("attention_entropy/")]
    entropies = [finite(_values(client, run_id, k))[-1:] for k in layers]
    out["attention_entropy_min"] = min((e[0] for e in entropies if e), default=None)
    nonfinite = _values(client, run_id, "nonfinite/loss")
    out["nonfinite_losses"] = nonfinite[-1] if nonfinite else None
    majority = _values(client, run_id, "labels/val/majority_fraction")
    out["val_majority"] = majority[-1] if majority else None
    return {k: (None if v is None or not math.isfinite(v) else round(v, 6)) for k, v in out.items()}


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
        result["pattern"] = pattern = observed_pattern(run_id)
        result["best_val_accuracy"] = pattern["val_best"]
        result["status"] = "ok"
    except Exception as error:  # reported in the table, never lost
        result.update(status="error", error=f"{type(error).__name__}: {error}")
        result["traceback"] = traceback.format_exc(limit=8)
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def child_main(
    spec_dict: dict,
    result_path: str,
    tracking_uri: str,
    experiment: str,
    write_back: bool,
) -> None:
    """Entry point of a child process: its own session (so that a timeout can kill its
    whole process group), one thread, quiet logs; the result JSON is written atomically."""
    os.setsid()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    result = execute(RunSpec(**spec_dict), tracking_uri, experiment, write_back)
    partial = Path(result_path + ".partial")
    partial.write_text(json.dumps(result, indent=2))
    partial.replace(result_path)
