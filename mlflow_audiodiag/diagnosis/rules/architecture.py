"""The architecture's own signals: attention that collapsed onto single tokens or stays
uniform."""

from __future__ import annotations

import numpy as np

from mlflow_audiodiag import signals as S
from mlflow_audiodiag.diagnosis.evidence import RunEvidence
from mlflow_audiodiag.diagnosis.findings import Finding, Severity
from mlflow_audiodiag.diagnosis.rules.common import INFERRED_CAP, lr_advice, ramp, score, sentence
from mlflow_audiodiag.diagnosis.rules.data import _OPTIMIZATION
from mlflow_audiodiag.diagnosis.rules.registry import Context, MissingSignal, NotApplicable, rule
from mlflow_audiodiag.diagnosis.thresholds import Thresholds

ATTENTION_COLLAPSE = "attention_collapse"


@rule(
    ATTENTION_COLLAPSE,
    family="architecture",
    title="Attention collapse",
    precedence=0,
    thresholds=("attention_entropy_low", "attention_entropy_high", "window_epochs"),
    signals=(S.ATTENTION_ENTROPY,),
    defers_to=_OPTIMIZATION,
    deference="cap",
)
def attention_collapse(ev: RunEvidence, t: Thresholds, ctx: Context) -> Finding | None:
    """Late in training, attention entropy is ~0 in some layer (attention on single tokens)
    or ~1 on average (uniform attention that ignores the content)."""
    layers = ev.groups(S.ATTENTION_ENTROPY)
    if not layers:
        if ev.epochs.columns:
            raise NotApplicable("the model has no nn.MultiheadAttention layers")
        raise MissingSignal(S.ATTENTION_ENTROPY.name)
    late = {}
    for layer in layers:
        values = ev.values(S.ATTENTION_ENTROPY.key(layer=layer))
        values = values[np.isfinite(values)] if values is not None else np.zeros(0)
        if len(values) >= t.min_epochs:
            late[layer] = float(np.median(values[-t.window_epochs :]))
    if not late:
        raise MissingSignal(S.ATTENTION_ENTROPY.name, f"fewer than {t.min_epochs} epochs")
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
            f"{sentence(lr_advice(ev, 0.3))} and warm it up, initialize the query/key "
            "projections with a standard scale (no large init), keep dropout and use more "
            "heads; check that the inputs are standardized."
        )
        strength = ramp(min(late.values()), t.attention_entropy_low, 0.0)
    else:
        title = f"Attention stays uniform (mean normalized entropy {mean:.3f})"
        fix = (
            "Attention does not pick out any time region: check that the clips are not mostly "
            "silence or padding, use finer patches or frames, raise a too-low learning rate "
            "and train longer."
        )
        strength = ramp(mean, t.attention_entropy_high, 1.0)
    return Finding(
        code=ATTENTION_COLLAPSE,
        severity=Severity.WARNING if collapsed else Severity.INFO,
        title=title,
        evidence=evidence,
        thresholds={
            "attention_entropy_low": t.attention_entropy_low,
            "attention_entropy_high": t.attention_entropy_high,
        },
        fix=fix,
        score=score(strength, INFERRED_CAP),
    )
