"""One check per finding code: ``rule(evidence, thresholds) -> Finding | None``.

A rule returns ``None`` when its problem is absent and raises :class:`MissingSignal` when the
signal it needs was not logged, so that the engine lists the check as skipped instead of
guessing. Scores are 0.5 at a rule's threshold and grow with the evidence to the rule's cap
(1.0 for direct measurements; less for causes inferred by elimination).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mlflow_audiodiag import schema
from mlflow_audiodiag.diagnosis import findings as codes
from mlflow_audiodiag.diagnosis.evidence import RunEvidence, group_sort_key
from mlflow_audiodiag.diagnosis.findings import Finding, Severity
from mlflow_audiodiag.diagnosis.thresholds import Thresholds

Rule = Callable[[RunEvidence, Thresholds], Finding | None]

VAL_ACCURACY = schema.split_metric(schema.SPLIT_VAL, "accuracy")
TRAIN_ACCURACY = schema.split_metric(schema.SPLIT_TRAIN, "accuracy")
VAL_LOSS = schema.split_metric(schema.SPLIT_VAL, "loss")
TRAIN_LOSS = schema.split_metric(schema.SPLIT_TRAIN, "loss")
TOP_CLASS_FRACTION = schema.VAL_PRED_PREFIX + "top_class_fraction"
GRAD_NORM_TOTAL = schema.GRAD_NORM_PREFIX + "total"
TRAIN_LABELS = f"{schema.LABELS_PREFIX}{schema.SPLIT_TRAIN}/"
VAL_LABELS = f"{schema.LABELS_PREFIX}{schema.SPLIT_VAL}/"

# Causes inferred by ruling others out score at most this much.
_INFERRED_CAP = 0.75
# Score cap of a finding that is likely a consequence of another finding in the same run.
_DOWNSTREAM_CAP = 0.5


class MissingSignal(Exception):
    """A check cannot run: the signal ``name`` was not logged, or too little of it."""

    def __init__(self, name: str, reason: str = "not logged") -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


# --- helpers ---------------------------------------------------------------------------------


def _ramp(value: float, start: float, full: float) -> float:
    """0 at ``start``, 1 at ``full`` (either direction), linear and clamped."""
    if not np.isfinite(value):
        return 1.0
    if full == start:
        return 1.0
    return float(np.clip((value - start) / (full - start), 0.0, 1.0))


def _log_ramp(value: float, start: float, full: float) -> float:
    """:func:`_ramp` on a log10 scale; ``value <= 0`` counts as beyond a falling ramp's end."""
    if value <= 0 or start <= 0 or full <= 0:
        return 1.0 if full < start else 0.0
    return _ramp(np.log10(value), np.log10(start), np.log10(full))


def _score(strength: float, cap: float = 1.0) -> float:
    return round(0.5 + (cap - 0.5) * float(np.clip(strength, 0.0, 1.0)), 4)


def _finite_rows(data: np.ndarray) -> np.ndarray:
    return data[np.isfinite(data[:, 1])]


def _require_rows(ev: RunEvidence, name: str, min_points: int = 1) -> np.ndarray:
    data = ev.series(name)
    if data is None:
        raise MissingSignal(name)
    rows = _finite_rows(data)
    if len(rows) < min_points:
        raise MissingSignal(name, f"{len(rows)} finite points, needs {min_points}")
    return rows


def _require_epochs(ev: RunEvidence, name: str, t: Thresholds) -> np.ndarray:
    rows = _require_rows(ev, name)
    if len(rows) < t.min_epochs:
        raise MissingSignal(name, f"{len(rows)} epochs, needs {t.min_epochs}")
    return rows[:, 1]


def _segment(n: int, fraction: float) -> int:
    return max(1, int(round(n * fraction)))


def _active_steps(ev: RunEvidence, lr_names: list[str], t: Thresholds) -> np.ndarray | None:
    """Steps at which the largest LR is at least ``lr_active_fraction`` of its peak, or None
    when no LR was logged or it was never positive."""
    series = [_finite_rows(data) for name in lr_names if (data := ev.series(name)) is not None]
    rows = np.concatenate(series) if series else np.zeros((0, 2))
    if not len(rows) or rows[:, 1].max() <= 0:
        return None
    steps, index = np.unique(rows[:, 0], return_inverse=True)
    largest = np.full(len(steps), -np.inf)
    np.maximum.at(largest, index, rows[:, 1])
    return steps[largest >= t.lr_active_fraction * largest.max()]


def _active_rows(rows: np.ndarray, active: np.ndarray | None, min_rows: int = 1) -> np.ndarray:
    if active is None:
        return rows
    kept = rows[np.isin(rows[:, 0], active)]
    return kept if len(kept) >= min_rows else rows


def _plateau_window(ev: RunEvidence, name: str, t: Thresholds) -> np.ndarray:
    """The last ``window_epochs`` finite rows of an epoch series, leaving out epochs whose LR
    (``train/lr``) was annealed below ``lr_active_fraction`` of its peak."""
    rows = _require_rows(ev, name)
    active = _active_steps(ev, [schema.METRIC_LR], t)
    return _active_rows(rows, active, t.window_epochs)[-t.window_epochs :]


def _is_frozen(ev: RunEvidence, group: str, t: Thresholds) -> bool:
    value = ev.latest(schema.FROZEN_FRACTION_PREFIX + group)
    return value is not None and value >= t.frozen_fraction


def _update_ratios(ev: RunEvidence, t: Thresholds, trainable_only: bool) -> dict[str, float]:
    """Per group, the median update/weight ratio over the steps with an active LR."""
    active = _active_steps(ev, [schema.LR_PREFIX + g for g in ev.groups(schema.LR_PREFIX)], t)
    out = {}
    for group in ev.groups(schema.UPDATE_RATIO_PREFIX):
        if trainable_only and _is_frozen(ev, group, t):
            continue
        rows = _finite_rows(ev.series(schema.UPDATE_RATIO_PREFIX + group))
        rows = _active_rows(rows, active)
        if len(rows):
            out[group] = float(np.median(rows[:, 1]))
    return out


