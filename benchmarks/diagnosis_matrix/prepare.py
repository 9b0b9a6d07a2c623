"""Everything parallel runs share, made once before they start: the datasets, the user-side
feature caches, the bundled trainer's feature caches and the MLflow store."""

from __future__ import annotations

from pathlib import Path

import mlflow

from benchmarks.diagnosis_matrix.bundled import bundled_options, warm_bundled_cache
from benchmarks.diagnosis_matrix.data import load_arrays
from benchmarks.diagnosis_matrix.spec import RunSpec


def feature_needs(specs: list[RunSpec]) -> set[tuple[str, str]]:
    """(dataset variant, feature kind) pairs the user-written runs read."""
    needs = set()
    for spec in specs:
        if spec.front_end == "bundled":
            continue
        recipe = spec.definition.recipe_for(spec.arch)
        needs.add((spec.dataset_variant, recipe.features))
        if recipe.val_features:
            needs.add((spec.dataset_variant, recipe.val_features))
    return needs


def prepare_inputs(
    specs: list[RunSpec], tracking_uri: str, experiment: str, artifacts: Path
) -> None:
    for dataset, kind in sorted(feature_needs(specs)):
        load_arrays(dataset, kind)
    warmed = set()
    for spec in specs:
        if spec.front_end != "bundled":
            continue
        options = bundled_options(spec)
        key = repr(sorted((k, v) for k, v in options.items() if k not in ("seed",)))
        if key not in warmed:
            warm_bundled_cache(spec)
            warmed.add(key)
    mlflow.set_tracking_uri(tracking_uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        mlflow.create_experiment(experiment, artifact_location=artifacts.as_uri())
