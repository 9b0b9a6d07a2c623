"""One scenario per diagnosable cause, plus ``healthy``: the bundled training on the embedded
data with one deliberate fault, chosen so that it really produces the pattern."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mlflow_audiodiag.diagnosis import rules as codes
from mlflow_audiodiag.training.config import TrainConfig

HEALTHY = "healthy"


@dataclass(frozen=True)
class Scenario:
    """``options`` are flat training options on top of :data:`BASE_OPTIONS`;
    ``expected_cause`` is ``None`` for the healthy run."""

    name: str
    expected_cause: str | None
    fault: str
    options: dict[str, Any] = field(default_factory=dict)


# Every scenario trains a small version of the bundled setup (480 clips, 2 layers) so that the
# whole zoo runs in minutes; plateau patterns get 30 epochs to show.
BASE_OPTIONS: dict[str, Any] = {
    "epochs": 12,
    "synthetic_clips_per_class": 60,
    "dim": 64,
    "layers": 2,
    "progress": False,
}
_LONG = {"epochs": 30}
_HARD = {"synthetic_snr_db": (-5.0, 0.0)}
_NO_AUGMENTATION = {"noise_p": 0.0, "gain_p": 0.0, "shift_p": 0.0, "specaug_p": 0.0}

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            HEALTHY,
            None,
            "none: the default model and data, 30 epochs",
            {"epochs": 30, "synthetic_clips_per_class": 150, "dim": 96, "layers": 3},
        ),
        Scenario(codes.LR_TOO_LOW, codes.LR_TOO_LOW, "learning rate 1e-7", {"lr": 1e-7}),
        Scenario(
            codes.LR_TOO_HIGH,
            codes.LR_TOO_HIGH,
            "AdamW at learning rate 0.2 (200x the default)",
            {"lr": 0.2},
        ),
        Scenario(
            codes.NON_FINITE,
            codes.NON_FINITE,
            "SGD at learning rate 50 without clipping: the loss overflows to NaN",
            {"optimizer": "sgd", "lr": 50.0, "grad_clip": 0.0, "scheduler": "constant"},
        ),
        Scenario(
            codes.EXPLODING_GRADIENTS,
            codes.EXPLODING_GRADIENTS,
            "post-norm encoder layers (the original layout) trained by SGD at learning rate 0.5 "
            "without gradient clipping",
            {"norm_position": "post", "optimizer": "sgd", "lr": 0.5, "grad_clip": 0.0},
        ),
        Scenario(
            codes.VANISHING_GRADIENTS,
            codes.VANISHING_GRADIENTS,
            "a sigmoid on the token embeddings, biased (+30) deep into saturation",
            {"embedding_saturation": 30.0},
        ),
        Scenario(
            codes.NO_WEIGHT_UPDATES,
            codes.NO_WEIGHT_UPDATES,
            "backward() runs but optimizer.step() is never called",
            {"skip_optimizer_step": True},
        ),
        Scenario(
            codes.UNNORMALIZED_FEATURES,
            codes.UNNORMALIZED_FEATURES,
            "no feature normalization",
            {"normalization": "none"},
        ),
        Scenario(
            codes.NORMALIZATION_MISMATCH,
            codes.NORMALIZATION_MISMATCH,
            "val/test features come through a front end 43 dB hotter than train",
            {"eval_feature_offset": 10.0, **_LONG},
        ),
        Scenario(
            codes.CLASS_IMBALANCE,
            codes.CLASS_IMBALANCE,
            "largest class 20x the smallest, on a hard (low-SNR) task",
            {"synthetic_imbalance_ratio": 20.0, **_HARD, **_LONG},
        ),
        Scenario(
            codes.MAJORITY_CLASS_COLLAPSE,
            codes.MAJORITY_CLASS_COLLAPSE,
            "90% of training labels fall back to class 0 (a label lookup bug)",
            {"labels_to_class0": 0.9},
        ),
        Scenario(
            codes.LABEL_NOISE,
            codes.LABEL_NOISE,
            "training labels shuffled once against the clips (a label column shuffled alone)",
            {"shuffle_labels": True, **_LONG},
        ),
        Scenario(
            codes.OVERFITTING,
            codes.OVERFITTING,
            "few clips of a hard task, no augmentation, no dropout or weight decay",
            {
                **_HARD,
                **_NO_AUGMENTATION,
                **_LONG,
                "synthetic_clips_per_class": 40,
                "dropout": 0.0,
                "weight_decay": 0.0,
            },
        ),
        Scenario(
            codes.UNDERFITTING,
            codes.UNDERFITTING,
            "a 1-layer, 4-wide transformer (about 4 parameters per training clip) on a hard task",
            {**_HARD, **_LONG, "dim": 4, "heads": 1, "layers": 1},
        ),
        Scenario(
            codes.WEIGHT_DECAY_TOO_HIGH,
            codes.WEIGHT_DECAY_TOO_HIGH,
            "SGD with weight decay 1.0 (meant 1e-4): the decay outweighs the gradient",
            {"optimizer": "sgd", "lr": 0.05, "weight_decay": 1.0, **_LONG},
        ),
        Scenario(
            codes.INVALID_TARGETS,
            codes.INVALID_TARGETS,
            "mixup with a weight of 1.5 (outside [0, 1]): the mixed targets are no distribution",
            {"mixup_weight": 1.5},
        ),
        Scenario(
            codes.ATTENTION_COLLAPSE,
            codes.ATTENTION_COLLAPSE,
            "query/key weights initialised 30x too large",
            {"attention_init_scale": 30.0, **_LONG},
        ),
    )
}


def scenario_options(name: str, **overrides: Any) -> dict[str, Any]:
    """Flat training options of scenario ``name``."""
    if name not in SCENARIOS:
        known = ", ".join(SCENARIOS)
        raise KeyError(f"unknown zoo scenario {name!r}; choose one of: {known}, or all")
    return {**BASE_OPTIONS, **SCENARIOS[name].options, **overrides}


def scenario_config(name: str, **overrides: Any) -> TrainConfig:
    return TrainConfig.from_flat(scenario_options(name, **overrides))