def _require_update_ratio(ev: RunEvidence, t: Thresholds) -> tuple[float, dict[str, float]]:
    """The largest per-group median update ratio (the fastest-moving trainable group) and the
    per-group medians."""
    ratios = _update_ratios(ev, t, trainable_only=True)
    if not ratios:
        raise MissingSignal(schema.UPDATE_RATIO_PREFIX + "<group>")
    return max(ratios.values()), ratios


def _loss_blowup(ev: RunEvidence, t: Thresholds) -> float | None:
    """Last / first train loss (epoch series, else step loss medians); inf when the last epoch
    loss is non-finite; None without a loss."""
    losses = ev.values(TRAIN_LOSS)
    if losses is not None and len(losses) >= 2:
        finite = losses[np.isfinite(losses)]
        if not np.isfinite(losses[-1]) and len(finite):
            return float("inf")
        if len(finite) >= 2 and finite[0] > 0:
            return float(finite[-1] / finite[0])
    steps = ev.values(schema.METRIC_STEP_LOSS)
    if steps is not None:
        steps = steps[np.isfinite(steps)]
        if len(steps) >= 2:
            k = _segment(len(steps), t.recent_fraction)
            early = float(np.median(steps[:k]))
            if early > 0:
                return float(np.median(steps[-k:]) / early)
    return None


def _majority_baseline(ev: RunEvidence) -> float | None:
    value = ev.latest(schema.METRIC_MAJORITY_BASELINE)
    return value if value is not None else ev.latest(VAL_LABELS + "majority_fraction")


def _chance(ev: RunEvidence) -> float | None:
    """Train accuracy of always guessing the largest class (1/K when only counts exist)."""
    value = ev.latest(TRAIN_LABELS + "majority_fraction")
    if value is not None:
        return value
    classes = ev.groups(TRAIN_LABELS + "count/")
    return 1.0 / len(classes) if classes else None


def _param(ev: RunEvidence, key: str, default: str = "?") -> str:
    return ev.params.get(key, default)


def _param_float(ev: RunEvidence, key: str) -> float | None:
    try:
        return float(ev.params[key])
    except (KeyError, ValueError):
        return None


def _lr_hint(ev: RunEvidence, factor: float) -> str:
    lr = _param_float(ev, "optim.lr")
    if lr is None:
        return f"{'raise' if factor > 1 else 'lower'} -P lr by about {max(factor, 1 / factor):g}x"
    return f"-P lr={lr * factor:g} (now {lr:g})"


def _optimization_problems(ev: RunEvidence, t: Thresholds) -> list[str]:
    """Codes of the optimization findings that fire; raises MissingSignal when neither gradient
    norms nor update ratios were logged (optimization health cannot be judged)."""
    if not ev.groups(schema.GRAD_NORM_PREFIX) and not ev.groups(schema.UPDATE_RATIO_PREFIX):
        raise MissingSignal(
            schema.GRAD_NORM_PREFIX + "<group>", "needed to rule out optimization problems"
        )
    problems = []
    for rule in (
        non_finite,
        no_weight_updates,
        exploding_gradients,
        vanishing_gradients,
        lr_too_high,
        lr_too_low,
    ):
        try:
            found = rule(ev, t)
        except MissingSignal:
            continue
        if found is not None and found.severity is not Severity.INFO:
            problems.append(found.code)
    return problems


# --- symptom ---------------------------------------------------------------------------------


def stagnant_validation(ev: RunEvidence, t: Thresholds) -> Finding | None:
    """Val accuracy flat over the window (by range and slope, or exactly repeated) and not
    converged."""
    acc = _require_epochs(ev, VAL_ACCURACY, t)
    rows = _plateau_window(ev, VAL_ACCURACY, t)
    window = rows[:, 1]
    spread = float(window.max() - window.min())
    slope = float(np.polyfit(rows[:, 0], window, 1)[0])
    _, counts = np.unique(window, return_counts=True)
    repeat = float(counts.max() / len(window))
    level = float(window.mean())
    max_range, max_slope = t.flat_range, t.flat_slope
    n_val = _val_clips(ev)
    noise = float(np.sqrt(level * (1.0 - level) / n_val)) if n_val else 0.0
    max_range = max(max_range, t.flat_noise_sigmas * noise)
    spread_x = float(np.sqrt(np.sum((rows[:, 0] - rows[:, 0].mean()) ** 2)))
    if spread_x > 0:  # standard error of a least-squares slope through pure noise
        max_slope = max(max_slope, 0.5 * t.flat_noise_sigmas * noise / spread_x)
    flat = (spread <= max_range and abs(slope) <= max_slope) or repeat >= t.repeat_fraction
    if not flat or level >= t.converged_accuracy:
        return None
    majority = _majority_baseline(ev)
    improvement = float(acc.max() - acc[0])
    at_majority = majority is not None and level <= majority + t.majority_tolerance
    evidence: dict[str, float | str] = {
        "epochs": float(len(acc)),
        "window": f"epochs {rows[0, 0]:g}-{rows[-1, 0]:g}",
        "val_accuracy_mean": level,
        "val_accuracy_range": spread,
        "val_accuracy_slope": slope,
        "repeat_share": repeat,
        "constant_epochs": float(_trailing_repeats(acc)),
        "first_val_accuracy": float(acc[0]),
        "best_val_accuracy": float(acc.max()),
    }
    if majority is not None:
        evidence["majority_baseline"] = majority
    if n_val:
        evidence["val_clips"] = float(n_val)
        evidence["val_accuracy_noise"] = noise
    flatness = 1.0 - spread / max_range if max_range > 0 else 1.0
    return Finding(
        code=codes.STAGNANT_VALIDATION,
        severity=Severity.CRITICAL
        if at_majority or improvement < t.min_improvement
        else Severity.WARNING,
        title=f"Validation accuracy is flat at {level:.3f} over {evidence['window']}",
        evidence=evidence,
        thresholds={
            "flat_range": max_range,
            "flat_slope": max_slope,
            "repeat_fraction": t.repeat_fraction,
            "converged_accuracy": t.converged_accuracy,
        },
        fix=(
            "This is the symptom; the cause findings ranked with it say why. Compare the "
            "plateau with the majority guess (data/val_majority_accuracy) and judge progress "
            "by val/balanced_accuracy and val/macro_f1 as well; if no cause is found, try a "
            "different -P lr and -P scheduler=plateau (ReduceLROnPlateau on the val loss)."
        ),
        score=_score(max(repeat, flatness)),
    )


