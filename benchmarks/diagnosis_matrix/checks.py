"""Did a run's fault really produce its pattern? Checked on what the run logged, so that a
miss of the diagnosis can be told apart from a fault that did not happen."""

from __future__ import annotations

from collections.abc import Callable

Pattern = dict[str, float | None]
Check = Callable[[Pattern, float], tuple[bool, str]]


def _get(pattern: Pattern, key: str, default: float = float("nan")) -> float:
    value = pattern.get(key)
    return default if value is None else float(value)


def _learned(p: Pattern, chance: float) -> tuple[bool, str]:
    return _get(p, "val_best") >= chance + 0.25, "val accuracy well above chance"


def _at_chance(p: Pattern, chance: float) -> tuple[bool, str]:
    return _get(p, "val_best") <= chance + 0.15, "val accuracy stays near chance"


def _train_above_val(p: Pattern, chance: float) -> tuple[bool, str]:
    gap = _get(p, "train_acc_last") - _get(p, "val_last")
    return gap >= 0.2, "train accuracy at least 0.2 above val"


def _below_09(p: Pattern, chance: float) -> tuple[bool, str]:
    best = _get(p, "val_best")
    return chance + 0.1 <= best < 0.9, "val accuracy above chance but below 0.9"


def _flat(p: Pattern, chance: float) -> tuple[bool, str]:
    flat = _get(p, "train_loss_min") >= 0.95 * _get(p, "train_loss_first")
    still = _get(p, "val_best") - _get(p, "val_first") <= 0.05
    return flat and still, "train loss and val accuracy do not move"


def _nonfinite(p: Pattern, chance: float) -> tuple[bool, str]:
    return _get(p, "nonfinite_losses", 0.0) > 0, "non-finite losses counted"


def _exploding(p: Pattern, chance: float) -> tuple[bool, str]:
    early = _get(p, "grad_norm_early")
    grew = _get(p, "grad_norm_max") >= 100 * early or _get(p, "grad_norm_late") >= 10 * early
    return grew or _nonfinite(p, chance)[0], "gradient norms grow 10-100x or overflow"


def _no_growth(p: Pattern, chance: float) -> tuple[bool, str]:
    grew = _get(p, "grad_norm_late") >= 10 * _get(p, "grad_norm_early")
    return not grew, "gradient norms do not grow 10x from the first to the last quarter"


def _no_movement(p: Pattern, chance: float) -> tuple[bool, str]:
    return _get(p, "val_best") - _get(p, "val_first") <= 0.02, "val accuracy never moves"


def _held_back(p: Pattern, chance: float) -> tuple[bool, str]:
    return _get(p, "val_best") < 0.9, "val accuracy held below 0.9"


def _underfit(p: Pattern, chance: float) -> tuple[bool, str]:
    low = _get(p, "train_acc_last") < 0.7
    return low and _get(p, "val_best") >= chance + 0.05, "train accuracy low, above chance"


def _held_below_fit(p: Pattern, chance: float) -> tuple[bool, str]:
    return _get(p, "train_acc_last") < 0.9, "train accuracy held below 0.9"


def _attention(p: Pattern, chance: float) -> tuple[bool, str]:
    return _get(p, "attention_entropy_min", 1.0) <= 0.1, "attention entropy of a layer <= 0.1"


def _negative_loss(p: Pattern, chance: float) -> tuple[bool, str]:
    return _get(p, "train_loss_min", 0.0) < 0, "training loss below zero"


CHECKS: dict[str, Check] = {
    "healthy": _learned,
    "healthy_noisy_val": _learned,
    "healthy_lr_decay": _learned,
    "healthy_hard": _below_09,
    "lr_too_low": _flat,
    "lr_too_high": lambda p, c: (_get(p, "val_last") <= c + 0.15, "val wrecked near chance"),
    "non_finite": _nonfinite,
    "lr_too_high_sgd": _no_growth,
    "exploding_gradients": _exploding,
    "vanishing_gradients": _at_chance,
    "no_weight_updates": _no_movement,
    "unnormalized_features": _held_back,
    "normalization_mismatch": _train_above_val,
    "class_imbalance": _held_back,
    "majority_class_collapse": _at_chance,
    "label_noise": _at_chance,
    "overfitting": _train_above_val,
    "underfitting": _underfit,
    "weight_decay_too_high": _held_below_fit,
    "attention_collapse": _attention,
    "invalid_targets": _negative_loss,
}


def fault_check(result: dict) -> tuple[bool | None, str]:
    """Whether the run shows its scenario's pattern (None: nothing to check), and what was
    checked."""
    pattern = result.get("pattern")
    check = CHECKS.get(result["scenario"])
    if not pattern or check is None:
        return None, "no pattern recorded"
    chance = _get(pattern, "val_majority", 0.125)
    produced, what = check(pattern, chance)
    return bool(produced), what
