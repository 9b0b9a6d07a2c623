"""Every rule of the registry, tested by property across all of them (one matrix of cases),
plus the registry's own declarations: codes, thresholds, signals."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json

import numpy as np
import pytest

from mlflow_audiodiag import signals
from mlflow_audiodiag.diagnosis import rules
from mlflow_audiodiag.diagnosis.evidence import RunEvidence
from mlflow_audiodiag.diagnosis.findings import Severity
from mlflow_audiodiag.diagnosis.thresholds import DEFAULT_THRESHOLDS as T
from mlflow_audiodiag.diagnosis.thresholds import Thresholds

GROUPS = ("stem", "block.0", "block.1", "head")
EPOCHS, STEPS = 12, 240
K = 4  # classes


def steps(**overrides: list[float]) -> dict[str, list[float]]:
    """Per-step signals of a well-behaved optimization."""
    rng = np.random.default_rng(0)
    out: dict[str, list[float]] = {
        "grad_norm/total": list(2.0 + 0.2 * rng.standard_normal(STEPS)),
        "lr/0": [1e-3] * STEPS,
        "train/step_loss": list(np.linspace(1.4, 0.4, STEPS) + 0.05 * rng.standard_normal(STEPS)),
        "nonfinite/loss": [0.0] * STEPS,
        "nonfinite/grads": [0.0] * STEPS,
    }
    for group in GROUPS:
        out[f"grad_norm/{group}"] = list(1.0 + 0.1 * rng.standard_normal(STEPS))
        out[f"update_ratio/{group}"] = [2e-3] * STEPS
        out[f"weight_norm/{group}"] = list(np.linspace(10.0, 11.0, STEPS))
    out.update(overrides)
    return out


def summary(**overrides: float) -> dict[str, float]:
    out = {
        "labels/train/n": 400.0,
        "labels/val/n": 200.0,
        "labels/train/imbalance_ratio": 1.1,
        "labels/train/majority_fraction": 0.26,
        "labels/val/majority_fraction": 0.25,
        "data/val_majority_accuracy": 0.25,
        "features/input/train/mean": 0.0,
        "features/input/train/std": 1.0,
        "features/input/train/dynamic_range": 12.0,
        "feature_shift/input/val_vs_train_smd_max": 0.2,
        "feature_shift/input/val_vs_train_smd_mean": 0.05,
        **{f"frozen_fraction/{g}": 0.0 for g in GROUPS},
        **{f"labels/train/count/c{i}": 100.0 for i in range(K)},
    }
    out.update(overrides)
    return out


def epochs(**overrides: list[float]) -> dict[str, list[float]]:
    """A healthy run that learned and converged at 0.8 (below 0.9)."""
    val = list(np.minimum(0.25 + 0.1 * np.arange(EPOCHS), 0.8))
    out = {
        "val/accuracy": val,
        "train/accuracy": [min(v + 0.05, 0.95) for v in val],
        "train/loss": list(np.linspace(1.4, 0.4, EPOCHS)),
        "val/loss": list(np.maximum(np.linspace(1.4, 0.55, EPOCHS), 0.6)),
        "val_pred/top_class_fraction": [0.3] * EPOCHS,
        "train/last_step": list(np.arange(1, EPOCHS + 1) * STEPS / EPOCHS),
    }
    out.update(overrides)
    return out


def evidence(
    epoch_values: dict | None = None,
    step_values: dict | None = None,
    summary_values: dict | None = None,
    **kwargs,
) -> RunEvidence:
    return RunEvidence.from_values(
        epochs=epoch_values if epoch_values is not None else epochs(),
        steps=step_values if step_values is not None else steps(),
        summary=summary_values if summary_values is not None else summary(),
        group_order=GROUPS,
        **kwargs,
    )


FLAT = [0.25] * EPOCHS
STUCK = {"val/accuracy": FLAT, "val/loss": [1.39] * EPOCHS}  # validation never moves
DEAD = [0.0] * STEPS

# One firing case per rule: the run shows that rule's pattern (and, where it matters, the
# consequences it typically has on the other signals).
CASES: dict[str, RunEvidence] = {
    rules.NON_FINITE: evidence(step_values=steps(**{"nonfinite/loss": [0.0] * 200 + [1.0] * 40})),
    rules.INVALID_TARGETS: evidence(
        step_values=steps(**{"train/step_loss": list(np.linspace(1.0, -3.0, STEPS))})
    ),
    rules.NO_WEIGHT_UPDATES: evidence(
        epochs(**STUCK, **{"train/accuracy": FLAT}),
        steps(**{f"update_ratio/{g}": DEAD for g in GROUPS}),
    ),
    rules.EXPLODING_GRADIENTS: evidence(
        step_values=steps(**{"grad_norm/total": list(np.geomspace(1.0, 500.0, STEPS))})
    ),
    rules.VANISHING_GRADIENTS: evidence(
        epochs(**STUCK),
        steps(**{"grad_norm/stem": [1e-8] * STEPS, "grad_norm/block.0": [1e-6] * STEPS}),
    ),
    rules.LR_TOO_HIGH: evidence(
        epochs(**STUCK, **{"train/accuracy": FLAT}),
        steps(**{f"update_ratio/{g}": [0.3] * STEPS for g in GROUPS}),
    ),
    rules.LR_TOO_LOW: evidence(
        epochs(**STUCK, **{"train/accuracy": FLAT, "train/loss": [1.386] * EPOCHS}),
        steps(**{f"update_ratio/{g}": [1e-6] * STEPS for g in GROUPS}),
    ),
    rules.WEIGHT_DECAY_TOO_HIGH: evidence(
        epochs(**STUCK, **{"train/accuracy": FLAT, "train/loss": [1.386] * EPOCHS}),
        steps(
            **{f"weight_norm/{g}": list(np.geomspace(10.0, 0.01, STEPS)) for g in GROUPS},
            **{f"update_ratio/{g}": [0.3] * STEPS for g in GROUPS},
        ),
    ),
    rules.UNNORMALIZED_FEATURES: evidence(
        summary_values=summary(**{"features/input/train/mean": -40.0})
    ),
    rules.NORMALIZATION_MISMATCH: evidence(
        summary_values=summary(**{"feature_shift/input/val_vs_train_smd_max": 4.0})
    ),
    rules.MAJORITY_CLASS_COLLAPSE: evidence(
        epochs(**STUCK, **{"val_pred/top_class_fraction": [0.98] * EPOCHS})
    ),
    rules.CLASS_IMBALANCE: evidence(
        summary_values=summary(
            **{"labels/train/imbalance_ratio": 20.0, "labels/train/majority_fraction": 0.6}
        )
    ),
    rules.LABEL_NOISE: evidence(
        epochs(
            **{
                "val/accuracy": FLAT,
                "train/accuracy": list(np.linspace(0.25, 0.9, EPOCHS)),
                "val/loss": list(np.linspace(1.39, 1.8, EPOCHS)),
            }
        )
    ),
    rules.OVERFITTING: evidence(
        epochs(
            **{
                "val/accuracy": [0.3, 0.45, 0.55, 0.6, 0.6, 0.58, 0.55, 0.52, 0.5, 0.5, 0.49, 0.48],
                "train/accuracy": list(np.linspace(0.3, 1.0, EPOCHS)),
                "val/loss": list(np.r_[np.linspace(1.4, 1.0, 4), np.linspace(1.05, 2.0, 8)]),
            }
        )
    ),
    rules.UNDERFITTING: evidence(
        epochs(**STUCK, **{"train/accuracy": FLAT, "train/loss": [1.386] * EPOCHS})
    ),
    rules.ATTENTION_COLLAPSE: evidence(
        epochs(**{f"attention_entropy/layer{i}": [0.01] * EPOCHS for i in range(2)})
    ),
    rules.STAGNANT_VALIDATION: evidence(epochs(**STUCK)),
}
HEALTHY = evidence()


def test_every_rule_has_a_case_and_one_code() -> None:
    assert sorted(CASES) == sorted(rules.FINDING_CODES)
    assert len(set(rules.FINDING_CODES)) == len(rules.RULES)
    assert list(rules.RULES) == rules.ordered(list(rules.RULES))


@pytest.mark.parametrize("code", rules.FINDING_CODES)
def test_each_rule_fires_on_its_own_pattern(code: str) -> None:
    rule = rules.REGISTRY[code]
    finding = rule(CASES[code], T)
    assert finding is not None, code
    assert finding.code == code
    assert 0.5 <= finding.score <= 1.0
    assert finding.title and finding.fix
    assert "?" not in finding.fix and "-P " not in finding.fix  # a user loop's fix text
    json.dumps(finding.to_dict(), allow_nan=False)


@pytest.mark.parametrize("code", rules.FINDING_CODES)
def test_no_rule_fires_on_a_healthy_run_that_converges_below_point_nine(code: str) -> None:
    try:
        finding = rules.REGISTRY[code](HEALTHY, T)
    except rules.NotApplicable:
        return
    assert finding is None or finding.severity is Severity.INFO, (code, finding)


@pytest.mark.parametrize("code", rules.FINDING_CODES)
def test_each_rule_without_its_signals_is_skipped_not_guessed(code: str) -> None:
    with pytest.raises((rules.MissingSignal, rules.NotApplicable)):
        rules.REGISTRY[code](RunEvidence(), T)


@pytest.mark.parametrize("code", rules.FINDING_CODES)
def test_fix_texts_name_the_bundled_flags_for_bundled_runs_only(code: str) -> None:
    case = CASES[code]
    bundled = dataclasses.replace(case, tags={"audiodiag.front_end": "bundled"})
    for ev in (case, bundled):
        finding = rules.REGISTRY[code](ev, T)
        assert ("-P " in finding.fix) <= ev.bundled


def test_every_deference_names_a_registered_code_or_a_family() -> None:
    for rule in rules.RULES:
        for name in rule.defers_to:
            assert name in rules.REGISTRY or name in rules.FAMILIES, (rule.code, name)


def test_deferring_to_a_family_covers_rules_added_to_it_later() -> None:
    added = dataclasses.replace(rules.REGISTRY[rules.LR_TOO_LOW], code="my_optimizer_check")
    upstream = rules.REGISTRY[rules.UNDERFITTING].upstream([*rules.RULES, added])
    assert "my_optimizer_check" in upstream and rules.LR_TOO_HIGH in upstream
    assert rules.UNDERFITTING not in upstream and rules.OVERFITTING not in upstream


def test_every_threshold_is_declared_by_a_rule_and_every_declaration_exists() -> None:
    fields = {f.name for f in dataclasses.fields(Thresholds)}
    declared = {name for rule in rules.RULES for name in rule.thresholds}
    assert declared == fields


def test_rules_read_only_declared_signals(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every name any rule asks the evidence for is a signal of the contract."""
    asked: set[str] = set()
    for method in ("series", "values", "latest"):
        original = getattr(RunEvidence, method)

        def spy(self, name, _original=original):
            asked.add(name)
            return _original(self, name)

        monkeypatch.setattr(RunEvidence, method, spy)
    for case in [*CASES.values(), HEALTHY, RunEvidence()]:
        for rule in rules.RULES:
            with contextlib.suppress(rules.MissingSignal, rules.NotApplicable):
                rule(case, T)
    undeclared = sorted(name for name in asked if signals.declared(name) is None)
    assert undeclared == []


def test_a_rule_declares_what_it_reads_in_its_own_source() -> None:
    shared = inspect.getsource(rules.common)
    for rule in rules.RULES:
        source = inspect.getsource(inspect.getmodule(rule.check)) + shared
        for name in rule.thresholds:
            assert f"t.{name}" in source, (rule.code, name)
