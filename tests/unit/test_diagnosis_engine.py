"""The engine: verdicts judged against the run's own baseline and curve, deference, ranking,
and rules of the user's own."""

from __future__ import annotations

import numpy as np
from test_diagnosis_rules import (
    CASES,
    EPOCHS,
    FLAT,
    GROUPS,
    STEPS,
    STUCK,
    K,
    epochs,
    evidence,
    steps,
    summary,
)

from mlflow_audiodiag import signals
from mlflow_audiodiag.diagnosis import rules
from mlflow_audiodiag.diagnosis.engine import diagnose
from mlflow_audiodiag.diagnosis.evidence import RunEvidence
from mlflow_audiodiag.diagnosis.findings import Finding, Severity


def _causes(result) -> list[str]:
    return [f.code for f in result.findings if f.severity is not Severity.INFO]


def test_a_healthy_run_that_converges_below_point_nine_is_healthy() -> None:
    result = diagnose(evidence())
    assert (result.verdict, result.primary_cause) == ("healthy", None)
    assert _causes(result) == []
    assert result.skipped_checks == {}
    symptom = result.finding(rules.STAGNANT_VALIDATION)
    assert symptom is None or symptom.severity is Severity.INFO  # converged, or still improving


def test_a_noisy_but_learning_val_curve_is_healthy() -> None:
    rng = np.random.default_rng(1)
    val = list(np.clip(np.linspace(0.3, 0.7, EPOCHS) + 0.06 * rng.standard_normal(EPOCHS), 0, 1))
    ev = evidence(epochs(**{"val/accuracy": val}), summary_values=None)
    ev.summary["labels/val/n"] = 40.0  # a small val set: accuracy jitters by sampling alone
    assert diagnose(ev).verdict == "healthy"