def _val_clips(ev: RunEvidence) -> float | None:
    """Number of val clips, from the label statistics or the dataset summary."""
    for name in (VAL_LABELS + "n", f"{schema.METRIC_CLIPS_PREFIX}{schema.SPLIT_VAL}"):
        value = ev.latest(name)
        if value is not None and value > 0:
            return value
    return None


def _trailing_repeats(values: np.ndarray) -> int:
    count = 1
    while count < len(values) and values[-count - 1] == values[-1]:
        count += 1
    return count


# --- data ------------------------------------------------------------------------------------


def majority_class_collapse(ev: RunEvidence, t: Thresholds) -> Finding | None:
    """Val predictions concentrated on one class (or, without prediction statistics, val
    accuracy pinned to the majority guess)."""
    top_rows = ev.series(TOP_CLASS_FRACTION)
    majority = _majority_baseline(ev)
    acc = ev.values(VAL_ACCURACY)
    if top_rows is None and (acc is None or majority is None):
        raise MissingSignal(TOP_CLASS_FRACTION)
    evidence: dict[str, float | str] = {}
    at_majority = False
    if acc is not None and majority is not None:
        window = acc[-t.window_epochs :]
        at_majority = bool(np.all(np.abs(window - majority) <= t.majority_tolerance))
        evidence["val_accuracy_last"] = float(acc[-1])
        evidence["majority_baseline"] = majority
        evidence["val_accuracy_at_majority"] = float(at_majority)
    if top_rows is not None:
        top = float(np.median(top_rows[-t.window_epochs :, 1]))
        evidence["top_class_fraction"] = top
        n_pred = ev.latest(schema.VAL_PRED_PREFIX + "n_predicted_classes")
        if n_pred is not None:
            evidence["n_predicted_classes"] = n_pred
        if not top >= t.collapse_top_fraction:
            return None
        strength = _ramp(top, t.collapse_top_fraction, 1.0)
        score = _score(0.5 * strength + 0.5 * at_majority)
        title = f"The model predicts one class for {top:.0%} of validation clips"
    else:
        if not at_majority:
            return None
        score = _score(0.4)
        title = f"Validation accuracy stays at the majority guess ({majority:.3f})"
    return Finding(
        code=codes.MAJORITY_CLASS_COLLAPSE,
        severity=Severity.CRITICAL,
        title=title,
        evidence=evidence,
        thresholds={
            "collapse_top_fraction": t.collapse_top_fraction,
            "majority_tolerance": t.majority_tolerance,
        },
        fix=(
            "The model has collapsed onto the majority class. Rebalance the training signal "
            "(-P class_balance=weighted_loss or -P class_balance=balanced_sampler, now "
            f"{_param(ev, 'loop.class_balance')}), make sure inputs are normalized "
            "(-P normalization=per_bin) and the LR is not so high that the logits saturate "
            f"({_lr_hint(ev, 0.3)}); judge progress by val/balanced_accuracy and val/macro_f1, "
            "which a majority guess cannot inflate."
        ),
        score=score,
    )


def class_imbalance(ev: RunEvidence, t: Thresholds) -> Finding | None:
    """The train split is dominated by a few classes."""
    ratio = ev.latest(TRAIN_LABELS + "imbalance_ratio")
    share = ev.latest(TRAIN_LABELS + "majority_fraction")
    if ratio is None and share is None:
        raise MissingSignal(TRAIN_LABELS + "imbalance_ratio")
    by_ratio = ratio is not None and ratio >= t.imbalance_ratio
    by_share = share is not None and share >= t.train_majority_fraction
    if not (by_ratio or by_share):
        return None
    balance = _param(ev, "loop.class_balance", "unknown")
    evidence: dict[str, float | str] = {"class_balance": balance}
    if ratio is not None:
        evidence["train_imbalance_ratio"] = ratio
    if share is not None:
        evidence["train_majority_fraction"] = share
    val_share = ev.latest(VAL_LABELS + "majority_fraction")
    if val_share is not None:
        evidence["val_majority_fraction"] = val_share
    strength = max(
        _log_ramp(ratio, t.imbalance_ratio, 10 * t.imbalance_ratio) if ratio else 0.0,
        _ramp(share, t.train_majority_fraction, 1.0) if share is not None else 0.0,
    )
    already = balance in ("weighted_loss", "balanced_sampler")
    if already:
        strength *= 0.5
        advice = (
            f"Class balancing is already on ({balance}); try the other mode, collect more "
            "clips of the small classes, or oversample them with augmentation"
        )
    else:
        advice = (
            "Balance the classes: -P class_balance=weighted_loss (loss weights inverse to "
            "class frequency) or -P class_balance=balanced_sampler (equal class frequency per "
            "batch); collect or augment more clips of the small classes"
        )
    label = f"{ratio:.1f}x" if ratio is not None else f"majority share {share:.0%}"
    return Finding(
        code=codes.CLASS_IMBALANCE,
        severity=Severity.WARNING,
        title=f"The training classes are imbalanced ({label})",
        evidence=evidence,
        thresholds={
            "imbalance_ratio": t.imbalance_ratio,
            "train_majority_fraction": t.train_majority_fraction,
        },
        fix=(
            f"{advice}. Plain accuracy rewards predicting the majority class; judge runs by "
            "val/balanced_accuracy and val/macro_f1."
        ),
        score=_score(strength),
    )


def _feature_stage(ev: RunEvidence) -> str:
    """``normalized`` when logged, else ``raw`` (then the model is assumed to see raw)."""
    normalized = f"{schema.FEATURES_PREFIX}normalized/{schema.SPLIT_TRAIN}/mean"
    return "normalized" if ev.latest(normalized) is not None else "raw"


