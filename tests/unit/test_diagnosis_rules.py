"""Every diagnosis rule just below and just above each of its thresholds, and without its
signal."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mlflow_audiodiag.diagnosis import findings as codes
from mlflow_audiodiag.diagnosis import rules
from mlflow_audiodiag.diagnosis.evidence import RunEvidence
from mlflow_audiodiag.diagnosis.findings import Finding, Severity
from mlflow_audiodiag.diagnosis.thresholds import DEFAULT_THRESHOLDS as T
from mlflow_audiodiag.diagnosis.thresholds import Thresholds

GROUPS = ("embedding", "encoder.0", "encoder.1", "head")
N_STEPS = 40


def healthy_steps(n: int = N_STEPS) -> dict[str, list[float]]:
    """Per-step signals of a well-behaved optimization."""
    steps: dict[str, list[float]] = {"grad_norm/total": [2.0] * n, "lr/0": [1e-3] * n}
    for group in GROUPS:
        steps[f"grad_norm/{group}"] = [1.0] * n
        steps[f"update_ratio/{group}"] = [2e-3] * n
    return steps


def evidence(
    epochs: dict[str, list[float]] | None = None,
    steps: dict[str, list[float]] | None = None,
    summary: dict[str, float] | None = None,
    params: dict[str, str] | None = None,
) -> RunEvidence:
    return RunEvidence.from_values(epochs=epochs, steps=steps, summary=summary, params=params)


def falling(n: int = 10, start: float = 2.0, end: float = 1.0) -> list[float]:
    return list(np.linspace(start, end, n))


def fires(rule: rules.Rule, ev: RunEvidence, t: Thresholds = T) -> Finding | None:
    finding = rule(ev, t)
    if finding is not None:
        assert finding.code == rule.__name__
        assert 0.5 <= finding.score <= 1.0
        assert finding.fix and finding.title
        json.dumps(finding.to_dict(), allow_nan=False)
    return finding


def missing(rule: rules.Rule, ev: RunEvidence, t: Thresholds = T) -> str:
    with pytest.raises(rules.MissingSignal) as caught:
        rule(ev, t)
    return caught.value.name


def test_every_code_has_exactly_one_rule() -> None:
    assert list(rules.RULES) == list(codes.FINDING_CODES)
    assert all(rule.__name__ == code for code, rule in rules.RULES.items())


# --- stagnant_validation ----------------------------------------------------------------------


def _val(window: list[float], head: tuple[float, ...] = (0.2, 0.3)) -> RunEvidence:
    return evidence({"val/accuracy": [*head, *window]})


@pytest.mark.parametrize(
    ("window", "flat"),
    [
        ([0.5, 0.509, 0.5, 0.509, 0.5], True),  # range 0.009 < flat_range
        ([0.5, 0.511, 0.5, 0.511, 0.5], False),  # range 0.011 > flat_range
        ([0.5, 0.5019, 0.5038, 0.5057, 0.5076], True),  # slope 0.0019 < flat_slope
        ([0.5, 0.5021, 0.5042, 0.5063, 0.5084], False),  # slope 0.0021 > flat_slope
        ([0.5, 0.5, 0.5, 0.5, 0.6], True),  # 4 of 5 identical: repeat_fraction 0.8
        ([0.5, 0.5, 0.5, 0.6, 0.7], False),  # 3 of 5 identical
    ],
)
def test_stagnant_validation_flat_by_range_slope_or_repeats(
    window: list[float], flat: bool
) -> None:
    assert (fires(rules.stagnant_validation, _val(window)) is not None) is flat


@pytest.mark.parametrize(
    ("n_val", "flat"),
    [
        (None, False),  # range 0.06: not flat without knowing the val set's size
        (84, True),  # 3 standard errors of accuracy ~0.7 on 84 clips = 0.15
        (2000, False),  # on 2,000 clips 0.06 is far beyond sampling noise (0.03)
    ],
)
def test_stagnant_validation_tolerates_sampling_noise_of_small_val_sets(n_val, flat) -> None:
    window = [0.70, 0.74, 0.68, 0.73, 0.70]
    summary = {"labels/val/n": float(n_val)} if n_val else None
    ev = evidence({"val/accuracy": [0.2, 0.3, *window]}, summary=summary)
    finding = fires(rules.stagnant_validation, ev)
    assert (finding is not None) is flat
    if finding:
        assert finding.evidence["val_clips"] == n_val
        assert finding.thresholds["flat_range"] > T.flat_range


def test_stagnant_validation_noise_tolerance_keeps_a_climbing_run_out() -> None:
    climbing = [0.50, 0.55, 0.60, 0.65, 0.70]  # +0.05 per epoch: well beyond the slope noise
    ev = evidence({"val/accuracy": [0.2, 0.3, *climbing]}, summary={"labels/val/n": 84.0})
    assert fires(rules.stagnant_validation, ev) is None


@pytest.mark.parametrize(("level", "flat"), [(0.895, True), (0.905, False)])
def test_stagnant_validation_plateau_above_converged_accuracy_is_not_stagnation(
    level: float, flat: bool
) -> None:
    assert (fires(rules.stagnant_validation, _val([level] * 5)) is not None) is flat


def test_stagnant_validation_needs_min_epochs_of_val_accuracy() -> None:
    assert missing(rules.stagnant_validation, evidence({"train/loss": [1.0] * 9})) == (
        "val/accuracy"
    )
    short = evidence({"val/accuracy": [0.3] * (T.min_epochs - 1)})
    assert missing(rules.stagnant_validation, short) == "val/accuracy"
    assert fires(rules.stagnant_validation, evidence({"val/accuracy": [0.3] * T.min_epochs}))


def test_stagnant_validation_reports_repeats_and_is_critical_at_the_majority_guess() -> None:
    ev = evidence({"val/accuracy": [0.125] * 8}, summary={"data/val_majority_accuracy": 0.125})
    finding = fires(rules.stagnant_validation, ev)
    assert finding.severity is Severity.CRITICAL
    assert finding.evidence["constant_epochs"] == 8.0
    assert finding.evidence["repeat_share"] == 1.0
    assert finding.score == 1.0


def test_stagnant_validation_ignores_epochs_whose_lr_was_annealed_to_zero() -> None:
    acc = [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8]
    lr = [1e-3] * 7 + [1e-6] * 5  # cosine tail: the model stops changing by design
    assert fires(rules.stagnant_validation, evidence({"val/accuracy": acc})) is not None
    ev = evidence({"val/accuracy": acc, "train/lr": lr})
    assert fires(rules.stagnant_validation, ev) is None


# --- majority_class_collapse ------------------------------------------------------------------


@pytest.mark.parametrize(("top", "collapsed"), [(0.89, False), (0.91, True)])
def test_majority_class_collapse_by_top_class_fraction(top: float, collapsed: bool) -> None:
    ev = evidence({"val_pred/top_class_fraction": [0.3, 0.5, top, top, top, top, top]})
    assert (fires(rules.majority_class_collapse, ev) is not None) is collapsed


@pytest.mark.parametrize(("offset", "collapsed"), [(0.019, True), (0.021, False)])
def test_majority_class_collapse_without_prediction_stats_uses_the_majority_guess(
    offset: float, collapsed: bool
) -> None:
    ev = evidence({"val/accuracy": [0.6 + offset] * 6}, summary={"data/val_majority_accuracy": 0.6})
    finding = fires(rules.majority_class_collapse, ev)
    assert (finding is not None) is collapsed
    if finding:
        assert finding.severity is Severity.CRITICAL


def test_majority_class_collapse_scores_higher_when_accuracy_equals_the_majority_guess() -> None:
    epochs = {"val_pred/top_class_fraction": [1.0] * 6, "val/accuracy": [0.7] * 6}
    apart = fires(
        rules.majority_class_collapse,
        evidence(epochs, summary={"labels/val/majority_fraction": 0.3}),
    )
    equal = fires(
        rules.majority_class_collapse,
        evidence(epochs, summary={"labels/val/majority_fraction": 0.7}),
    )
    assert apart.score < equal.score == 1.0


def test_majority_class_collapse_missing_signal() -> None:
    assert missing(rules.majority_class_collapse, evidence({"val/accuracy": [0.5] * 6})) == (
        "val_pred/top_class_fraction"
    )


# --- class_imbalance --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("summary", "imbalanced"),
    [
        ({"labels/train/imbalance_ratio": 2.9}, False),
        ({"labels/train/imbalance_ratio": 3.1}, True),
        ({"labels/train/majority_fraction": 0.69}, False),
        ({"labels/train/majority_fraction": 0.71}, True),
    ],
)
def test_class_imbalance_thresholds(summary: dict[str, float], imbalanced: bool) -> None:
    finding = fires(rules.class_imbalance, evidence(summary=summary))
    assert (finding is not None) is imbalanced
    if finding:
        assert "class_balance=weighted_loss" in finding.fix
        assert "balanced_sampler" in finding.fix


def test_class_imbalance_counts_less_when_balancing_is_already_on() -> None:
    summary = {"labels/train/imbalance_ratio": 20.0}
    plain = fires(rules.class_imbalance, evidence(summary=summary))
    balanced = fires(
        rules.class_imbalance,
        evidence(summary=summary, params={"loop.class_balance": "weighted_loss"}),
    )
    assert balanced.score < plain.score
    assert "already on (weighted_loss)" in balanced.fix


def test_class_imbalance_missing_signal() -> None:
    assert missing(rules.class_imbalance, evidence()) == "labels/train/imbalance_ratio"


# --- unnormalized_features --------------------------------------------------------------------

_NORMAL = {
    "features/normalized/train/mean": 0.0,
    "features/normalized/train/std": 1.0,
    "features/normalized/train/dynamic_range": 11.0,
    "features/raw/train/dynamic_range": 100.0,
}


@pytest.mark.parametrize(
    ("key", "value", "bad"),
    [
        ("features/normalized/train/mean", 0.49, False),
        ("features/normalized/train/mean", -0.51, True),
        ("features/normalized/train/std", 0.51, False),
        ("features/normalized/train/std", 0.49, True),
        ("features/normalized/train/std", 1.99, False),
        ("features/normalized/train/std", 2.01, True),
        ("features/normalized/train/dynamic_range", 99.0, False),
        ("features/normalized/train/dynamic_range", 101.0, True),
        ("features/raw/train/dynamic_range", 9.9e3, False),
        ("features/raw/train/dynamic_range", 1.01e4, True),
    ],
)
def test_unnormalized_features_thresholds(key: str, value: float, bad: bool) -> None:
    finding = fires(rules.unnormalized_features, evidence(summary={**_NORMAL, key: value}))
    assert (finding is not None) is bad
    if finding:
        assert "normalization=per_bin" in finding.fix


def test_unnormalized_features_without_normalized_stage_judges_the_raw_features() -> None:
    ev = evidence(summary={"features/raw/train/mean": -40.0, "features/raw/train/std": 20.0})
    finding = fires(rules.unnormalized_features, ev)
    assert finding.evidence["stage"] == "raw"
    assert finding.severity is Severity.CRITICAL and finding.score == 1.0


def test_unnormalized_features_missing_signal() -> None:
    name = missing(rules.unnormalized_features, evidence(summary={"labels/train/n": 3.0}))
    assert name == "features/normalized/train/mean"


# --- normalization_mismatch -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("smd_max", "smd_mean", "bad"),
    [(0.99, 0.1, False), (1.01, 0.1, True), (0.99, 0.49, False), (0.99, 0.51, True)],
)
def test_normalization_mismatch_thresholds(smd_max: float, smd_mean: float, bad: bool) -> None:
    prefix = "feature_shift/normalized/val_vs_train_smd_"
    ev = evidence(
        summary={
            "features/normalized/train/mean": 0.0,
            prefix + "max": smd_max,
            prefix + "mean": smd_mean,
        }
    )
    finding = fires(rules.normalization_mismatch, ev)
    assert (finding is not None) is bad
    if finding:
        assert "fitted on the training split" in finding.fix


def test_normalization_mismatch_missing_signal() -> None:
    assert missing(rules.normalization_mismatch, evidence()) == (
        "feature_shift/normalized/val_vs_train_smd_max"
    )


# --- non_finite -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "bad"),
    [
        ({"steps": {"nonfinite/loss": [0, 0], "nonfinite/grads": [0, 0]}}, False),
        ({"steps": {"nonfinite/loss": [0, 1], "nonfinite/grads": [0, 0]}}, True),
        ({"steps": {"nonfinite/loss": [0, 0], "nonfinite/grads": [0, 1]}}, True),
        ({"epochs": {"train/loss": [2.0, 1.0, 0.5]}}, False),
        ({"epochs": {"train/loss": [2.0, 1.0, math.nan]}}, True),
        ({"summary": {"features/normalized/train/nan_count": 0.0}}, False),
        ({"summary": {"features/normalized/train/inf_count": 1.0}}, True),
    ],
)
def test_non_finite_counts(kwargs: dict, bad: bool) -> None:
    finding = fires(rules.non_finite, evidence(**kwargs))
    assert (finding is not None) is bad
    if finding:
        assert finding.severity is Severity.CRITICAL
        assert "grad_clip" in finding.fix


def test_non_finite_threshold_is_configurable() -> None:
    ev = evidence(steps={"nonfinite/grads": [3.0]})
    assert fires(rules.non_finite, ev, Thresholds(nonfinite_count=3)) is None
    assert fires(rules.non_finite, ev, Thresholds(nonfinite_count=2)) is not None


def test_non_finite_missing_signal() -> None:
    assert missing(rules.non_finite, evidence({"val/accuracy": [0.1]})) == "nonfinite/loss"


# --- vanishing_gradients ----------------------------------------------------------------------


def _grads(norms: dict[str, float], n: int = N_STEPS) -> dict[str, list[float]]:
    return {f"grad_norm/{g}": [v] * n for g, v in norms.items()}


@pytest.mark.parametrize(("ratio", "vanishing"), [(1.1e-3, False), (0.9e-3, True)])
def test_vanishing_gradients_early_to_late_ratio(ratio: float, vanishing: bool) -> None:
    ev = evidence(steps=_grads({"head": 1.0, "encoder.0": 0.5, "embedding": ratio}))
    finding = fires(rules.vanishing_gradients, ev)
    assert (finding is not None) is vanishing
    if finding:
        assert finding.evidence["ratio_embedding_to_head"] == pytest.approx(ratio)


@pytest.mark.parametrize(("norm", "vanishing"), [(1.1e-6, False), (0.9e-6, True)])
def test_vanishing_gradients_near_zero_norm(norm: float, vanishing: bool) -> None:
    ev = evidence(steps=_grads({"encoder.0": norm}))
    assert (fires(rules.vanishing_gradients, ev) is not None) is vanishing


def test_vanishing_gradients_judges_recent_steps_and_skips_frozen_groups() -> None:
    fading = {"grad_norm/encoder.0": [1.0] * 30 + [1e-9] * 10}
    assert fires(rules.vanishing_gradients, evidence(steps=fading)) is not None
    frozen = evidence(
        steps={**fading, **_grads({"head": 1.0})},
        summary={"frozen_fraction/encoder.0": 1.0},
    )
    assert fires(rules.vanishing_gradients, frozen) is None


@pytest.mark.parametrize(("ratio", "severity"), [(2e-4, "warning"), (5e-5, "critical")])
def test_vanishing_gradients_an_order_past_the_threshold_is_critical(ratio, severity) -> None:
    ev = evidence(steps=_grads({"head": 1.0, "encoder.0": 0.5, "embedding": ratio}))
    assert fires(rules.vanishing_gradients, ev).severity == severity


def test_vanishing_gradients_missing_signal() -> None:
    ev = evidence(steps={"grad_norm/total": [1.0] * 5})
    assert missing(rules.vanishing_gradients, ev) == "grad_norm/<group>"


# --- exploding_gradients ----------------------------------------------------------------------


def _total(values: list[float], loss: list[float] | None = None) -> RunEvidence:
    return evidence({"train/loss": loss} if loss else None, steps={"grad_norm/total": values})


@pytest.mark.parametrize(("spike", "exploding"), [(99.0, False), (101.0, True)])
def test_exploding_gradients_spike_ratio(spike: float, exploding: bool) -> None:
    values = [1.0] * 20 + [spike] + [1.0] * 19
    assert (fires(rules.exploding_gradients, _total(values)) is not None) is exploding


@pytest.mark.parametrize(("late", "exploding"), [(9.9, False), (10.1, True)])
def test_exploding_gradients_growth_ratio(late: float, exploding: bool) -> None:
    values = [1.0] * 10 + [3.0] * 20 + [late] * 10
    assert (fires(rules.exploding_gradients, _total(values)) is not None) is exploding


@pytest.mark.parametrize(("level", "exploding"), [(999.0, False), (1001.0, True)])
def test_exploding_gradients_absolute_level(level: float, exploding: bool) -> None:
    assert (fires(rules.exploding_gradients, _total([level] * 12)) is not None) is exploding


@pytest.mark.parametrize(("last_loss", "blowup"), [(3.8, False), (4.2, True)])
def test_exploding_gradients_reports_loss_blowup(last_loss: float, blowup: bool) -> None:
    finding = fires(rules.exploding_gradients, _total([1e4] * 12, loss=[2.0, 1.5, last_loss]))
    assert finding.evidence["loss_blowup"] == float(blowup)
    assert (finding.severity is Severity.CRITICAL) is blowup
    assert "grad_clip" in finding.fix


@pytest.mark.parametrize(("clip", "severity"), [("0.0", "warning"), ("1.0", "info")])
def test_exploding_gradients_isolated_spikes_under_clipping_are_info(clip, severity) -> None:
    values = [1.0] * 20 + [500.0] + [1.0] * 19
    ev = evidence(steps={"grad_norm/total": values}, params={"optim.grad_clip": clip})
    assert fires(rules.exploding_gradients, ev).severity == severity


def test_exploding_gradients_missing_signal() -> None:
    assert missing(rules.exploding_gradients, evidence()) == "grad_norm/total"
    assert missing(rules.exploding_gradients, _total([1.0, 2.0, 3.0])) == "grad_norm/total"


# --- lr_too_low -------------------------------------------------------------------------------


def _ratios(value: float, loss: list[float] | None, n: int = N_STEPS, **extra) -> RunEvidence:
    steps = {f"update_ratio/{g}": [value] * n for g in GROUPS}
    steps.update(extra)
    return evidence({"train/loss": loss} if loss else None, steps=steps)


FLAT_LOSS = [2.08, 2.07, 2.08, 2.06, 2.07, 2.07]  # relative drop 1 %


@pytest.mark.parametrize(("ratio", "low"), [(1.1e-4, False), (0.9e-4, True), (1e-9, False)])
def test_lr_too_low_update_ratio(ratio: float, low: bool) -> None:
    # 1e-9 is at or below update_ratio_zero: weights do not move at all (no_weight_updates)
    assert (fires(rules.lr_too_low, _ratios(ratio, FLAT_LOSS)) is not None) is low


@pytest.mark.parametrize(("last", "low"), [(1.91, True), (1.89, False)])
def test_lr_too_low_needs_a_flat_loss(last: float, low: bool) -> None:
    loss = [2.0, 1.99, 1.98, last]  # a relative drop of 5 % is loss_flat_change
    assert (fires(rules.lr_too_low, _ratios(1e-6, loss)) is not None) is low


def test_lr_too_low_suggests_a_tenfold_lr_and_leaves_out_annealed_steps() -> None:
    ev = _ratios(1e-6, FLAT_LOSS)
    ev.params["optim.lr"] = "1e-07"
    assert "-P lr=1e-06 (now 1e-07)" in fires(rules.lr_too_low, ev).fix
    ratios = {"update_ratio/head": [2e-3] * 10 + [1e-7] * 30}  # tiny only once annealed
    lr = {"lr/0": [1e-3] * 10 + [1e-7] * 30}
    assert fires(rules.lr_too_low, evidence({"train/loss": FLAT_LOSS}, ratios)) is not None
    assert fires(rules.lr_too_low, evidence({"train/loss": FLAT_LOSS}, ratios | lr)) is None


def test_lr_too_low_missing_signals() -> None:
    assert missing(rules.lr_too_low, evidence({"train/loss": FLAT_LOSS})) == "update_ratio/<group>"
    assert missing(rules.lr_too_low, _ratios(1e-6, None)) == "train/loss"


# --- lr_too_high ------------------------------------------------------------------------------


@pytest.mark.parametrize(("ratio", "high"), [(0.049, False), (0.051, True)])
def test_lr_too_high_update_ratio(ratio: float, high: bool) -> None:
    assert (fires(rules.lr_too_high, _ratios(ratio, falling())) is not None) is high


@pytest.mark.parametrize(("level", "high"), [(1.19, False), (1.21, True)])
def test_lr_too_high_rising_loss(level: float, high: bool) -> None:
    loss = [4.0, 1.0, 1.0, 1.0, 1.0, 1.0] + [level] * 5
    finding = fires(rules.lr_too_high, evidence({"train/loss": loss}))
    assert (finding is not None) is high
    if finding:
        assert "rises" in finding.title


@pytest.mark.parametrize(("bump", "high"), [(0.18, False), (0.22, True)])
def test_lr_too_high_oscillating_loss(bump: float, high: bool) -> None:
    loss = [2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0 + bump, 1.0, 1.0, 1.0, 1.0]
    finding = fires(rules.lr_too_high, evidence({"train/loss": loss}))
    assert (finding is not None) is high
    if finding:
        assert "oscillates" in finding.title
        assert "scheduler=plateau" in finding.fix


def test_lr_too_high_is_critical_when_the_loss_is_unstable_and_updates_are_large() -> None:
    loss = [2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.3, 1.0, 1.0, 1.0, 1.0]
    finding = fires(rules.lr_too_high, _ratios(0.2, loss))
    assert finding.severity is Severity.CRITICAL


def test_lr_too_high_missing_signal() -> None:
    assert missing(rules.lr_too_high, evidence()) == "update_ratio/<group>"


# --- no_weight_updates ------------------------------------------------------------------------


@pytest.mark.parametrize(("fraction", "stuck"), [(0.985, False), (0.995, True)])
def test_no_weight_updates_frozen_fraction(fraction: float, stuck: bool) -> None:
    summary = {f"frozen_fraction/{g}": 0.0 for g in GROUPS} | {"frozen_fraction/head": fraction}
    finding = fires(rules.no_weight_updates, evidence(summary=summary))
    assert (finding is not None) is stuck
    if finding:
        assert finding.title.endswith("head")
        assert finding.severity is Severity.CRITICAL  # the head never learns


@pytest.mark.parametrize(("ratio", "stuck"), [(1.1e-8, False), (0.9e-8, True)])
def test_no_weight_updates_zero_update_ratios(ratio: float, stuck: bool) -> None:
    finding = fires(rules.no_weight_updates, _ratios(ratio, None))
    assert (finding is not None) is stuck
    if finding:
        assert finding.score == 1.0 and finding.severity is Severity.CRITICAL


def test_no_weight_updates_partial_freeze_is_a_warning() -> None:
    summary = {f"frozen_fraction/{g}": 0.0 for g in GROUPS} | {"frozen_fraction/embedding": 1.0}
    finding = fires(rules.no_weight_updates, evidence(summary=summary))
    assert finding.severity is Severity.WARNING
    assert finding.score == pytest.approx(0.5 + 0.5 / len(GROUPS))


def test_no_weight_updates_missing_signal() -> None:
    assert missing(rules.no_weight_updates, evidence()) == "frozen_fraction/<group>"


# --- overfitting ------------------------------------------------------------------------------


def _fit(train_early: float, train_late: float, val: float, **epochs) -> RunEvidence:
    return evidence(
        {
            "train/accuracy": [train_early] * 5 + [train_late] * 5,
            "val/accuracy": [val] * 10,
            **epochs,
        }
    )


@pytest.mark.parametrize(("train_late", "over"), [(0.59, False), (0.61, True)])
def test_overfitting_gap(train_late: float, over: bool) -> None:
    finding = fires(rules.overfitting, _fit(0.5, train_late, 0.5))
    assert (finding is not None) is over
    if finding:
        for knob in ("noise_p", "stretch_p", "pitch_p", "specaug_p", "mixup_alpha", "dropout"):
            assert knob in finding.fix


@pytest.mark.parametrize(("train_late", "over"), [(0.74, False), (0.76, True)])
def test_overfitting_gap_growth(train_late: float, over: bool) -> None:
    assert (fires(rules.overfitting, _fit(0.7, train_late, 0.5)) is not None) is over


@pytest.mark.parametrize(("rise", "over"), [(1.24, False), (1.26, True)])
def test_overfitting_val_loss_rise(rise: float, over: bool) -> None:
    ev = _fit(0.8, 0.8, 0.5, **{"val/loss": [1.0] * 5 + [rise] * 5, "train/loss": falling()})
    assert (fires(rules.overfitting, ev) is not None) is over


def test_overfitting_lists_augmentations_that_are_off() -> None:
    ev = _fit(0.5, 0.9, 0.5)
    ev.params.update(
        {"augment.stretch_p": "0.0", "augment.pitch_p": "0.0", "augment.noise_p": "0.5"}
    )
    assert "(off now: stretch_p, pitch_p)" in fires(rules.overfitting, ev).fix


def test_overfitting_missing_signals() -> None:
    assert missing(rules.overfitting, evidence({"val/accuracy": [0.5] * 10})) == "train/accuracy"
    short = evidence({"train/accuracy": [0.5] * 4, "val/accuracy": [0.5] * 4})
    assert missing(rules.overfitting, short) == "train/accuracy"


# --- underfitting and label_noise -------------------------------------------------------------


def _learning(train: float, val: float, chance: float = 0.125, **steps) -> RunEvidence:
    return evidence(
        {
            "train/accuracy": [0.2, 0.3, 0.4] + [train] * 5,
            "val/accuracy": [0.2, 0.3, 0.4] + [val] * 5,
            "train/loss": falling(8),
        },
        steps={**healthy_steps(), **steps},
        summary={"labels/train/majority_fraction": chance},
    )


@pytest.mark.parametrize(("train", "under"), [(0.69, True), (0.71, False)])
def test_underfitting_accuracy(train: float, under: bool) -> None:
    finding = fires(rules.underfitting, _learning(train, train - 0.05))
    assert (finding is not None) is under
    if finding:
        assert finding.score <= 0.75
        for knob in ("-P layers=", "-P heads=", "-P dim="):
            assert knob in finding.fix


@pytest.mark.parametrize(("gap", "under"), [(0.09, True), (0.11, False)])
def test_underfitting_excludes_a_generalization_gap(gap: float, under: bool) -> None:
    assert (fires(rules.underfitting, _learning(0.6, 0.6 - gap)) is not None) is under


def test_underfitting_needs_healthy_optimization_and_gradient_signals() -> None:
    slow = {f"update_ratio/{g}": [1e-6] * N_STEPS for g in GROUPS}
    ev = _learning(0.5, 0.5, **slow)
    ev.epoch_metrics["train/loss"][:, 1] = 2.08  # flat: lr_too_low fires
    assert rules.lr_too_low(ev, T) is not None
    assert fires(rules.underfitting, ev) is None
    bare = _learning(0.5, 0.5)
    bare.step_metrics.clear()
    assert missing(rules.underfitting, bare) == "grad_norm/<group>"


@pytest.mark.parametrize(("margin", "noisy"), [(0.04, True), (0.06, False)])
def test_label_noise_chance_margin(margin: float, noisy: bool) -> None:
    ev = _learning(0.125 + margin, 0.125)
    ev.epoch_metrics["train/accuracy"][:, 1] = 0.125 + margin
    finding = fires(rules.label_noise, ev)
    assert (finding is not None) is noisy
    assert (fires(rules.underfitting, ev) is None) is noisy  # one or the other
    if finding:
        assert finding.score <= 0.75 and "label" in finding.fix


def test_label_noise_needs_healthy_optimization() -> None:
    ev = _learning(0.125, 0.125, **{"nonfinite/loss": [0.0, 4.0]})
    ev.epoch_metrics["train/accuracy"][:, 1] = 0.125
    assert fires(rules.label_noise, ev) is None


def test_label_noise_uses_class_counts_without_majority_fraction() -> None:
    ev = _learning(0.26, 0.25)
    ev.epoch_metrics["train/accuracy"][:, 1] = 0.26
    del ev.summary["labels/train/majority_fraction"]
    ev.summary.update({f"labels/train/count/{c}": 10.0 for c in "abcd"})
    assert fires(rules.label_noise, ev).evidence["chance_accuracy"] == 0.25
    ev.summary.clear()
    assert missing(rules.label_noise, ev) == "labels/train/majority_fraction"


# --- attention_collapse -----------------------------------------------------------------------


def _attention(*late: float) -> RunEvidence:
    return evidence(
        {f"attention_entropy/layer{i}": [0.98, 0.9] + [v] * 5 for i, v in enumerate(late)}
    )


@pytest.mark.parametrize(("low", "collapsed"), [(0.06, False), (0.04, True)])
def test_attention_collapse_low_entropy(low: float, collapsed: bool) -> None:
    finding = fires(rules.attention_collapse, _attention(0.8, low))
    assert (finding is not None) is collapsed
    if finding:
        assert finding.severity is Severity.WARNING and "layer(s) 1" in finding.title


@pytest.mark.parametrize(("mean", "uniform"), [(0.975, False), (0.985, True)])
def test_attention_collapse_uniform_attention(mean: float, uniform: bool) -> None:
    finding = fires(rules.attention_collapse, _attention(mean, mean))
    assert (finding is not None) is uniform
    if finding:
        assert finding.severity is Severity.INFO and "uniform" in finding.title


def test_attention_collapse_ranks_below_a_measured_optimization_problem() -> None:
    collapsed = {f"attention_entropy/layer{i}": [0.98, 0.9] + [0.0] * 5 for i in range(2)}
    alone = fires(rules.attention_collapse, evidence(collapsed, steps=healthy_steps()))
    steps = healthy_steps()
    for group in GROUPS:
        steps[f"update_ratio/{group}"] = [0.2] * N_STEPS  # far above update_ratio_high
    downstream = fires(rules.attention_collapse, evidence(collapsed, steps=steps))
    assert alone.score == 0.75 and "optimization_findings" not in alone.evidence
    assert downstream.score == 0.5
    assert downstream.evidence["optimization_findings"] == codes.LR_TOO_HIGH


def test_attention_collapse_missing_signal() -> None:
    assert missing(rules.attention_collapse, evidence()) == "attention_entropy/layer<i>"
    short = evidence({"attention_entropy/layer0": [0.5, 0.5]})
    assert missing(rules.attention_collapse, short) == "attention_entropy/layer0"


# --- the field note's causes and fixes --------------------------------------------------------


def test_fixes_cover_every_cause_and_remedy_of_the_field_note() -> None:
    """Imbalance, augmentation, normalization, vanishing/exploding gradients, architecture
    and learning rate: each named cause has a finding whose fix names the project's knob."""
    fixes = {
        codes.CLASS_IMBALANCE: fires(
            rules.class_imbalance, evidence(summary={"labels/train/imbalance_ratio": 10.0})
        ),
        codes.OVERFITTING: fires(rules.overfitting, _fit(0.5, 0.9, 0.5)),
        codes.UNNORMALIZED_FEATURES: fires(
            rules.unnormalized_features,
            evidence(summary={**_NORMAL, "features/normalized/train/std": 9.0}),
        ),
        codes.NORMALIZATION_MISMATCH: fires(
            rules.normalization_mismatch,
            evidence(summary={"feature_shift/raw/val_vs_train_smd_max": 3.0}),
        ),
        codes.VANISHING_GRADIENTS: fires(
            rules.vanishing_gradients, evidence(steps=_grads({"embedding": 1e-9, "head": 1.0}))
        ),
        codes.EXPLODING_GRADIENTS: fires(rules.exploding_gradients, _total([1e4] * 12)),
        codes.UNDERFITTING: fires(rules.underfitting, _learning(0.5, 0.45)),
        codes.LR_TOO_LOW: fires(rules.lr_too_low, _ratios(1e-6, FLAT_LOSS)),
        codes.LR_TOO_HIGH: fires(rules.lr_too_high, _ratios(0.5, falling())),
    }
    text = {code: finding.fix for code, finding in fixes.items()}
    expected = {
        codes.CLASS_IMBALANCE: ["class_balance=weighted_loss", "class_balance=balanced_sampler"],
        codes.OVERFITTING: ["noise", "time-stretch", "pitch-shift", "SpecAugment", "mixup"],
        codes.UNNORMALIZED_FEATURES: ["normalization=per_bin", "training split only"],
        codes.NORMALIZATION_MISMATCH: ["statistics fitted on the training split"],
        codes.VANISHING_GRADIENTS: ["-P layers", "warmup_cosine"],
        codes.EXPLODING_GRADIENTS: ["grad_clip=1.0", "lower the learning rate"],
        codes.UNDERFITTING: ["-P layers=", "-P heads=", "-P dim="],
        codes.LR_TOO_LOW: ["Raise the learning rate", "scheduler=plateau"],
        codes.LR_TOO_HIGH: ["Lower the learning rate", "scheduler=plateau", "grad_clip"],
    }
    for code, phrases in expected.items():
        for phrase in phrases:
            assert phrase in text[code], (code, phrase)