def test_a_plateau_explained_by_an_annealed_learning_rate_is_healthy() -> None:
    lr = list(np.r_[np.full(STEPS // 2, 1e-3), np.geomspace(1e-3, 1e-6, STEPS // 2)])
    ratios = {f"update_ratio/{g}": list(np.array(lr) * 2) for g in GROUPS}
    result = diagnose(evidence(step_values=steps(**{"lr/0": lr}, **ratios)))
    assert result.verdict == "healthy"
    assert result.finding(rules.LR_TOO_LOW) is None


def test_too_low_a_learning_rate_is_stagnant_with_that_cause_and_nothing_inferred() -> None:
    result = diagnose(CASES[rules.LR_TOO_LOW])
    assert (result.verdict, result.primary_cause) == ("stagnant", rules.LR_TOO_LOW)
    assert result.finding(rules.UNDERFITTING) is None  # deferred to the measured cause
    assert result.finding(rules.LABEL_NOISE) is None
    assert result.findings[-1].code == rules.STAGNANT_VALIDATION


def test_validation_still_improving_below_its_baseline_is_inconclusive_not_stagnant() -> None:
    ev = evidence(epochs(**{"val/accuracy": FLAT, "val/loss": list(np.linspace(1.39, 1.3, 12))}))
    result = diagnose(ev)
    assert result.verdict == "inconclusive"  # not above its baseline yet, but not stuck
    assert result.finding(rules.STAGNANT_VALIDATION) is None


def test_a_collapse_for_most_of_the_run_is_stagnant_even_if_the_last_epochs_wobble() -> None:
    top = [0.97] * 9 + [0.7, 0.8, 0.75]
    ev = evidence(epochs(**STUCK, **{"val_pred/top_class_fraction": top}))
    result = diagnose(ev)
    assert (result.verdict, result.primary_cause) == ("stagnant", rules.MAJORITY_CLASS_COLLAPSE)


def test_memorised_noise_is_label_noise_and_never_leaving_chance_is_underfitting() -> None:
    noise = diagnose(CASES[rules.LABEL_NOISE])
    assert (noise.verdict, noise.primary_cause) == ("stagnant", rules.LABEL_NOISE)
    assert noise.finding(rules.OVERFITTING) is None
    stuck = diagnose(CASES[rules.UNDERFITTING])
    assert (stuck.verdict, stuck.primary_cause) == ("stagnant", rules.UNDERFITTING)


def test_a_negative_loss_is_invalid_targets_not_a_call_for_mixup() -> None:
    result = diagnose(CASES[rules.INVALID_TARGETS])
    assert result.primary_cause == rules.INVALID_TARGETS
    assert "mixup" in result.finding(rules.INVALID_TARGETS).fix  # checked, not recommended
    assert result.finding(rules.OVERFITTING) is None


def test_non_finite_values_mean_diverged() -> None:
    result = diagnose(CASES[rules.NON_FINITE])
    assert (result.verdict, result.primary_cause) == ("diverged", rules.NON_FINITE)


def test_growing_gradient_norms_count_as_exploding_even_with_bounded_updates() -> None:
    grown = steps(**{"grad_norm/total": list(np.geomspace(1.0, 500.0, STEPS))})
    result = diagnose(evidence(epochs(**STUCK), grown))
    assert result.primary_cause == rules.EXPLODING_GRADIENTS


def test_large_first_updates_then_growing_gradients_are_exploding_not_lr() -> None:
    """SGD at a large LR: the first updates are big, then the norms feed on themselves."""
    grown = steps(
        **{"grad_norm/total": list(np.geomspace(2.0, 2e5, STEPS))},
        **{f"update_ratio/{g}": [0.2] * STEPS for g in GROUPS},
    )
    result = diagnose(evidence(epochs(**STUCK), grown))
    assert result.primary_cause == rules.EXPLODING_GRADIENTS
    assert result.finding(rules.LR_TOO_HIGH).severity is not Severity.CRITICAL


def test_gradients_that_grow_while_the_loss_keeps_falling_are_no_alarm() -> None:
    """A recurrent net that starts to fit: norms grow ~12x, the loss halves, val learns."""
    grown = steps(**{"grad_norm/total": list(np.r_[np.full(STEPS // 3, 0.3),
                                                   np.full(STEPS - STEPS // 3, 3.6)])})  # fmt: skip
    result = diagnose(evidence(epochs(), grown))
    exploding = result.finding(rules.EXPLODING_GRADIENTS)
    assert exploding is not None and exploding.severity is Severity.INFO
    assert result.verdict == "healthy" and result.primary_cause is None


def test_an_early_blow_up_that_leaves_dead_units_is_lr_too_high_not_vanishing() -> None:
    early = STEPS // 20
    loss = list(np.r_[np.full(3, 1.4), np.full(early, 8.0), np.full(STEPS - early - 3, 1.39)])
    dead = list(np.r_[np.full(early, 50.0), np.full(STEPS - early, 1e-9)])
    blown = steps(
        **{"train/step_loss": loss, "grad_norm/total": dead},
        **{f"grad_norm/{g}": dead for g in GROUPS},
        **{f"update_ratio/{g}": list(np.r_[np.full(early, 0.5), np.full(STEPS - early, 0.0)])
           for g in GROUPS},
    )  # fmt: skip
    result = diagnose(evidence(epochs(**STUCK, **{"train/accuracy": FLAT}), blown))
    assert result.primary_cause == rules.LR_TOO_HIGH
    assert result.finding(rules.VANISHING_GRADIENTS) is None
    assert result.finding(rules.NO_WEIGHT_UPDATES) is None


def test_a_downstream_finding_is_capped_when_the_cause_it_defers_to_fires() -> None:
    ev = CASES[rules.LR_TOO_HIGH]
    ev.epochs.add(
        signals.ATTENTION_ENTROPY.key(layer=0),
        np.array([(e, 0.01) for e in range(1, EPOCHS + 1)], dtype=float),
    )
    result = diagnose(ev)
    attention = result.finding(rules.ATTENTION_COLLAPSE)
    assert attention.severity is Severity.INFO and attention.score <= 0.5
    assert "lr_too_high" in attention.evidence["explained_by"]
    assert result.primary_cause == rules.LR_TOO_HIGH


def test_every_check_without_its_signal_is_listed_as_skipped() -> None:
    empty = diagnose(RunEvidence())
    assert empty.verdict == "inconclusive"
    assert set(empty.skipped_checks) | set(empty.not_applicable) == set(rules.FINDING_CODES)


def test_rules_of_the_users_own_run_beside_the_built_in_ones() -> None:
    def silence(ev: RunEvidence, t, ctx) -> Finding | None:
        """Validation clips are silent."""
        return Finding("silent_clips", Severity.CRITICAL, "Silent clips", {}, {}, "Fix it.", 0.9)

    custom = rules.Rule(
        code="silent_clips",
        family="data",
        title="Silent clips",
        check=silence,
        precedence=9,
        thresholds=(),
        signals=(signals.AUDIO_STAT,),
    )
    result = diagnose(CASES[rules.STAGNANT_VALIDATION], rules=[*rules.RULES, custom])
    assert result.primary_cause == "silent_clips"
    assert "silent_clips" not in rules.REGISTRY  # the built-in registry is untouched


def test_a_critical_cause_outranks_a_better_scored_warning() -> None:
    result = diagnose(CASES[rules.MAJORITY_CLASS_COLLAPSE])
    severities = [f.severity for f in result.findings if f.code != rules.STAGNANT_VALIDATION]
    assert severities == sorted(severities, key=lambda s: -s.rank)


def test_nan_after_growing_gradients_is_named_exploding_gradients() -> None:
    onset = STEPS - 20
    grown = steps(
        **{
            "grad_norm/total": list(np.r_[np.geomspace(1.0, 1e4, onset), np.full(20, np.nan)]),
            "nonfinite/loss": [0.0] * onset + [1.0] * 20,
        }
    )
    result = diagnose(evidence(epochs(**STUCK), grown))
    assert result.verdict == "diverged"
    assert result.primary_cause == rules.EXPLODING_GRADIENTS
    assert result.finding(rules.NON_FINITE).evidence["explained_by"] == "exploding_gradients"


def test_a_collapse_caused_by_broken_inputs_is_named_for_the_inputs() -> None:
    ev = CASES[rules.NORMALIZATION_MISMATCH]
    ev.epochs.add(
        signals.TOP_CLASS_FRACTION.name,
        np.array([(e, 0.99) for e in range(1, EPOCHS + 1)], dtype=float),
    )
    result = diagnose(ev)
    assert result.primary_cause == rules.NORMALIZATION_MISMATCH
    assert result.finding(rules.MAJORITY_CLASS_COLLAPSE).severity is Severity.INFO


def test_a_model_too_small_to_fit_is_underfitting_and_one_at_its_limit_is_healthy() -> None:
    val = list(np.minimum(0.15 + 0.04 * np.arange(EPOCHS), 0.37))
    too_small = epochs(
        **{
            "val/accuracy": val,
            "train/accuracy": [v + 0.01 for v in val],
            "train/loss": list(np.linspace(2.08, 1.36, EPOCHS)),  # creeps down, far from fit
            "val/loss": list(np.linspace(2.05, 1.35, EPOCHS)),
        }
    )
    result = diagnose(evidence(too_small))
    assert result.primary_cause == rules.UNDERFITTING
    assert result.verdict != "healthy"
    at_limit = epochs(
        **{
            "val/accuracy": [0.3, 0.45, *[0.5] * (EPOCHS - 2)],
            "train/accuracy": [0.28, 0.47, *[0.51] * (EPOCHS - 2)],
            "train/loss": [1.8, 1.0, *[0.72] * (EPOCHS - 2)],  # settled: the inputs' limit
            "val/loss": [1.3, 0.8, *[0.72] * (EPOCHS - 2)],
        }
    )
    assert diagnose(evidence(at_limit)).verdict == "healthy"


def test_a_level_plateau_far_from_a_fit_is_underfitting_only_for_a_small_model() -> None:
    """Train and val level off together, the training loss not even halved: with few
    parameters per training clip the model is too small; with many, the data is hard."""
    val = list(np.minimum(0.3 + 0.03 * np.arange(EPOCHS), 0.45))
    plateau = epochs(
        **{
            "val/accuracy": val,
            "train/accuracy": [v + 0.01 for v in val],
            "train/loss": [1.39, 1.2, 1.05, 0.95, *[0.9] * (EPOCHS - 4)],  # 65 % of its start
            "val/loss": [1.38, 1.2, 1.05, 0.95, *[0.92] * (EPOCHS - 4)],
        }
    )
    counted = {"model/trainable_parameters": 1_200.0}  # 3 per training clip
    small = diagnose(evidence(plateau, summary_values=summary(**counted)))
    assert (small.verdict, small.primary_cause) == ("stagnant", rules.UNDERFITTING)
    finding = small.finding(rules.UNDERFITTING)
    assert finding.evidence["parameters_per_training_clip"] == 3.0
    normal = summary(**{"model/trainable_parameters": 40_000.0})
    assert diagnose(evidence(plateau, summary_values=normal)).verdict == "healthy"
    assert diagnose(evidence(plateau)).verdict == "healthy"  # size not recorded: no claim


def test_a_small_model_held_below_its_val_accuracy_is_underfitting_but_one_above_it_is_not() -> (
    None
):
    """Dropout and augmentation keep a small model's train accuracy below its eval-mode val
    accuracy; a small model that fits its own clips clearly better than val's has a gap, not
    too little capacity."""
    val = list(np.minimum(0.3 + 0.03 * np.arange(EPOCHS), 0.45))
    loss = {
        "train/loss": [1.39, 1.2, 1.05, 0.95, *[0.9] * (EPOCHS - 4)],
        "val/loss": [1.38, 1.2, 1.05, 0.95, *[0.92] * (EPOCHS - 4)],
    }
    small = summary(**{"model/trainable_parameters": 1_200.0})
    below = epochs(**{"val/accuracy": val, "train/accuracy": [v - 0.1 for v in val], **loss})
    result = diagnose(evidence(below, summary_values=small))
    assert result.primary_cause == rules.UNDERFITTING
    above = epochs(**{"val/accuracy": val, "train/accuracy": [v + 0.1 for v in val], **loss})
    assert diagnose(evidence(above, summary_values=small)).finding(rules.UNDERFITTING) is None


def test_weights_decayed_to_zero_are_weight_decay_not_a_too_high_lr() -> None:
    """Weights near zero make every update large next to them; what sets them there is the
    decay, named as the only cause. The same huge updates with
    weights that grow, or with a loss the LR makes rise, are a learning rate too high; a decay
    the model fits through is fine."""
    stuck = epochs(**STUCK, **{"train/accuracy": FLAT, "train/loss": [1.386] * EPOCHS})
    huge = {f"update_ratio/{g}": [0.3] * STEPS for g in GROUPS}
    fading = {f"weight_norm/{g}": list(np.geomspace(10.0, 0.01, STEPS)) for g in GROUPS}
    decayed = diagnose(evidence(stuck, steps(**huge, **fading)))
    assert (decayed.verdict, decayed.primary_cause) == ("stagnant", rules.WEIGHT_DECAY_TOO_HIGH)
    assert _causes(decayed) == [rules.WEIGHT_DECAY_TOO_HIGH, rules.STAGNANT_VALIDATION]
    growing = {f"weight_norm/{g}": list(np.geomspace(10.0, 100.0, STEPS)) for g in GROUPS}
    too_high = diagnose(evidence(stuck, steps(**huge, **growing)))
    assert too_high.primary_cause == rules.LR_TOO_HIGH
    assert too_high.finding(rules.WEIGHT_DECAY_TOO_HIGH) is None
    val = list(np.minimum(0.3 + 0.1 * np.arange(EPOCHS), 0.93))
    fitted = epochs(**{"val/accuracy": val, "train/accuracy": [v + 0.03 for v in val]})
    rising = epochs(**STUCK, **{"train/accuracy": FLAT, "train/loss": [1.4] * 6 + [2.2] * 6})
    blown_up = diagnose(evidence(rising, steps(**huge, **fading)))
    assert blown_up.primary_cause == rules.LR_TOO_HIGH  # decay scales with the LR: fix it first
    assert blown_up.finding(rules.WEIGHT_DECAY_TOO_HIGH) is None
    fits = diagnose(evidence(fitted, steps(**fading)))
    assert fits.finding(rules.WEIGHT_DECAY_TOO_HIGH) is None and fits.verdict == "healthy"


IMBALANCED = summary(
    **{"labels/train/imbalance_ratio": 20.0, "labels/train/majority_fraction": 0.5}
)


def test_imbalance_that_makes_the_model_favour_large_classes_is_the_cause() -> None:
    """The run learns, but val accuracy runs 0.2 above balanced accuracy: small classes lost."""
    val = epochs()["val/accuracy"]
    favoured = epochs(**{"val/balanced_accuracy": [max(v - 0.2, 0.1) for v in val]})
    result = diagnose(evidence(favoured, summary_values=IMBALANCED))
    assert result.finding(rules.CLASS_IMBALANCE).severity is Severity.WARNING
    assert result.verdict != "healthy" and result.primary_cause == rules.CLASS_IMBALANCE


def test_imbalance_with_every_class_learned_is_a_note_on_a_healthy_run() -> None:
    learned_all = epochs(**{"val/balanced_accuracy": epochs()["val/accuracy"]})
    result = diagnose(evidence(learned_all, summary_values=IMBALANCED))
    assert result.finding(rules.CLASS_IMBALANCE).severity is Severity.INFO
    assert result.verdict == "healthy" and result.primary_cause is None


def test_train_fits_val_never_moves_with_shifted_val_features_is_the_shift() -> None:
    """What looks like memorised labels is the val features' shift when that shift shows."""
    shifted = summary(**{"feature_shift/input/val_vs_train_smd_max": 4.0})
    noisy_looking = epochs(
        **{
            "val/accuracy": FLAT,
            "train/accuracy": list(np.linspace(0.25, 0.9, EPOCHS)),
            "val/loss": list(np.linspace(1.39, 1.8, EPOCHS)),
        }
    )
    result = diagnose(evidence(noisy_looking, summary_values=shifted))
    assert result.primary_cause == rules.NORMALIZATION_MISMATCH
    assert result.finding(rules.LABEL_NOISE) is None


def test_a_blow_up_in_the_second_step_that_kills_the_network_is_lr_too_high() -> None:
    """The loss jumps 500x in step 2; the median of the first steps must not hide the death."""
    loss = list(np.r_[2.3, 1000.0, 200.0, np.full(STEPS - 3, 2.3)])
    grads = list(np.r_[0.4, 430.0, 150.0, np.full(STEPS - 3, 0.15)])
    blown = steps(
        **{"train/step_loss": loss, "grad_norm/total": grads},
        **{f"update_ratio/{g}": list(np.r_[np.full(3, 1.0), np.full(STEPS - 3, 0.01)])
           for g in GROUPS},
    )  # fmt: skip
    result = diagnose(evidence(epochs(**STUCK, **{"train/accuracy": FLAT}), blown))
    assert result.primary_cause == rules.LR_TOO_HIGH


def test_a_model_that_fits_its_training_data_far_above_val_is_overfitting() -> None:
    """Train accuracy 1.0, val still creeping up at 0.5 with its loss falling: memorised."""
    val = list(np.linspace(0.15, 0.5, EPOCHS))
    fitted = epochs(
        **{
            "val/accuracy": val,
            "train/accuracy": list(np.minimum(np.linspace(0.2, 1.3, EPOCHS), 1.0)),
            "val/loss": list(np.linspace(2.3, 1.5, EPOCHS)),
        }
    )
    result = diagnose(evidence(fitted))
    assert result.primary_cause == rules.OVERFITTING


def test_large_first_updates_are_the_cause_when_val_never_learns_and_early_layers_die() -> None:
    """A CNN at a far too high LR: the loss jumps in step 2 and falls back to chance, the
    input-end layers' gradients die while the head still gets some; the early loss phase is
    inflated by the jump, so the loss looks as if it fell."""
    early = STEPS // 10
    loss = list(
        np.r_[4.1, 20.9, 11.3, np.linspace(6.8, 1.4, early - 3), np.full(STEPS - early, 1.39)]
    )
    dying = list(np.r_[np.geomspace(5.0, 1e-2, early), np.zeros(STEPS - early)])
    ratios = list(np.geomspace(0.9, 1e-7, STEPS))
    head = list(np.r_[np.full(early, 7.0), np.full(STEPS - early, 0.2)])
    blown = steps(
        **{"train/step_loss": loss, "grad_norm/total": head, "grad_norm/head": head},
        **{f"grad_norm/{g}": dying for g in GROUPS[:-1]},
        **{f"update_ratio/{g}": ratios for g in GROUPS},
    )  # fmt: skip
    result = diagnose(evidence(epochs(**STUCK, **{"train/accuracy": FLAT}), blown))
    assert result.primary_cause == rules.LR_TOO_HIGH
    assert result.finding(rules.LR_TOO_HIGH).severity is not Severity.INFO
    assert result.finding(rules.VANISHING_GRADIENTS) is None


def test_epoch_loss_wobble_within_its_sampling_noise_is_not_a_too_high_lr() -> None:
    """A big model on 48 training clips (2 steps per epoch): it fits the training set while val
    loss climbs; the epoch losses wobble by what two noisy batches give, not by the LR."""
    n_epochs, per_epoch = 24, 2
    train_loss = [2.22, 1.73, 1.14, 0.80, 0.71, 0.82, 1.16, 0.71, 0.72, 0.72, 0.63, 0.55,
                  0.50, 0.54, 0.38, 0.36, 0.35, 0.37, 0.25, 0.56, 0.45, 0.47, 0.28,
                  0.36]  # fmt: skip
    rng = np.random.default_rng(3)
    spread = np.array([0.15, -0.15])
    step_loss = [v + d for v in train_loss for d in spread + 0.05 * rng.standard_normal(2)]
    n_steps = n_epochs * per_epoch
    ratios = list(np.geomspace(0.09, 0.02, n_steps))
    step_table = {
        "grad_norm/total": list(1.5 + 0.3 * rng.standard_normal(n_steps)),
        "lr/0": [3e-3] * n_steps,
        "train/step_loss": step_loss,
        "nonfinite/loss": [0.0] * n_steps,
        "nonfinite/grads": [0.0] * n_steps,
        **{f"grad_norm/{g}": list(0.5 + 0.1 * rng.standard_normal(n_steps)) for g in GROUPS},
        **{f"update_ratio/{g}": ratios for g in GROUPS},
    }
    train_acc = list(np.minimum(np.linspace(0.13, 0.9, n_epochs), 0.9))
    epoch_table = {
        "val/accuracy": [0.38, 0.5, 0.47, *([0.48] * (n_epochs - 3))],
        "train/accuracy": train_acc,
        "train/loss": train_loss,
        "val/loss": list(np.r_[1.86, 1.32, np.linspace(1.06, 3.24, n_epochs - 2)]),
        "val_pred/top_class_fraction": [0.2] * n_epochs,
        "train/last_step": list(np.arange(1, n_epochs + 1) * per_epoch),
    }
    counts = {f"labels/train/count/c{i}": 12.0 for i in range(K)}
    ev = evidence(epoch_table, step_table, summary(**{"labels/train/n": 48.0, **counts}))
    result = diagnose(ev)
    assert result.primary_cause == rules.OVERFITTING
    too_high = result.finding(rules.LR_TOO_HIGH)
    assert too_high is None or too_high.severity is Severity.INFO