def unnormalized_features(ev: RunEvidence, t: Thresholds) -> Finding | None:
    """The features the model sees are far from zero mean / unit variance, have a huge dynamic
    range, or the raw features are on a linear power scale."""
    stage = _feature_stage(ev)
    prefix = f"{schema.FEATURES_PREFIX}{stage}/{schema.SPLIT_TRAIN}/"
    mean, std = ev.latest(prefix + "mean"), ev.latest(prefix + "std")
    if mean is None or std is None:
        raise MissingSignal(f"{schema.FEATURES_PREFIX}normalized/{schema.SPLIT_TRAIN}/mean")
    spread = ev.latest(prefix + "dynamic_range")
    raw_spread = ev.latest(f"{schema.FEATURES_PREFIX}raw/{schema.SPLIT_TRAIN}/dynamic_range")
    problems = {
        "mean": abs(mean) > t.feature_mean_abs,
        "std": not t.feature_std_low <= std <= t.feature_std_high,
        "dynamic_range": spread is not None and spread > t.feature_dynamic_range,
        "raw_power_scale": raw_spread is not None and raw_spread > t.raw_dynamic_range,
    }
    if not any(problems.values()):
        return None
    evidence: dict[str, float | str] = {
        "stage": stage,
        "mean": mean,
        "std": std,
        "normalization": _param(ev, "data.normalization", "unknown"),
        "problems": ", ".join(name for name, bad in problems.items() if bad),
    }
    if spread is not None:
        evidence["dynamic_range"] = spread
    if raw_spread is not None:
        evidence["raw_dynamic_range"] = raw_spread
    std_strength = (
        _log_ramp(std, t.feature_std_high, 10 * t.feature_std_high)
        if std > t.feature_std_high
        else _log_ramp(std, t.feature_std_low, t.feature_std_low / 10)
    )
    strength = max(
        _ramp(abs(mean), t.feature_mean_abs, 10 * t.feature_mean_abs),
        std_strength,
        _log_ramp(spread, t.feature_dynamic_range, 10 * t.feature_dynamic_range) if spread else 0.0,
        _log_ramp(raw_spread, t.raw_dynamic_range, 100 * t.raw_dynamic_range)
        if raw_spread
        else 0.0,
    )
    return Finding(
        code=codes.UNNORMALIZED_FEATURES,
        severity=Severity.CRITICAL if problems["mean"] or problems["std"] else Severity.WARNING,
        title=(
            f"Input features are not standardized (mean {mean:.3g}, std {std:.3g}, {stage} stage)"
        ),
        evidence=evidence,
        thresholds={
            "feature_mean_abs": t.feature_mean_abs,
            "feature_std_low": t.feature_std_low,
            "feature_std_high": t.feature_std_high,
            "feature_dynamic_range": t.feature_dynamic_range,
            "raw_dynamic_range": t.raw_dynamic_range,
        },
        fix=(
            "Standardize the inputs: -P normalization=per_bin (per mel/MFCC bin, fitted on the "
            "training split; or global), so features have mean ~0 and std ~1; use "
            "log-compressed (dB) mel or MFCC features rather than linear power; in your own "
            "loop fit the scaler on the training split only and apply the same statistics to "
            "val and test."
        ),
        score=_score(strength),
    )


def normalization_mismatch(ev: RunEvidence, t: Thresholds) -> Finding | None:
    """Val features differ from train features after normalization (standardized mean
    difference per bin)."""
    stage = _feature_stage(ev)
    prefix = f"{schema.FEATURE_SHIFT_PREFIX}{stage}/{schema.SPLIT_VAL}_vs_train_smd_"
    smd_max, smd_mean = ev.latest(prefix + "max"), ev.latest(prefix + "mean")
    if smd_max is None and smd_mean is None:
        raise MissingSignal(
            f"{schema.FEATURE_SHIFT_PREFIX}normalized/{schema.SPLIT_VAL}_vs_train_smd_max"
        )
    by_max = smd_max is not None and smd_max >= t.smd_max
    by_mean = smd_mean is not None and smd_mean >= t.smd_mean
    if not (by_max or by_mean):
        return None
    evidence: dict[str, float | str] = {"stage": stage}
    if smd_max is not None:
        evidence["smd_max"] = smd_max
    if smd_mean is not None:
        evidence["smd_mean"] = smd_mean
    for split in (schema.SPLIT_TRAIN, schema.SPLIT_VAL):
        level = ev.latest(f"{schema.AUDIO_PREFIX}{split}/peak_dbfs_mean")
        if level is not None:
            evidence[f"{split}_peak_dbfs_mean"] = level
    strength = max(
        _ramp(smd_max, t.smd_max, 3 * t.smd_max) if smd_max is not None else 0.0,
        _ramp(smd_mean, t.smd_mean, 3 * t.smd_mean) if smd_mean is not None else 0.0,
    )
    return Finding(
        code=codes.NORMALIZATION_MISMATCH,
        severity=Severity.WARNING,
        title="Validation features are distributed differently from training features",
        evidence=evidence,
        thresholds={"smd_max": t.smd_max, "smd_mean": t.smd_mean},
        fix=(
            "Normalize val and test with the statistics fitted on the training split (never "
            "fit a scaler on val); check that the splits share recording conditions, sample "
            "rate and gain (audio/<split>/peak_dbfs_mean); -P normalization=per_utterance "
            "removes per-clip gain and channel offsets, and -P gain_p / -P noise_p augmentation "
            "makes the model robust to them."
        ),
        score=_score(strength),
    )


# --- optimization ----------------------------------------------------------------------------


def non_finite(ev: RunEvidence, t: Thresholds) -> Finding | None:
    """Non-finite losses, gradients, epoch losses or feature values were counted."""
    counts: dict[str, float] = {}
    for name in (schema.METRIC_NONFINITE_LOSS, schema.METRIC_NONFINITE_GRADS):
        value = ev.latest(name)
        if value is not None:
            counts[name] = value
    for name in (TRAIN_LOSS, VAL_LOSS):
        values = ev.values(name)
        if values is not None:
            counts[f"{name} (non-finite epochs)"] = float((~np.isfinite(values)).sum())
    feature_keys = [
        k
        for k in ev.summary
        if k.startswith(schema.FEATURES_PREFIX) and k.endswith(("/nan_count", "/inf_count"))
    ]
    if feature_keys:
        counts["feature values (nan/inf)"] = float(sum(ev.summary[k] for k in feature_keys))
    if not counts:
        raise MissingSignal(schema.METRIC_NONFINITE_LOSS)
    bad = {name: count for name, count in counts.items() if count > t.nonfinite_count}
    if not bad:
        return None
    return Finding(
        code=codes.NON_FINITE,
        severity=Severity.CRITICAL,
        title="Non-finite values (NaN/inf) appeared: " + ", ".join(bad),
        evidence={name: count for name, count in counts.items()},
        thresholds={"nonfinite_count": t.nonfinite_count},
        fix=(
            f"Lower the learning rate ({_lr_hint(ev, 0.1)}), keep gradient clipping on "
            f"(-P grad_clip=1.0, now {_param(ev, 'optim.grad_clip')}) and warm up "
            "(-P scheduler=warmup_cosine); check the inputs for NaN/inf "
            "(features/<stage>/<split>/nan_count) and take the log of power with a floor "
            "(dB features), never log(0)."
        ),
        score=1.0,
    )


