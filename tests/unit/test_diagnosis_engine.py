"""Verdicts, primary-cause ranking, skipped checks, JSON round trip, thresholds and evidence
accessors of the diagnosis engine, on synthetic runs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mlflow_audiodiag.diagnosis import findings as codes
from mlflow_audiodiag.diagnosis.engine import CAUSE_PRECEDENCE, _rank_key, diagnose
from mlflow_audiodiag.diagnosis.evidence import RunEvidence
from mlflow_audiodiag.diagnosis.findings import Diagnosis, Finding, Severity
from mlflow_audiodiag.diagnosis.thresholds import DEFAULT_THRESHOLDS, Thresholds

GROUPS = ("embedding", "encoder.0", "encoder.1", "head")
EPOCHS = 20
STEPS = 200


def healthy(
    val: list[float] | None = None,
    train: list[float] | None = None,
    epochs: dict[str, list[float]] | None = None,
    steps: dict[str, list[float]] | None = None,
    summary: dict[str, float] | None = None,
) -> RunEvidence:
    """A healthy 20-epoch run (val accuracy rises to 0.99 and levels off) with the given
    signals replaced; other epoch series get as many epochs as ``val``."""
    if val is None:
        val = list(np.linspace(0.3, 0.99, EPOCHS - 5)) + [0.99, 0.995, 0.99, 0.99, 0.995]
    n = len(val)
    base_epochs = {
        "val/accuracy": val,
        "train/accuracy": train if train is not None else [min(1.0, v + 0.01) for v in val],
        "train/loss": list(np.linspace(2.0, 0.1, n)),
        "val/loss": list(np.linspace(2.0, 0.15, n)),
        "val_pred/top_class_fraction": [0.15] * n,
        **{f"attention_entropy/layer{i}": [0.97] + [0.8] * (n - 1) for i in range(2)},
    }
    base_steps: dict[str, list[float]] = {
        "grad_norm/total": [2.0] * STEPS,
        "lr/0": [1e-3] * STEPS,
        "train/step_loss": list(np.linspace(2.0, 0.1, STEPS)),
        "nonfinite/loss": [0.0] * 4,
        "nonfinite/grads": [0.0] * 4,
    }
    for group in GROUPS:
        base_steps[f"grad_norm/{group}"] = [1.0] * STEPS
        base_steps[f"update_ratio/{group}"] = [2e-3] * STEPS
    base_summary = {
        "data/val_majority_accuracy": 0.125,
        "labels/train/imbalance_ratio": 1.0,
        "labels/train/majority_fraction": 0.125,
        "features/normalized/train/mean": 0.0,
        "features/normalized/train/std": 1.0,
        "features/normalized/train/dynamic_range": 11.0,
        "features/raw/train/dynamic_range": 100.0,
        "feature_shift/normalized/val_vs_train_smd_max": 0.1,
        "feature_shift/normalized/val_vs_train_smd_mean": 0.05,
        **{f"frozen_fraction/{g}": 0.0 for g in GROUPS},
    }
    return RunEvidence.from_values(
        epochs={**base_epochs, **(epochs or {})},
        steps={**base_steps, **(steps or {})},
        summary={**base_summary, **(summary or {})},
        params={"optim.lr": "0.001", "loop.class_balance": "none"},
    )


FLAT = [0.2, 0.22] + [0.25] * (EPOCHS - 2)


# --- verdicts ---------------------------------------------------------------------------------


def test_a_converged_healthy_run_is_healthy_without_any_finding() -> None:
    result = diagnose(healthy())
    assert result.verdict == "healthy"
    assert result.primary_cause is None
    assert result.findings == []
    assert result.skipped_checks == {}


def test_a_healthy_run_that_is_still_improving_gets_no_stagnation_finding() -> None:
    val = list(np.linspace(0.2, 0.8, EPOCHS))
    result = diagnose(healthy(val))
    assert result.verdict == "healthy"
    assert result.finding(codes.STAGNANT_VALIDATION) is None


def test_a_run_with_too_low_a_learning_rate_is_stagnant_with_that_primary_cause() -> None:
    ev = healthy(
        [0.125] * EPOCHS,
        train=[0.12, 0.13] * (EPOCHS // 2),
        epochs={"train/loss": [2.08, 2.07] * (EPOCHS // 2), "val/loss": [2.08] * EPOCHS},
        steps={f"update_ratio/{g}": [1e-6] * STEPS for g in GROUPS},
    )
    result = diagnose(ev)
    assert result.verdict == "stagnant"
    assert result.primary_cause == codes.LR_TOO_LOW
    assert result.findings[0].code == codes.LR_TOO_LOW
    assert result.findings[-1].code == codes.STAGNANT_VALIDATION
    assert result.finding(codes.LABEL_NOISE) is None  # the LR explains it; not the labels


def test_majority_collapse_alone_makes_a_run_stagnant() -> None:
    val = list(np.linspace(0.3, 0.6, EPOCHS))  # not flat
    result = diagnose(healthy(val, epochs={"val_pred/top_class_fraction": [0.95] * EPOCHS}))
    assert result.finding(codes.STAGNANT_VALIDATION) is None
    assert result.verdict == "stagnant"
    assert result.primary_cause == codes.MAJORITY_CLASS_COLLAPSE


def _collapsed_on_imbalance(**summary: float) -> RunEvidence:
    return healthy(
        [0.8] * EPOCHS,
        train=[0.8] * EPOCHS,
        epochs={"val_pred/top_class_fraction": [1.0] * EPOCHS},
        summary={
            "labels/train/imbalance_ratio": 30.0,
            "labels/train/majority_fraction": 0.8,
            "data/val_majority_accuracy": 0.8,
            **summary,
        },
    )


def test_tied_causes_follow_the_documented_precedence() -> None:
    result = diagnose(_collapsed_on_imbalance())
    scores = {f.code: f.score for f in result.findings}
    assert scores[codes.CLASS_IMBALANCE] == scores[codes.MAJORITY_CLASS_COLLAPSE] == 1.0
    assert result.verdict == "stagnant"
    # A model that has collapsed is named for the collapse; the imbalance behind it follows.
    assert result.primary_cause == codes.MAJORITY_CLASS_COLLAPSE
    ranked = [f.code for f in result.findings]
    assert ranked.index(codes.MAJORITY_CLASS_COLLAPSE) < ranked.index(codes.CLASS_IMBALANCE)
    assert scores[codes.LABEL_NOISE] < 1.0  # inferred causes rank below measured ones

    unscaled = diagnose(_collapsed_on_imbalance(**{"features/normalized/train/std": 30.0}))
    assert unscaled.finding(codes.UNNORMALIZED_FEATURES).score == 1.0
    assert unscaled.primary_cause == codes.UNNORMALIZED_FEATURES


def test_a_critical_cause_outranks_a_better_scored_warning() -> None:
    critical = Finding("label_noise", Severity.CRITICAL, "t", {}, {}, "f", score=0.6)
    warning = Finding("attention_collapse", Severity.WARNING, "t", {}, {}, "f", score=0.75)
    assert sorted([warning, critical], key=_rank_key) == [critical, warning]


def test_a_higher_score_beats_precedence() -> None:
    ev = healthy(
        [0.5] * EPOCHS,
        train=[0.5] * 5 + [1.0] * (EPOCHS - 5),
        epochs={f"attention_entropy/layer{i}": [0.99] * EPOCHS for i in range(2)},
        summary={"frozen_fraction/embedding": 1.0},
    )
    result = diagnose(ev)
    scores = {f.code: f.score for f in result.findings}
    assert scores[codes.OVERFITTING] == 1.0
    assert scores[codes.NO_WEIGHT_UPDATES] < 1.0  # one group of four frozen
    assert codes.ATTENTION_COLLAPSE in scores
    assert result.primary_cause == codes.OVERFITTING
    ranked = [f.code for f in result.findings]
    assert ranked.index(codes.NO_WEIGHT_UPDATES) < ranked.index(codes.ATTENTION_COLLAPSE)


def test_a_stagnant_run_without_a_cause_has_no_primary_cause() -> None:
    result = diagnose(healthy(FLAT, train=FLAT))
    assert result.verdict == "stagnant"
    assert result.primary_cause == codes.UNDERFITTING  # low train and val, healthy optimization
    no_cause = diagnose(healthy(FLAT, train=FLAT), Thresholds(underfit_accuracy=0.1))
    assert no_cause.verdict == "stagnant"
    assert no_cause.primary_cause is None
    assert [f.code for f in no_cause.findings] == [codes.STAGNANT_VALIDATION]


def test_non_finite_values_mean_diverged() -> None:
    result = diagnose(healthy(steps={"nonfinite/loss": [0.0, 0.0, 3.0, 9.0]}))
    assert result.verdict == "diverged"
    assert result.primary_cause == codes.NON_FINITE


def test_exploding_gradients_mean_diverged_only_with_a_loss_blowup() -> None:
    exploding = {"grad_norm/total": [2.0] * 150 + [5e3] * 50}
    calm_loss = diagnose(healthy(steps=exploding))
    assert calm_loss.finding(codes.EXPLODING_GRADIENTS) is not None
    assert calm_loss.verdict == "healthy"
    rising = list(np.linspace(2.0, 1.0, EPOCHS - 3)) + [3.0, 5.0, 9.0]
    blown = diagnose(healthy(steps=exploding, epochs={"train/loss": rising}))
    assert blown.verdict == "diverged"
    assert blown.primary_cause == codes.EXPLODING_GRADIENTS


def test_missing_key_signals_or_too_few_epochs_are_inconclusive() -> None:
    ev = healthy()
    del ev.epoch_metrics["val/accuracy"]
    result = diagnose(ev)
    assert result.verdict == "inconclusive"
    assert result.skipped_checks[codes.STAGNANT_VALIDATION] == "val/accuracy: not logged"

    short = diagnose(healthy([0.1, 0.2, 0.3]))
    assert short.verdict == "inconclusive"
    assert "3 epochs, needs 5" in short.skipped_checks[codes.STAGNANT_VALIDATION]


def test_an_improving_run_with_a_critical_finding_is_inconclusive_with_its_cause() -> None:
    result = diagnose(healthy(summary={"features/normalized/train/mean": -40.0}))
    assert result.verdict == "inconclusive"
    assert result.primary_cause == codes.UNNORMALIZED_FEATURES


def test_a_warning_cause_blocks_healthy_only_until_the_run_converges() -> None:
    imbalanced = {"labels/train/imbalance_ratio": 20.0}
    rising = list(np.linspace(0.3, 0.8, EPOCHS))  # still improving, not converged
    early = diagnose(healthy(val=rising, summary=imbalanced))
    assert early.finding(codes.CLASS_IMBALANCE).severity is Severity.WARNING
    assert (early.verdict, early.primary_cause) == ("inconclusive", codes.CLASS_IMBALANCE)
    converged = diagnose(healthy(summary=imbalanced))
    assert (converged.verdict, converged.primary_cause) == ("healthy", None)
    assert converged.finding(codes.CLASS_IMBALANCE) is not None


def test_every_check_without_its_signal_is_listed_as_skipped() -> None:
    empty = diagnose(RunEvidence())
    assert empty.verdict == "inconclusive"
    assert set(empty.skipped_checks) == set(codes.FINDING_CODES)
    assert empty.findings == []

    only_accuracy = RunEvidence.from_values({"val/accuracy": list(np.linspace(0.2, 0.8, 8))})
    result = diagnose(only_accuracy)
    assert result.verdict == "healthy"
    assert result.skipped_checks[codes.LR_TOO_LOW] == "update_ratio/<group>: not logged"
    assert result.skipped_checks[codes.VANISHING_GRADIENTS] == "grad_norm/<group>: not logged"
    assert codes.STAGNANT_VALIDATION not in result.skipped_checks


def test_thresholds_change_the_outcome() -> None:
    plateau = [0.3, 0.6] + [0.95] * (EPOCHS - 2)
    assert diagnose(healthy(plateau)).verdict == "healthy"
    strict = Thresholds(converged_accuracy=0.97)
    assert diagnose(healthy(plateau), strict).verdict == "stagnant"


def test_cause_precedence_is_the_documented_order_and_covers_every_cause() -> None:
    assert CAUSE_PRECEDENCE == (
        "non_finite",
        "no_weight_updates",
        "exploding_gradients",
        "vanishing_gradients",
        "lr_too_high",
        "lr_too_low",
        "unnormalized_features",
        "normalization_mismatch",
        "majority_class_collapse",
        "class_imbalance",
        "label_noise",
        "overfitting",
        "underfitting",
        "attention_collapse",
    )
    assert set(CAUSE_PRECEDENCE) | codes.SYMPTOM_CODES == set(codes.FINDING_CODES)


# --- JSON round trip --------------------------------------------------------------------------


def test_diagnosis_round_trips_through_strict_json() -> None:
    original = diagnose(_collapsed_on_imbalance(**{"features/normalized/train/std": 30.0}))
    original.findings.append(
        Finding(
            code=codes.EXPLODING_GRADIENTS,
            severity="warning",
            title="t",
            evidence={"spike": math.inf, "missing": math.nan, "count": np.int64(3)},
            thresholds={"spike_ratio": 100},
            fix="f",
            score=0.5,
        )
    )
    text = json.dumps(original.to_dict(), allow_nan=False)
    restored = Diagnosis.from_dict(json.loads(text))
    assert restored == original
    assert restored.findings[-1].evidence == {"spike": "inf", "missing": "nan", "count": 3.0}
    assert restored.findings[-1].severity is Severity.WARNING


def test_findings_and_diagnoses_reject_invalid_values() -> None:
    with pytest.raises(ValueError, match="unknown finding code"):
        Finding("nope", Severity.INFO, "t", {}, {}, "f", 0.5)
    with pytest.raises(ValueError, match="score"):
        Finding(codes.NON_FINITE, Severity.INFO, "t", {}, {}, "f", 1.5)
    with pytest.raises(ValueError, match="verdict"):
        Diagnosis("fine", None)


# --- thresholds -------------------------------------------------------------------------------


def test_thresholds_round_trip_and_accept_json_and_command_line_values() -> None:
    assert Thresholds.from_dict(DEFAULT_THRESHOLDS.to_dict()) == DEFAULT_THRESHOLDS
    custom = Thresholds.from_dict(json.loads('{"min_epochs": 8.0, "flat_range": "0.02"}'))
    assert custom.min_epochs == 8 and isinstance(custom.min_epochs, int)
    assert custom.flat_range == 0.02
    assert custom.window_epochs == DEFAULT_THRESHOLDS.window_epochs


def test_thresholds_reject_unknown_names_and_bad_values() -> None:
    with pytest.raises(ValueError, match="unknown threshold.*flat_rnage, zzz"):
        Thresholds.from_dict({"flat_rnage": 0.1, "zzz": 1})
    with pytest.raises(ValueError, match="min_epochs must be an integer"):
        Thresholds.from_dict({"min_epochs": 2.5})
    with pytest.raises(ValueError, match="must be a number"):
        Thresholds.from_dict({"flat_range": "wide"})
    with pytest.raises(ValueError, match="finite and >= 0"):
        Thresholds(spike_ratio=-1.0)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        Thresholds(collapse_top_fraction=1.5)


# --- evidence accessors -----------------------------------------------------------------------


def test_evidence_accessors() -> None:
    ev = RunEvidence.from_values(
        epochs={"val/accuracy": [0.1, 0.2, 0.3]},
        steps={f"grad_norm/{g}": [1.0] for g in ("head", "encoder.10", "encoder.2", "total")}
        | {"grad_norm/other": [1.0], "grad_norm/adapter": [1.0], "grad_norm/embedding": [1.0]},
        summary={"labels/train/imbalance_ratio": 2.0},
    )
    assert ev.series("val/accuracy").tolist() == [[1, 0.1], [2, 0.2], [3, 0.3]]
    assert ev.values("grad_norm/head").tolist() == [1.0]
    assert ev.latest("val/accuracy") == 0.3
    assert ev.latest("labels/train/imbalance_ratio") == 2.0
    assert ev.series("absent") is None and ev.latest("absent") is None
    assert ev.groups("grad_norm/") == [
        "embedding",
        "encoder.2",
        "encoder.10",
        "head",
        "adapter",
        "other",
    ]
    assert ev.n_epochs == 3
