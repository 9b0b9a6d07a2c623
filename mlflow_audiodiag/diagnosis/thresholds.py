"""Every threshold the diagnosis rules use, in one frozen dataclass."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Fields that must lie in [0, 1].
_FRACTIONS = (
    "flat_range",
    "repeat_fraction",
    "min_improvement",
    "val_loss_learned",
    "val_loss_improving",
    "lr_active_fraction",
    "collapse_top_fraction",
    "collapse_epoch_share",
    "majority_tolerance",
    "train_majority_fraction",
    "early_fraction",
    "recent_fraction",
    "loss_flat_change",
    "frozen_fraction",
    "overfit_gap",
    "overfit_gap_growth",
    "chance_margin",
    "underfit_loss_fraction",
    "weight_shrink",
    "attention_entropy_low",
    "attention_entropy_high",
)


@dataclass(frozen=True)
class Thresholds:
    """Thresholds of the diagnosis rules. "Window" means the last ``window_epochs`` epochs at
    an active learning rate; "early" and "recent" steps the first and last ``early_fraction`` /
    ``recent_fraction`` of the recorded optimizer steps. No threshold is an absolute accuracy:
    accuracies are judged against the run's own majority baseline and sampling noise."""

    # --- run length, baseline and validation plateau ---
    # Fewer validation epochs than this: too short to judge (verdict "inconclusive").
    min_epochs: int = 5
    # Number of trailing epochs over which plateaus and late-training signals are judged.
    window_epochs: int = 5
    # Val accuracy with max - min over the window at or below this is flat by range.
    flat_range: float = 0.01
    # Val accuracy with |least-squares slope per epoch| over the window at or below this is flat.
    flat_slope: float = 0.002
    # Accuracy on n clips jitters by sqrt(p(1-p)/n) from sampling alone: flatness and learning
    # are judged against this many standard errors (the range and the rise over the baseline)
    # and half as many standard errors of a least-squares slope through such noise. A train
    # loss that rises or wobbles by less than this many standard errors of an epoch's mean loss
    # (from the spread of its step losses) moves by sampling noise, not by the LR.
    flat_noise_sigmas: float = 3.0
    # Share of window epochs with exactly the same val accuracy at or above which it is flat.
    repeat_fraction: float = 0.8
    # Best val accuracy at least this far (and the noise margin) above the majority baseline:
    # the run learned something.
    min_improvement: float = 0.02
    # Relative drop of the val loss from its first epoch to its lowest at or above this:
    # something the model learns carries over to validation (it does not just memorise).
    val_loss_learned: float = 0.05
    # A loss falling by at least this share of its first value per epoch over the window is
    # still improving (the val loss: not a plateau; the train loss under flat accuracy: a
    # model that fits slowly).
    val_loss_improving: float = 0.005
    # Steps/epochs with LR below this share of its peak are left out (warmup start, annealed tail).
    lr_active_fraction: float = 0.1

    # --- class balance and prediction collapse ---
    # Share of val predictions in the most predicted class at or above this: collapsed epoch.
    collapse_top_fraction: float = 0.9
    # Share of the epochs that are collapsed at or above which the run collapsed.
    collapse_epoch_share: float = 0.6
    # Val accuracy within this of the majority-guess accuracy equals the majority guess.
    majority_tolerance: float = 0.02
    # Train largest/smallest class count at or above this is imbalanced.
    imbalance_ratio: float = 3.0
    # Train share of the largest class at or above this is imbalanced.
    train_majority_fraction: float = 0.7
    # Window-mean val accuracy minus val balanced accuracy at or above this, on an imbalanced
    # training split: the model favours the large classes (the imbalance holds it back).
    favoured_gap: float = 0.05

    # --- input features ---
    # |mean| of the model's train input features above this: not zero-mean.
    feature_mean_abs: float = 0.5
    # Std of the model's train input features below this: not unit variance.
    feature_std_low: float = 0.5
    # Std of the model's train input features above this: not unit variance.
    feature_std_high: float = 2.0
    # Max - min of the model's train input features above this: outliers or a power scale.
    feature_dynamic_range: float = 100.0
    # Max - min of the raw (pre-normalization) train features above this: linear power scale.
    raw_dynamic_range: float = 1e4
    # Largest per-bin |standardized mean difference| val vs train at or above this: mismatch.
    smd_max: float = 1.0
    # Mean per-bin |standardized mean difference| val vs train at or above this: mismatch.
    smd_mean: float = 0.5

    # --- numerics ---
    # Non-finite losses, gradients or feature values: counts above this fire.
    nonfinite_count: float = 0.0
    # A training loss below minus this is impossible for a cross-entropy of valid targets.
    negative_loss: float = 1e-6

    # --- gradients, in phases ---
    # Share of the recorded steps taken as the early phase.
    early_fraction: float = 0.1
    # Share of the recorded steps taken as the recent phase.
    recent_fraction: float = 0.25
    # Recent median grad norm of the input-end group / the output-end group below this: vanishing.
    vanishing_ratio: float = 1e-3
    # Recent median grad norm of a trainable group below this: gradients are ~zero.
    vanishing_norm: float = 1e-6
    # Recent median total grad norm / the early phase's largest, below this: the network died.
    dead_ratio: float = 1e-3
    # Max / median of the total grad norm at or above this: gradient spike.
    spike_ratio: float = 100.0
    # A later windowed median of the total grad norm / an earlier one at or above this: growing.
    growth_ratio: float = 10.0
    # Median total grad norm of the recent steps at or above this: exploding.
    grad_norm_high: float = 1e3
    # Last / first train loss at or above this: the loss blew up (divergence).
    loss_blowup_ratio: float = 2.0
    # Recent / early train loss at or below this while the gradient norm grows (less than
    # 10 x growth_ratio): the network learns through the growth (it sharpens as it fits).
    loss_learning_ratio: float = 0.75

    # --- learning rate and updates ---
    # Fastest group's median update/weight ratio ||dW||/||W|| below this (<< ~1e-3): LR too low.
    update_ratio_low: float = 1e-4
    # Fastest group's median update/weight ratio at or above this (>> ~1e-2): LR too high.
    update_ratio_high: float = 5e-2
    # Median update/weight ratio of a group at or below this: the group is not updated.
    update_ratio_zero: float = 1e-8
    # A trainable layer whose recent weight norm is at most this share of its initial norm has
    # faded (decay outweighs the gradient; normal steps leave layers near their start or above).
    weight_shrink: float = 0.5
    # Relative drop of the train loss from its start to its minimum below this: loss flat.
    loss_flat_change: float = 0.05
    # Training loss at or above this multiple of its first value (early steps, or the window
    # against the earlier minimum): rising.
    loss_rise_ratio: float = 1.2
    # Sum of epoch-to-epoch train-loss rises in the window / first train loss, at or above: wobbly.
    loss_oscillation: float = 0.1
    # frozen_fraction of a group at or above this: the group is frozen.
    frozen_fraction: float = 0.99

    # --- generalization ---
    # Window-mean train minus val accuracy at or above this: generalization gap.
    overfit_gap: float = 0.1
    # Growth of that gap from the first epochs to the window at or above this: gap growing.
    overfit_gap_growth: float = 0.05
    # Window-mean val loss / minimum val loss at or above this, train loss falling: overfit.
    val_loss_rise_ratio: float = 1.25
    # Window-mean train accuracy at or above this: the model has fit its training data.
    fitted_accuracy: float = 0.95
    # A fitted model whose window-mean val accuracy stays this far below: memorised (overfit).
    memorised_gap: float = 0.2
    # Train accuracy at most this above the chance level: it never left chance.
    chance_margin: float = 0.05
    # Window-mean train loss at or above this share of the first epoch's: far from fitted.
    underfit_loss_fraction: float = 0.5
    # Fewer trainable parameters than this per training clip: a small model for its data (the
    # evidence that tells "too small to fit" from "the data is hard" when both level off).
    underfit_params_per_clip: float = 10.0

    # --- attention ---
    # Window-median normalized attention entropy of a layer at or below this: collapsed.
    attention_entropy_low: float = 0.05
    # Window-median normalized attention entropy averaged over layers at or above this: uniform.
    attention_entropy_high: float = 0.98

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"threshold {f.name} must be finite and >= 0, got {value}")
        for name in ("min_epochs", "window_epochs"):
            if getattr(self, name) < 2:
                raise ValueError(f"threshold {name} must be >= 2, got {getattr(self, name)}")
        for name in _FRACTIONS:
            if getattr(self, name) > 1:
                raise ValueError(f"threshold {name} must be in [0, 1], got {getattr(self, name)}")
        if self.feature_std_low > self.feature_std_high:
            raise ValueError("feature_std_low must not exceed feature_std_high")
        if self.attention_entropy_low > self.attention_entropy_high:
            raise ValueError("attention_entropy_low must not exceed attention_entropy_high")

    def to_dict(self) -> dict[str, float]:
        """Every threshold by name (JSON-ready)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Thresholds:
        """Defaults overridden by ``values`` (numbers or numeric strings, e.g. from JSON or a
        command line); unknown names raise ``ValueError`` naming them."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ValueError(
                f"unknown threshold(s): {', '.join(unknown)}; known: {', '.join(fields)}"
            )
        kwargs = {name: _coerce(name, fields[name].type, value) for name, value in values.items()}
        return cls(**kwargs)


DEFAULT_THRESHOLDS = Thresholds()


def _coerce(name: str, type_name: Any, value: Any) -> float | int:
    if isinstance(value, bool):
        raise ValueError(f"threshold {name} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"threshold {name} must be a number, got {value!r}") from None
    if type_name in (int, "int"):
        if not number.is_integer():
            raise ValueError(f"threshold {name} must be an integer, got {value!r}")
        return int(number)
    return number