def vanishing_gradients(ev: RunEvidence, t: Thresholds) -> Finding | None:
    """Early-layer gradient norms orders of magnitude below the late layers', or ~zero."""
    groups = [g for g in ev.groups(schema.GRAD_NORM_PREFIX) if not _is_frozen(ev, g, t)]
    if not groups:
        raise MissingSignal(schema.GRAD_NORM_PREFIX + "<group>")
    medians = {}
    for group in groups:
        values = _finite_rows(ev.series(schema.GRAD_NORM_PREFIX + group))[:, 1]
        if len(values):
            medians[group] = float(np.median(values[-_segment(len(values), t.recent_fraction) :]))
    if not medians:
        raise MissingSignal(schema.GRAD_NORM_PREFIX + "<group>", "no finite values")
    ordered = [g for g in groups if g in medians]
    early, late = ordered[0], ordered[-1]
    ratio = medians[early] / medians[late] if len(ordered) > 1 and medians[late] > 0 else None
    smallest = min(medians.values())
    by_ratio = ratio is not None and ratio < t.vanishing_ratio
    by_norm = smallest < t.vanishing_norm
    if not (by_ratio or by_norm):
        return None
    evidence: dict[str, float | str] = {
        f"grad_norm_median/{g}": value for g, value in medians.items()
    }
    evidence["smallest_group_median"] = smallest
    if ratio is not None:
        evidence[f"ratio_{early}_to_{late}"] = ratio
    strength = max(
        _log_ramp(ratio, t.vanishing_ratio, t.vanishing_ratio / 100) if ratio is not None else 0,
        _log_ramp(smallest, t.vanishing_norm, t.vanishing_norm / 100),
    )
    all_zero = all(v < t.vanishing_norm for v in medians.values())
    # An order of magnitude past the threshold, the early layers practically do not learn.
    return Finding(
        code=codes.VANISHING_GRADIENTS,
        severity=Severity.CRITICAL if all_zero or strength >= 0.5 else Severity.WARNING,
        title=(
            "Gradients vanish: "
            + (
                f"{early} gets {ratio:.1e}x the gradient of {late}"
                if by_ratio
                else f"smallest group gradient norm {smallest:.1e}"
            )
        ),
        evidence=evidence,
        thresholds={"vanishing_ratio": t.vanishing_ratio, "vanishing_norm": t.vanishing_norm},
        fix=(
            "Keep residual pre-norm blocks (the bundled model is pre-norm), use fewer layers "
            f"(-P layers, now {_param(ev, 'model.layers')}) or warm up a larger LR "
            f"({_lr_hint(ev, 3.0)} with -P scheduler=warmup_cosine); normalize the inputs "
            "(-P normalization=per_bin); if gradients are zero everywhere, check that the loss "
            "depends on the parameters (no detach() or torch.no_grad() in the forward pass)."
        ),
        score=_score(strength),
    )


def exploding_gradients(ev: RunEvidence, t: Thresholds) -> Finding | None:
    """Total gradient norm spikes, grows by orders of magnitude or is huge; ``loss_blowup``
    in the evidence says whether the loss diverged too."""
    values = _require_rows(ev, GRAD_NORM_TOTAL, min_points=4)[:, 1]
    k = _segment(len(values), t.recent_fraction)
    median = float(np.median(values))
    early, late = float(np.median(values[:k])), float(np.median(values[-k:]))
    spike = float(values.max() / median) if median > 0 else float("inf")
    growth = late / early if early > 0 else float("inf")
    by_spike, by_growth, by_level = (
        spike >= t.spike_ratio,
        growth >= t.growth_ratio,
        late >= t.grad_norm_high,
    )
    if not (by_spike or by_growth or by_level):
        return None
    loss_ratio = _loss_blowup(ev, t)
    blowup = loss_ratio is not None and loss_ratio >= t.loss_blowup_ratio
    evidence: dict[str, float | str] = {
        "grad_norm_max_over_median": spike,
        "grad_norm_growth": growth,
        "grad_norm_recent_median": late,
        "loss_blowup": float(blowup),
        "grad_clip": _param(ev, "optim.grad_clip", "unknown"),
    }
    if loss_ratio is not None:
        evidence["loss_last_over_first"] = loss_ratio
    strength = max(
        _log_ramp(spike, t.spike_ratio, 10 * t.spike_ratio),
        _log_ramp(growth, t.growth_ratio, 10 * t.growth_ratio),
        _log_ramp(late, t.grad_norm_high, 10 * t.grad_norm_high),
        float(blowup),
    )
    clip = _param_float(ev, "optim.grad_clip")
    # Isolated spikes under active clipping never reach the weights at full size.
    contained = not (blowup or by_growth or by_level) and clip is not None and clip > 0
    severity = Severity.CRITICAL if blowup else Severity.INFO if contained else Severity.WARNING
    return Finding(
        code=codes.EXPLODING_GRADIENTS,
        severity=severity,
        title="Gradients explode"
        + (" and the loss diverges" if blowup else f" (max/median {spike:.0f}x)"),
        evidence=evidence,
        thresholds={
            "spike_ratio": t.spike_ratio,
            "growth_ratio": t.growth_ratio,
            "grad_norm_high": t.grad_norm_high,
            "loss_blowup_ratio": t.loss_blowup_ratio,
        },
        fix=(
            f"Clip gradients (-P grad_clip=1.0, now {_param(ev, 'optim.grad_clip')}; 0 "
            f"disables clipping), lower the learning rate ({_lr_hint(ev, 0.3)}) and warm it up "
            "(-P scheduler=warmup_cosine); check for outlier inputs "
            "(features/normalized/train/max) and normalize them (-P normalization=per_bin)."
        ),
        score=_score(strength),
    )


