"""Scenarios: one fault per cause as people really make it, plus healthy runs.

Each scenario says which cause it should be diagnosed with (``None``: healthy), the dataset
variant it needs, the recipe changes for user-written runs (per architecture where the
fault's size depends on the model) and the bundled trainer's options (a zoo scenario plus
overrides; ``None`` where the bundled trainer cannot make the fault).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from benchmarks.diagnosis_matrix.models import ARCHITECTURES
from benchmarks.diagnosis_matrix.recipe import ARCH_LR, Recipe

INVALID_TARGETS = "invalid_targets"  # the cause code the diagnosis is about to learn


@dataclass(frozen=True)
class Scenario:
    name: str
    expected: str | None
    fault: str
    recipe: dict[str, Any] = field(default_factory=dict)
    per_arch: dict[str, dict[str, Any]] = field(default_factory=dict)
    archs: tuple[str, ...] = ARCHITECTURES
    data: str = ""  # dataset variant: "", "hard" or "imbalanced"
    zoo: str | None = None  # bundled trainer: zoo scenario name
    zoo_options: dict[str, Any] = field(default_factory=dict)

    @property
    def healthy(self) -> bool:
        return self.expected is None

    def recipe_for(self, arch: str) -> Recipe:
        base = Recipe(lr=ARCH_LR[arch])
        return base.replace(**{**self.recipe, **self.per_arch.get(arch, {})})


_HEALTHY_ZOO = {"epochs": 20, "synthetic_clips_per_class": 100, "dim": 64, "layers": 2}

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("healthy", None, "none", zoo="healthy", zoo_options=_HEALTHY_ZOO),
        Scenario(
            "healthy_hard",
            None,
            "none; noisy data, so the model converges below 0.9",
            data="hard",
            zoo="healthy",
            zoo_options=_HEALTHY_ZOO,
        ),
        Scenario(
            "healthy_noisy_val",
            None,
            "none; a small validation set (3 clips per class), so val accuracy jitters",
            recipe={"val_per_class": 3},
            zoo="healthy",
            zoo_options={**_HEALTHY_ZOO, "val_fraction": 0.03, "test_fraction": 0.27},
        ),
        Scenario(
            "healthy_lr_decay",
            None,
            "none; the LR decays (step x0.5 every 4 epochs, or cosine to 0)",
            recipe={"schedule": "step"},
            per_arch={"gru": {"schedule": "cosine"}, "transformer": {"schedule": "cosine"}},
            zoo="healthy",
            zoo_options={**_HEALTHY_ZOO, "scheduler": "step", "step_size": 5, "gamma": 0.25},
        ),
        Scenario("lr_too_low", "lr_too_low", "Adam at lr 1e-7", {"lr": 1e-7}, zoo="lr_too_low"),
        Scenario(
            "lr_too_high",
            "lr_too_high",
            "Adam at a learning rate 30-300x too high",
            per_arch={
                "cnn": {"lr": 0.3},
                "gru": {"lr": 0.3},
                "mlp": {"lr": 0.3},
                "transformer": {"lr": 0.1},
            },
            zoo="lr_too_high",
        ),
        Scenario(
            "non_finite",
            "non_finite",
            "clips zero-padded to 1.25 s and log(mel) taken without a floor: log(0) = -inf",
            {"features": "log_padded"},
            zoo="non_finite",
        ),
        Scenario(
            "lr_too_high_sgd",
            "lr_too_high",
            "SGD (momentum 0.9) at a large LR, no gradient clipping",
            {"optimizer": "sgd"},
            per_arch={"gru": {"lr": 5.0}},
            # The first updates move 25-40 % of the GRU's weights per step and its gradient
            # norms do not grow (x0.4-x1.2 from the first to the last tenth at LR 0.3, 1 and
            # 5, measured); the bundled transformer at SGD 0.5 moves ~14 % per step and its
            # norms fall: what this makes is a learning rate too high, not exploding
            # gradients. ReLU/batch-norm CNNs and MLPs die or overflow at once.
            archs=("gru",),
            zoo="lr_too_high",
            zoo_options={"optimizer": "sgd", "lr": 0.5, "grad_clip": 0.0, "epochs": 30},
        ),
        Scenario(
            "exploding_gradients",
            "exploding_gradients",
            "SGD (momentum 0.9) at LR 0.5 on a post-norm transformer, no gradient clipping",
            {"optimizer": "sgd"},
            per_arch={"transformer": {"lr": 0.5}},
            # Post-norm layers (torch's default layout, the bundled model's norm_position
            # "post"): the norms grow by orders of magnitude (to ~1e6-1e8, then NaN). See
            # lr_too_high_sgd for the set-ups whose norms do not grow (pre-norm among them).
            archs=("transformer",),
            zoo="exploding_gradients",
        ),
        Scenario(
            "vanishing_gradients",
            "vanishing_gradients",
            "a deep sigmoid stack (CNN, MLP)",
            per_arch={
                "cnn": {"variant": "sigmoid_deep"},
                "mlp": {"variant": "sigmoid_deep"},
            },
            # A GRU's gates are built against vanishing gradients: with weights x20 and saturated
            # gates its recurrent layer's gradient stayed above the head's (measured), so no GRU
            # case carries this label. The transformer's residual stream does the same.
            archs=("cnn", "mlp"),
            zoo="vanishing_gradients",
        ),
        Scenario(
            "no_weight_updates",
            "no_weight_updates",
            "optimizer.step() forgotten",
            {"skip_step": True},
            zoo="no_weight_updates",
        ),
        Scenario(
            "unnormalized_features",
            "unnormalized_features",
            "linear mel power fed as is: no dB, no standardization",
            {"features": "power", "normalize": False},
            zoo="unnormalized_features",
        ),
        Scenario(
            "normalization_mismatch",
            "normalization_mismatch",
            "val clips read as raw int16 counts (x32768, +90 dB) while train reads floats",
            {"val_features": "logmel_int16"},
            zoo="normalization_mismatch",
        ),
        Scenario(
            "class_imbalance",
            "class_imbalance",
            "largest class 20x the smallest, on a noisy set",
            data="imbalanced",
            zoo="class_imbalance",
        ),
        Scenario(
            "majority_class_collapse",
            "majority_class_collapse",
            "90% of the training labels fall back to class 0",
            {"labels": "to_class0", "labels_fraction": 0.9},
            zoo="majority_class_collapse",
        ),
        Scenario(
            "label_noise",
            "label_noise",
            "training labels shuffled once, separately from the clips",
            {"labels": "shuffled", "epochs": 16},
            zoo="label_noise",
        ),
        Scenario(
            "overfitting",
            "overfitting",
            "6 training clips per class, a big model, no dropout or weight decay",
            {"train_per_class": 6, "size": "big", "dropout": 0.0, "epochs": 24},
            zoo="overfitting",
        ),
        Scenario(
            "underfitting",
            "underfitting",
            "a far too small model",
            {"size": "tiny", "dropout": 0.0, "epochs": 16},
            zoo="underfitting",
        ),
        Scenario(
            "weight_decay_too_high",
            "weight_decay_too_high",
            "weight decay 1.0 (meant 1e-4) through Adam's L2 term",
            {"weight_decay": 1.0, "epochs": 16},
            # Batch- and layer-norm make a network's layers scale-invariant, so the CNN and the
            # transformer need more decay before their weights fade (at 1.0 both learn on).
            per_arch={"cnn": {"weight_decay": 10.0}, "transformer": {"weight_decay": 10.0}},
            zoo="weight_decay_too_high",
        ),
        Scenario(
            "attention_collapse",
            "attention_collapse",
            "attention query/key weights initialised 30x too large",
            {"variant": "qk_scale", "epochs": 16},
            archs=("transformer",),
            zoo="attention_collapse",
        ),
        Scenario(
            INVALID_TARGETS,
            INVALID_TARGETS,
            "mixup weight drawn from [1, 2] instead of [0, 1]: (1 - lam) < 0, negative targets",
            {"mixup": (1.0, 2.0)},
        ),
    )
}

HEALTHY_SCENARIOS = tuple(name for name, s in SCENARIOS.items() if s.healthy)
