"""The matrix: which front-end runs which architecture, dataset, scenario and seed.

``full``: every scenario (where it makes sense for the architecture) with seeds 0 and 1 on
the bundled trainer (both datasets), the plain user loop (four architectures, both
datasets) and the Lightning callback (CNN and GRU, spoken words). ``fast``: a handful of
runs covering every architecture, all three front-ends, both datasets, healthy runs and
several causes; a few minutes on 2 cores.
"""

from __future__ import annotations

from collections.abc import Iterable

from benchmarks.diagnosis_matrix.scenarios import SCENARIOS
from benchmarks.diagnosis_matrix.spec import BUNDLED_ARCH, RunSpec

DATASET_FAMILIES = ("tones", "words")
LIGHTNING_ARCHS = ("cnn", "gru")
LIGHTNING_DATASETS = ("words",)
SEEDS = (0, 1)

FAST: tuple[tuple[str, str, str, str], ...] = (
    ("user", "mlp", "words", "healthy"),
    ("user", "mlp", "tones", "no_weight_updates"),
    ("user", "mlp", "words", "invalid_targets"),
    ("user", "cnn", "tones", "healthy"),
    ("user", "cnn", "words", "unnormalized_features"),
    ("user", "gru", "words", "lr_too_low"),
    ("user", "gru", "tones", "normalization_mismatch"),
    ("user", "transformer", "words", "healthy_noisy_val"),
    ("user", "transformer", "tones", "attention_collapse"),
    ("lightning", "cnn", "words", "healthy"),
    ("lightning", "gru", "words", "majority_class_collapse"),
    ("bundled", BUNDLED_ARCH, "words", "no_weight_updates"),
)


def full_matrix(seeds: Iterable[int] = SEEDS) -> list[RunSpec]:
    seeds = tuple(seeds)
    specs = []
    for name, scenario in SCENARIOS.items():
        for seed in seeds:
            if scenario.zoo is not None:
                specs += [RunSpec("bundled", BUNDLED_ARCH, d, name, seed) for d in DATASET_FAMILIES]
            specs += [
                RunSpec("user", arch, d, name, seed)
                for arch in scenario.archs
                for d in DATASET_FAMILIES
            ]
            specs += [
                RunSpec("lightning", arch, d, name, seed)
                for arch in LIGHTNING_ARCHS
                if arch in scenario.archs
                for d in LIGHTNING_DATASETS
            ]
    return specs


def fast_matrix() -> list[RunSpec]:
    return [RunSpec(*cell, seed=0) for cell in FAST]


def select(specs: list[RunSpec], only: list[str]) -> list[RunSpec]:
    """Specs matching every ``field=value[,value]`` filter (fields: front_end, arch,
    dataset, scenario, seed, expected), or containing a bare word in their key."""
    chosen = specs
    for condition in only:
        if "=" in condition:
            field, values = condition.split("=", 1)
            allowed = set(values.split(","))
            chosen = [s for s in chosen if str(_field(s, field)) in allowed]
        else:
            chosen = [s for s in chosen if condition in s.key]
    return chosen


def _field(spec: RunSpec, name: str) -> object:
    if name == "expected":
        return spec.expected
    if name not in ("front_end", "arch", "dataset", "scenario", "seed"):
        raise ValueError(f"unknown filter field {name!r}")
    return getattr(spec, name)