def lr_too_low(ev: RunEvidence, t: Thresholds) -> Finding | None:
    """Update/weight ratios far below ~1e-3 while the training loss barely moves."""
    ratio, ratios = _require_update_ratio(ev, t)
    losses = _require_rows(ev, TRAIN_LOSS, min_points=2)[:, 1]
    drop = float((losses[0] - losses.min()) / losses[0]) if losses[0] > 0 else 0.0
    if not (t.update_ratio_zero < ratio < t.update_ratio_low and drop < t.loss_flat_change):
        return None
    return Finding(
        code=codes.LR_TOO_LOW,
        severity=Severity.WARNING,
        title=f"Learning rate too low: weights move by at most {ratio:.1e} of their norm per step",
        evidence={
            "update_ratio_fastest_group": ratio,
            **{f"update_ratio_median/{g}": v for g, v in ratios.items()},
            "train_loss_relative_drop": drop,
            "lr": _param(ev, "optim.lr", "unknown"),
        },
        thresholds={
            "update_ratio_low": t.update_ratio_low,
            "update_ratio_zero": t.update_ratio_zero,
            "loss_flat_change": t.loss_flat_change,
        },
        fix=(
            f"Raise the learning rate: {_lr_hint(ev, 10.0)}; per-step update/weight ratios "
            "around 1e-3 are typical. Make sure the schedule does not decay it too early "
            f"(-P scheduler, now {_param(ev, 'optim.scheduler')}; -P scheduler=plateau lowers "
            "it only when the val loss stops improving)."
        ),
        score=_score(_log_ramp(ratio, t.update_ratio_low, t.update_ratio_low / 100)),
    )


def lr_too_high(ev: RunEvidence, t: Thresholds) -> Finding | None:
    """Update/weight ratios far above ~1e-2, or a training loss that rises or oscillates."""
    ratios: dict[str, float] = {}
    try:
        ratio, ratios = _require_update_ratio(ev, t)
    except MissingSignal:
        ratio = None
    rows = ev.series(TRAIN_LOSS)
    losses = None if rows is None else _finite_rows(rows)[:, 1]
    if ratio is None and (losses is None or len(losses) < 2):
        raise MissingSignal(schema.UPDATE_RATIO_PREFIX + "<group>")
    by_ratio = ratio is not None and ratio >= t.update_ratio_high
    rise = oscillation = None
    if losses is not None and len(losses) >= 2 and losses.min() > 0 and losses[0] > 0:
        window = losses[-t.window_epochs :]
        before = losses[: -t.window_epochs] if len(losses) > t.window_epochs else losses[:1]
        rise = float(np.median(window) / before.min())
        upward = np.clip(np.diff(losses[-t.window_epochs - 1 :]), 0.0, None).sum()
        oscillation = float(upward / losses[0])
    by_rise = rise is not None and rise >= t.loss_rise_ratio
    by_oscillation = oscillation is not None and oscillation >= t.loss_oscillation
    if not (by_ratio or by_rise or by_oscillation):
        return None
    evidence: dict[str, float | str] = {"lr": _param(ev, "optim.lr", "unknown")}
    if ratio is not None:
        evidence["update_ratio_fastest_group"] = ratio
        evidence.update({f"update_ratio_median/{g}": v for g, v in ratios.items()})
    if rise is not None:
        evidence["train_loss_window_over_earlier_min"] = rise
        evidence["train_loss_upward_moves"] = oscillation
    loss_strength = max(
        _ramp(rise, t.loss_rise_ratio, 2 * t.loss_rise_ratio) if rise is not None else 0.0,
        _ramp(oscillation, t.loss_oscillation, 3 * t.loss_oscillation)
        if oscillation is not None
        else 0.0,
    )
    strength = max(
        _log_ramp(ratio, t.update_ratio_high, 10 * t.update_ratio_high) if by_ratio else 0.0,
        0.5 * loss_strength,
    )
    reason = (
        f"weights change by {ratio:.1e} of their norm per step"
        if by_ratio
        else "the training loss " + ("rises" if by_rise else "oscillates")
    )
    unstable = loss_strength >= 1.0 or (by_ratio and (by_rise or by_oscillation))
    return Finding(
        code=codes.LR_TOO_HIGH,
        severity=Severity.CRITICAL if unstable else Severity.WARNING,
        title=f"Learning rate too high: {reason}",
        evidence=evidence,
        thresholds={
            "update_ratio_high": t.update_ratio_high,
            "loss_rise_ratio": t.loss_rise_ratio,
            "loss_oscillation": t.loss_oscillation,
        },
        fix=(
            f"Lower the learning rate: {_lr_hint(ev, 0.1)}; warm it up and decay it "
            "(-P scheduler=warmup_cosine, or -P scheduler=plateau to cut it when the val loss "
            f"stalls) and clip gradients (-P grad_clip=1.0, now {_param(ev, 'optim.grad_clip')})."
        ),
        score=_score(strength),
    )


