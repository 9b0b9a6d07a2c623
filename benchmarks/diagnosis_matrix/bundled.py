"""The bundled trainer front-end: ``train(TrainConfig)`` with the fault zoo's options.

On the embedded data a scenario's options are the zoo's own (plus the scenario's
overrides); on the spoken words the ``synthetic_*`` options become the matching words
manifest (``_hard`` for the zoo's low-SNR settings, ``_imbalanced`` for its 20:1 set, a
subset for its 40-clips-per-class set, a small-val manifest for a small val fraction).
"""

from __future__ import annotations

from typing import Any

import mlflow

from benchmarks.diagnosis_matrix.data import DATASETS, derived_manifest
from benchmarks.diagnosis_matrix.spec import RunSpec

_WORDS_TRAIN_FRACTION = 0.7


def bundled_options(spec: RunSpec) -> dict[str, Any]:
    """Flat training options of the bundled trainer for ``spec``."""
    from mlflow_audiodiag.zoo.scenarios import scenario_options

    scenario = spec.definition
    if scenario.zoo is None:
        raise ValueError(f"scenario {spec.scenario} has no bundled-trainer form")
    options = scenario_options(scenario.zoo, **scenario.zoo_options)
    options.update(seed=spec.seed, progress=False)
    if spec.dataset == "tones":
        if scenario.data == "hard":
            options["synthetic_snr_db"] = DATASETS["tones_hard"].settings["snr_db"]
        return options
    variant = "words"
    if "synthetic_imbalance_ratio" in options:
        variant = "words_imbalanced"
    elif scenario.data == "hard" or options.get("synthetic_snr_db", (5.0,))[0] < 0:
        variant = "words_hard"
    per_class = options.get("synthetic_clips_per_class", 0)
    train_per_class = round(per_class * _WORDS_TRAIN_FRACTION) if per_class < 60 else 0
    val_per_class = 3 if options.get("val_fraction", 0.15) < 0.1 else 0
    for key in [k for k in options if k.startswith("synthetic_")]:
        del options[key]
    options.pop("val_fraction", None)
    options.pop("test_fraction", None)
    options["source"] = str(derived_manifest(variant, train_per_class, val_per_class))
    return options


def warm_bundled_cache(spec: RunSpec) -> None:
    """Generates the data and builds the feature cache ``spec`` needs, so that parallel runs
    only read them."""
    from mlflow_audiodiag.cache import default_cache_root
    from mlflow_audiodiag.features.store import build_feature_store
    from mlflow_audiodiag.training.config import TrainConfig
    from mlflow_audiodiag.training.dataset_source import resolve_clip_table

    config = TrainConfig.from_flat(bundled_options(spec))
    table, _ = resolve_clip_table(config.data, config.features, progress=False)
    build_feature_store(
        table,
        config.features,
        default_cache_root(),
        on_bad_file=config.data.on_bad_file,
        waveform_splits=("train",) if config.augment.uses_waveform else (),
        progress=False,
    )


def train_bundled(spec: RunSpec) -> str:
    """Trains ``spec`` with the bundled trainer in a new run; returns the run id."""
    from mlflow_audiodiag.training.config import TrainConfig
    from mlflow_audiodiag.training.run import train

    config = TrainConfig.from_flat(bundled_options(spec))
    with mlflow.start_run(run_name=spec.key, tags=spec.tags()) as run:
        train(config)
    return run.info.run_id
