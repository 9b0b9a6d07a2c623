"""The input pipeline: features the model receives that are not standardized, or that differ
between training and validation."""

from __future__ import annotations

from mlflow_audiodiag import signals as S
from mlflow_audiodiag.diagnosis.evidence import RunEvidence
from mlflow_audiodiag.diagnosis.findings import Finding, Severity
from mlflow_audiodiag.diagnosis.rules.common import knob, log_ramp, ramp, score
from mlflow_audiodiag.diagnosis.rules.registry import Context, MissingSignal, rule
from mlflow_audiodiag.diagnosis.thresholds import Thresholds

UNNORMALIZED_FEATURES = "unnormalized_features"
NORMALIZATION_MISMATCH = "normalization_mismatch"


def _stage(ev: RunEvidence) -> str:
    """``input`` (what the model receives) when recorded, else ``raw``."""
    key = S.FEATURE_STAT.key(stage=S.STAGE_INPUT, split="train", stat="mean")
    return S.STAGE_INPUT if ev.latest(key) is not None else S.STAGE_RAW


def _stat(ev: RunEvidence, stage: str, split: str, stat: str) -> float | None:
    return ev.latest(S.FEATURE_STAT.key(stage=stage, split=split, stat=stat))


@rule(
    UNNORMALIZED_FEATURES,
    family="input",
    title="Unnormalized input features",
    precedence=0,
    thresholds=(
        "feature_mean_abs",
        "feature_std_low",
        "feature_std_high",
        "feature_dynamic_range",
        "raw_dynamic_range",
    ),
    signals=(S.FEATURE_STAT,),
)
def unnormalized_features(ev: RunEvidence, t: Thresholds, ctx: Context) -> Finding | None:
    """The features the model receives are far from zero mean / unit variance, have a huge
    dynamic range, or the raw features are on a linear power scale."""
    stage = _stage(ev)
    mean, std = _stat(ev, stage, "train", "mean"), _stat(ev, stage, "train", "std")
    if mean is None or std is None:
        raise MissingSignal(S.FEATURE_STAT.key(stage=S.STAGE_INPUT, split="train", stat="mean"))
    spread = _stat(ev, stage, "train", "dynamic_range")
    raw_spread = _stat(ev, S.STAGE_RAW, "train", "dynamic_range")
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
        "problems": ", ".join(name for name, bad in problems.items() if bad),
    }
    if spread is not None:
        evidence["dynamic_range"] = spread
    if raw_spread is not None:
        evidence["raw_dynamic_range"] = raw_spread
    std_strength = (
        log_ramp(std, t.feature_std_high, 10 * t.feature_std_high)
        if std > t.feature_std_high
        else log_ramp(std, t.feature_std_low, t.feature_std_low / 10)
    )
    strength = max(
        ramp(abs(mean), t.feature_mean_abs, 10 * t.feature_mean_abs),
        std_strength,
        log_ramp(spread, t.feature_dynamic_range, 10 * t.feature_dynamic_range) if spread else 0.0,
        log_ramp(raw_spread, t.raw_dynamic_range, 100 * t.raw_dynamic_range) if raw_spread else 0.0,
    )
    return Finding(
        code=UNNORMALIZED_FEATURES,
        severity=Severity.CRITICAL if problems["mean"] or problems["std"] else Severity.WARNING,
        title=f"Input features are not standardized (mean {mean:.3g}, std {std:.3g}, {stage})",
        evidence=evidence,
        thresholds={
            "feature_mean_abs": t.feature_mean_abs,
            "feature_std_low": t.feature_std_low,
            "feature_std_high": t.feature_std_high,
            "feature_dynamic_range": t.feature_dynamic_range,
            "raw_dynamic_range": t.raw_dynamic_range,
        },
        fix=(
            "Standardize the inputs to mean ~0 and std ~1 per mel/MFCC bin, with statistics "
            "fitted on the training split only and applied unchanged to val and test "
            + knob(ev, "(per-bin normalization)", "normalization", "per_bin")
            + "; use log-compressed (dB) mel or MFCC features rather than linear power."
        ),
        score=score(strength),
    )


@rule(
    NORMALIZATION_MISMATCH,
    family="input",
    title="Train/val normalization mismatch",
    precedence=1,
    thresholds=("smd_max", "smd_mean"),
    signals=(S.FEATURE_SHIFT, S.AUDIO_STAT),
)
def normalization_mismatch(ev: RunEvidence, t: Thresholds, ctx: Context) -> Finding | None:
    """Val features differ from train features as the model receives them (standardized mean
    difference per bin)."""
    stage = _stage(ev)
    smd_max = ev.latest(S.FEATURE_SHIFT.key(stage=stage, split="val", agg="max"))
    smd_mean = ev.latest(S.FEATURE_SHIFT.key(stage=stage, split="val", agg="mean"))
    if smd_max is None and smd_mean is None:
        raise MissingSignal(S.FEATURE_SHIFT.key(stage=S.STAGE_INPUT, split="val", agg="max"))
    by_max = smd_max is not None and smd_max >= t.smd_max
    by_mean = smd_mean is not None and smd_mean >= t.smd_mean
    if not (by_max or by_mean):
        return None
    evidence: dict[str, float | str] = {"stage": stage}
    if smd_max is not None:
        evidence["smd_max"] = smd_max
    if smd_mean is not None:
        evidence["smd_mean"] = smd_mean
    for split in ("train", "val"):
        level = ev.latest(S.AUDIO_STAT.key(split=split, stat="peak_dbfs_mean"))
        if level is not None:
            evidence[f"{split}_peak_dbfs_mean"] = level
    strength = max(
        ramp(smd_max, t.smd_max, 3 * t.smd_max) if smd_max is not None else 0.0,
        ramp(smd_mean, t.smd_mean, 3 * t.smd_mean) if smd_mean is not None else 0.0,
    )
    return Finding(
        code=NORMALIZATION_MISMATCH,
        severity=Severity.WARNING,
        title="Validation features are distributed differently from training features",
        evidence=evidence,
        thresholds={"smd_max": t.smd_max, "smd_mean": t.smd_mean},
        fix=(
            "Normalize val and test with the statistics fitted on the training split (never "
            "fit a scaler on val, never normalize only one split); check that the splits share "
            "recording conditions, sample rate and gain; per-clip normalization "
            + knob(ev, "", "normalization", "per_utterance").strip()
            + " removes per-clip gain and channel offsets, and gain/noise augmentation makes "
            "the model robust to them."
        ),
        score=score(strength),
    )