def no_weight_updates(ev: RunEvidence, t: Thresholds) -> Finding | None:
    """Parameter groups are frozen (``frozen_fraction`` ~1) or their weights do not change
    (update ratios ~0: the optimizer does not step or its LR is 0)."""
    frozen = {
        g: value
        for g in ev.groups(schema.FROZEN_FRACTION_PREFIX)
        if (value := ev.latest(schema.FROZEN_FRACTION_PREFIX + g)) is not None
    }
    ratios = _update_ratios(ev, t, trainable_only=False)
    if not frozen and not ratios:
        raise MissingSignal(schema.FROZEN_FRACTION_PREFIX + "<group>")
    frozen_groups = [g for g, value in frozen.items() if value >= t.frozen_fraction]
    still_groups = [g for g, value in ratios.items() if value <= t.update_ratio_zero]
    stuck = sorted(set(frozen_groups) | set(still_groups), key=group_sort_key)
    if not stuck:
        return None
    all_groups = set(frozen) | set(ratios)
    share = len(stuck) / len(all_groups)
    evidence: dict[str, float | str] = {
        "frozen_groups": ", ".join(frozen_groups),
        "groups_without_updates": ", ".join(still_groups),
        "stuck_share": share,
    }
    evidence.update({f"frozen_fraction/{g}": v for g, v in frozen.items() if g in stuck})
    evidence.update({f"update_ratio_median/{g}": v for g, v in ratios.items() if g in stuck})
    lr_values = [
        v for g in ev.groups(schema.LR_PREFIX) if (v := ev.latest(schema.LR_PREFIX + g)) is not None
    ]
    if lr_values:
        evidence["lr_last"] = max(lr_values)
    return Finding(
        code=codes.NO_WEIGHT_UPDATES,
        severity=Severity.CRITICAL if share == 1.0 or "head" in stuck else Severity.WARNING,
        title="Weights are not updated in: " + ", ".join(stuck),
        evidence=evidence,
        thresholds={
            "frozen_fraction": t.frozen_fraction,
            "update_ratio_zero": t.update_ratio_zero,
        },
        fix=(
            "Unfreeze the groups that should learn (requires_grad=True; see "
            "monitor/parameter_groups.json), build the optimizer over model.parameters() after "
            "any freezing or unfreezing, call optimizer.step() after backward() (an AMP "
            "GradScaler skips steps with inf gradients), and make sure the LR is not 0 "
            "(lr/<group>; -P lr)."
        ),
        score=_score(share),
    )


# --- generalization --------------------------------------------------------------------------


def _aligned_accuracies(ev: RunEvidence, t: Thresholds) -> tuple[np.ndarray, np.ndarray]:
    train = _require_rows(ev, TRAIN_ACCURACY)
    val = _require_rows(ev, VAL_ACCURACY)
    steps = np.intersect1d(train[:, 0], val[:, 0])
    if len(steps) < t.min_epochs:
        raise MissingSignal(TRAIN_ACCURACY, f"{len(steps)} epochs, needs {t.min_epochs}")
    return train[np.isin(train[:, 0], steps), 1], val[np.isin(val[:, 0], steps), 1]


def overfitting(ev: RunEvidence, t: Thresholds) -> Finding | None:
    """Train accuracy pulls away from val accuracy (gap large and growing), or val loss rises
    while train loss falls."""
    train, val = _aligned_accuracies(ev, t)
    k = min(t.window_epochs, max(1, len(train) // 2))
    gap_late = float(np.mean(train[-k:] - val[-k:]))
    gap_early = float(np.mean(train[:k] - val[:k]))
    growth = gap_late - gap_early
    rise = None
    val_loss, train_loss = ev.values(VAL_LOSS), ev.values(TRAIN_LOSS)
    if val_loss is not None and train_loss is not None:
        val_loss, train_loss = val_loss[np.isfinite(val_loss)], train_loss[np.isfinite(train_loss)]
        if len(val_loss) >= 2 and len(train_loss) >= 2 and val_loss.min() > 0:
            train_falling = train_loss[-k:].mean() < train_loss[:k].mean()
            rise = float(val_loss[-k:].mean() / val_loss.min()) if train_falling else None
    growing = growth >= t.overfit_gap_growth or (rise is not None and rise >= t.val_loss_rise_ratio)
    if not (gap_late >= t.overfit_gap and growing):
        return None
    evidence: dict[str, float | str] = {
        "train_accuracy_window": float(train[-k:].mean()),
        "val_accuracy_window": float(val[-k:].mean()),
        "gap_window": gap_late,
        "gap_first_epochs": gap_early,
        "gap_growth": growth,
    }
    if rise is not None:
        evidence["val_loss_window_over_min"] = rise
    for knob in ("noise_p", "stretch_p", "pitch_p", "specaug_p", "mixup_alpha"):
        if f"augment.{knob}" in ev.params:
            evidence[knob] = ev.params[f"augment.{knob}"]
    off = [
        knob
        for knob in ("noise_p", "stretch_p", "pitch_p", "specaug_p", "mixup_alpha")
        if _param_float(ev, f"augment.{knob}") == 0.0
    ]
    return Finding(
        code=codes.OVERFITTING,
        severity=Severity.WARNING,
        title=f"Overfitting: train accuracy exceeds val accuracy by {gap_late:.2f} and growing",
        evidence=evidence,
        thresholds={
            "overfit_gap": t.overfit_gap,
            "overfit_gap_growth": t.overfit_gap_growth,
            "val_loss_rise_ratio": t.val_loss_rise_ratio,
        },
        fix=(
            "Augment the training audio: background noise (-P noise_p=0.5), time-stretch "
            "(-P stretch_p=0.3), pitch-shift (-P pitch_p=0.3), SpecAugment masks "
            "(-P specaug_p=0.5) and mixup (-P mixup_alpha=0.2)"
            + (f" (off now: {', '.join(off)})" if off else "")
            + "; regularize (-P dropout=0.2, -P weight_decay=0.05), stop early "
            "(-P early_stopping_patience=10), use a smaller model (-P dim, -P layers) or "
            "collect more data."
        ),
        score=_score(_ramp(gap_late, t.overfit_gap, 4 * t.overfit_gap)),
    )


def underfitting(ev: RunEvidence, t: Thresholds) -> Finding | None:
    """Train and val accuracy both low, above chance, with healthy gradients and LR."""
    train, val = _aligned_accuracies(ev, t)
    k = min(t.window_epochs, len(train))
    train_late, val_late = float(train[-k:].mean()), float(val[-k:].mean())
    chance = _chance(ev)
    low = train_late < t.underfit_accuracy and val_late < t.underfit_accuracy
    beats_chance = chance is None or float(train.max()) > chance + t.chance_margin
    if not (low and beats_chance and train_late - val_late < t.overfit_gap):
        return None
    if _optimization_problems(ev, t):
        return None
    evidence: dict[str, float | str] = {
        "train_accuracy_window": train_late,
        "val_accuracy_window": val_late,
        **{
            knob: ev.params[f"model.{knob}"]
            for knob in ("layers", "dim", "heads")
            if f"model.{knob}" in ev.params
        },
    }
    if chance is not None:
        evidence["chance_accuracy"] = chance
    return Finding(
        code=codes.UNDERFITTING,
        severity=Severity.WARNING,
        title=(
            f"Underfitting: train accuracy {train_late:.2f} and val {val_late:.2f} stay low "
            "with healthy gradients and learning rate"
        ),
        evidence=evidence,
        thresholds={"underfit_accuracy": t.underfit_accuracy, "overfit_gap": t.overfit_gap},
        fix=(
            "Give the model more capacity and time: more layers, heads and width (-P layers=6 "
            f"-P heads=8 -P dim=192; now layers={_param(ev, 'model.layers')}, "
            f"heads={_param(ev, 'model.heads')}, dim={_param(ev, 'model.dim')}), finer patches "
            "(-P patch_frames=2), longer training (-P epochs); lighten heavy regularization "
            "(-P dropout, -P weight_decay, -P mixup_alpha, -P specaug_p)."
        ),
        score=_score(
            _ramp(t.underfit_accuracy - train_late, 0.0, t.underfit_accuracy), _INFERRED_CAP
        ),
    )


def label_noise(ev: RunEvidence, t: Thresholds) -> Finding | None:
    """Training accuracy never beats the majority guess although gradients and LR are
    healthy: labels probably do not match the audio."""
    train = _require_epochs(ev, TRAIN_ACCURACY, t)
    chance = _chance(ev)
    if chance is None:
        raise MissingSignal(TRAIN_LABELS + "majority_fraction")
    best = float(train.max())
    if best > chance + t.chance_margin:
        return None
    if _optimization_problems(ev, t):
        return None
    evidence: dict[str, float | str] = {"best_train_accuracy": best, "chance_accuracy": chance}
    silent = ev.latest(f"{schema.AUDIO_PREFIX}{schema.SPLIT_TRAIN}/silent_fraction")
    if silent is not None:
        evidence["train_silent_fraction"] = silent
    return Finding(
        code=codes.LABEL_NOISE,
        severity=Severity.CRITICAL,
        title=(
            f"Training accuracy ({best:.3f}) never beats the majority guess ({chance:.3f}) "
            "although gradients and learning rate look healthy"
        ),
        evidence=evidence,
        thresholds={"chance_margin": t.chance_margin},
        fix=(
            "The labels probably do not match the audio: check the manifest's label column "
            "or the folder names (a shifted or shuffled column), listen to a few clips per "
            "class, look for silent or clipped clips (audio/train/silent_fraction) and the "
            "same file under several labels; then check that the features differ between "
            "classes."
        ),
        score=_score(_ramp(chance + t.chance_margin - best, 0.0, t.chance_margin), _INFERRED_CAP),
    )


# --- attention -------------------------------------------------------------------------------


def attention_collapse(ev: RunEvidence, t: Thresholds) -> Finding | None:
    """Late in training, attention entropy is ~0 in some layer (attention on single tokens)
    or ~1 on average (uniform attention that ignores the content)."""
    layers = ev.groups(schema.ATTENTION_ENTROPY_PREFIX)
    if not layers:
        raise MissingSignal(schema.ATTENTION_ENTROPY_PREFIX + "<i>")
    late = {}
    for layer in layers:
        values = _require_epochs(ev, schema.ATTENTION_ENTROPY_PREFIX + layer, t)
        late[layer] = float(np.median(values[-t.window_epochs :]))
    collapsed = [layer for layer, value in late.items() if value <= t.attention_entropy_low]
    mean = float(np.mean(list(late.values())))
    uniform = mean >= t.attention_entropy_high
    if not (collapsed or uniform):
        return None
    evidence: dict[str, float | str] = {f"entropy/layer{k}": v for k, v in late.items()}
    evidence["entropy_mean"] = mean
    if collapsed:
        title = "Attention collapsed onto single tokens in layer(s) " + ", ".join(collapsed)
        fix = (
            f"Lower the learning rate and warm it up ({_lr_hint(ev, 0.3)}, "
            "-P scheduler=warmup_cosine), keep -P dropout and use more heads (-P heads); "
            "check that the inputs are normalized (-P normalization=per_bin)."
        )
        strength = _ramp(min(late.values()), t.attention_entropy_low, 0.0)
    else:
        title = f"Attention stays uniform (mean normalized entropy {mean:.3f})"
        fix = (
            "Attention does not pick out any time region: check that the clips are not mostly "
            "silence or padding (audio/train/silent_fraction, -P clip_seconds), use finer "
            f"patches (-P patch_frames=2, now {_param(ev, 'model.patch_frames')}), raise a "
            "too-low LR and train longer (-P epochs)."
        )
        strength = _ramp(mean, t.attention_entropy_high, 1.0)
    cap = _INFERRED_CAP
    try:
        upstream = _optimization_problems(ev, t)
    except MissingSignal:
        upstream = []
    if upstream:  # a measured optimization problem explains the attention better
        evidence["optimization_findings"] = ", ".join(upstream)
        cap = _DOWNSTREAM_CAP
    return Finding(
        code=codes.ATTENTION_COLLAPSE,
        severity=Severity.WARNING if collapsed else Severity.INFO,
        title=title,
        evidence=evidence,
        thresholds={
            "attention_entropy_low": t.attention_entropy_low,
            "attention_entropy_high": t.attention_entropy_high,
        },
        fix=fix,
        score=_score(strength, cap),
    )


RULES: dict[str, Rule] = {
    codes.STAGNANT_VALIDATION: stagnant_validation,
    codes.MAJORITY_CLASS_COLLAPSE: majority_class_collapse,
    codes.CLASS_IMBALANCE: class_imbalance,
    codes.UNNORMALIZED_FEATURES: unnormalized_features,
    codes.NORMALIZATION_MISMATCH: normalization_mismatch,
    codes.NON_FINITE: non_finite,
    codes.VANISHING_GRADIENTS: vanishing_gradients,
    codes.EXPLODING_GRADIENTS: exploding_gradients,
    codes.LR_TOO_LOW: lr_too_low,
    codes.LR_TOO_HIGH: lr_too_high,
    codes.NO_WEIGHT_UPDATES: no_weight_updates,
    codes.OVERFITTING: overfitting,
    codes.UNDERFITTING: underfitting,
    codes.LABEL_NOISE: label_noise,
    codes.ATTENTION_COLLAPSE: attention_collapse,
}
