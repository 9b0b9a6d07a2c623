"""Optimization: weights that do not move, gradients that explode or vanish, learning rates
too high or too low, weight decay that outweighs the gradient. Judged per parameter group in
forward order and in phases of the run (the early steps, windows, the recent steps), for any
architecture."""

from __future__ import annotations

import numpy as np

from mlflow_audiodiag import signals as S
from mlflow_audiodiag.diagnosis.evidence import RunEvidence
from mlflow_audiodiag.diagnosis.findings import Finding, Severity
from mlflow_audiodiag.diagnosis.rules.common import (
    clip_advice,
    clip_norm,
    finite,
    grad_growth,
    is_frozen,
    knob,
    learned,
    log_ramp,
    lr_advice,
    model_size,
    phases,
    ramp,
    require,
    require_epochs,
    score,
    segment,
    sentence,
    step_values,
    train_chance,
    train_loss,
    update_ratios,
    weight_shrink,
)
from mlflow_audiodiag.diagnosis.rules.registry import Context, MissingSignal, rule
from mlflow_audiodiag.diagnosis.thresholds import Thresholds

NO_WEIGHT_UPDATES = "no_weight_updates"
EXPLODING_GRADIENTS = "exploding_gradients"
VANISHING_GRADIENTS = "vanishing_gradients"
LR_TOO_HIGH = "lr_too_high"
LR_TOO_LOW = "lr_too_low"
WEIGHT_DECAY_TOO_HIGH = "weight_decay_too_high"


def _group_grad_medians(ev: RunEvidence, t: Thresholds) -> dict[str, float]:
    """Per trainable group (forward order), the median gradient norm of the recent steps."""
    out = {}
    for group in ev.groups(S.GRAD_NORM):
        if is_frozen(ev, group, t):
            continue
        rows = step_values(ev, S.GRAD_NORM.key(group=group))
        if rows is not None:
            out[group] = float(np.median(rows[-segment(len(rows), t.recent_fraction) :, 1]))
    return out


@rule(
    NO_WEIGHT_UPDATES,
    family="optimization",
    title="Weights not updated",
    precedence=0,
    thresholds=("frozen_fraction", "update_ratio_zero", "vanishing_norm"),
    signals=(
        S.FROZEN_FRACTION,
        S.UPDATE_RATIO,
        S.GRAD_NORM,
        S.LR,
        S.TRAIN_BATCHES,
        S.EPOCH_LAST_STEP,
    ),
    defers_to=("non_finite", LR_TOO_HIGH, WEIGHT_DECAY_TOO_HIGH),
)
def no_weight_updates(ev: RunEvidence, t: Thresholds, ctx: Context) -> Finding | None:
    """Parameter groups are frozen, or receive gradients but their weights do not change (the
    optimizer does not step, or its LR is 0)."""
    never = _never_stepped(ev)
    if never is not None:
        return never
    frozen = {
        g: value
        for g in ev.groups(S.FROZEN_FRACTION)
        if (value := ev.latest(S.FROZEN_FRACTION.key(group=g))) is not None
    }
    ratios = update_ratios(ev, t, trainable_only=False)
    if not frozen and not ratios:
        raise MissingSignal(S.UPDATE_RATIO.name)
    grads = _group_grad_medians(ev, t)
    frozen_groups = [g for g, value in frozen.items() if value >= t.frozen_fraction]
    still = [
        g
        for g, value in ratios.items()
        if value <= t.update_ratio_zero and grads.get(g, 1.0) > t.vanishing_norm
    ]
    order = ev.groups(S.FROZEN_FRACTION) or list(ratios)
    stuck = [g for g in order if g in set(frozen_groups) | set(still)]
    if not stuck:
        return None
    groups = set(frozen) | set(ratios)
    share = len(stuck) / len(groups)
    output_end = order[-1] if order else None
    evidence: dict[str, float | str] = {
        "frozen_groups": ", ".join(frozen_groups),
        "groups_with_gradients_but_no_updates": ", ".join(still),
        "stuck_share": share,
    }
    evidence.update({f"update_ratio_median/{g}": v for g, v in ratios.items() if g in stuck})
    lrs = step_values(ev, S.LR.key(param_group=ev.groups(S.LR)[0])) if ev.groups(S.LR) else None
    if lrs is not None:
        evidence["lr_last"] = float(lrs[-1, 1])
    return Finding(
        code=NO_WEIGHT_UPDATES,
        severity=Severity.CRITICAL if share == 1.0 or output_end in stuck else Severity.WARNING,
        title="Weights are not updated in: " + ", ".join(stuck),
        evidence=evidence,
        thresholds={"frozen_fraction": t.frozen_fraction, "update_ratio_zero": t.update_ratio_zero},
        fix=(
            "Unfreeze the groups that should learn (requires_grad=True; see "
            "monitor/parameter_groups.json), build the optimizer over model.parameters() after "
            "any freezing or unfreezing, call optimizer.step() after backward() (an AMP "
            "GradScaler skips steps with inf gradients), and make sure the learning rate is "
            "not 0 (lr/<param group> in monitor/steps.parquet)."
        ),
        score=score(share),
    )


def _never_stepped(ev: RunEvidence) -> Finding | None:
    """The model ran training batches, but the optimizer never stepped."""
    batches = ev.values(S.TRAIN_BATCHES.name)
    last_step = ev.values(S.EPOCH_LAST_STEP.name)
    if batches is None or last_step is None or np.nansum(batches) == 0:
        return None
    if np.nanmax(last_step) > 0:
        return None
    return Finding(
        code=NO_WEIGHT_UPDATES,
        severity=Severity.CRITICAL,
        title=f"The optimizer never stepped in {int(np.nansum(batches))} training batches",
        evidence={
            "training_batches": float(np.nansum(batches)),
            "optimizer_steps": 0.0,
        },
        thresholds={},
        fix=(
            "Call optimizer.step() after backward() in every training step (with manual "
            "optimization: self.optimizers().step()); an AMP GradScaler skips steps whose "
            "gradients are not finite."
        ),
        score=1.0,
    )


def _loss_blowup(ev: RunEvidence, t: Thresholds) -> float | None:
    """Recent / early training loss (inf when the last epoch loss is non-finite)."""
    epochs = ev.epochs.columns.get(S.TRAIN_LOSS.name)
    if epochs is not None and len(epochs) >= 2 and not np.isfinite(epochs[-1]):
        return float("inf") if np.isfinite(epochs).any() else None
    losses = train_loss(ev)
    if losses is None:
        return None
    losses = finite(losses)
    early, recent = phases(losses, t)
    start = float(np.median(early))
    return float(np.median(recent) / start) if start > 0 else None


@rule(
    EXPLODING_GRADIENTS,
    family="optimization",
    title="Exploding gradients",
    precedence=1,
    thresholds=(
        "spike_ratio",
        "growth_ratio",
        "grad_norm_high",
        "loss_blowup_ratio",
        "loss_learning_ratio",
        "update_ratio_high",
        "loss_rise_ratio",
        "dead_ratio",
    ),
    signals=(S.GRAD_NORM_TOTAL, S.CLIP_MAX_NORM, S.TRAIN_LOSS, S.STEP_LOSS, S.UPDATE_RATIO),
)
def exploding_gradients(ev: RunEvidence, t: Thresholds, ctx: Context) -> Finding | None:
    """The total gradient norm (before clipping) grows by an order of magnitude within the run,
    stays huge, or spikes; ``loss_blowup`` says whether the loss diverged too. Growth counts
    even when clipping or an adaptive optimizer keeps the updates bounded, but not while the
    training loss keeps falling well (the network sharpens as it fits); when the updates were
    far too large from the first steps, the learning rate is named instead."""
    values = require(ev, S.GRAD_NORM_TOTAL, min_points=8)[:, 1]
    growth = grad_growth(values)
    median = float(np.median(values))
    spike = float(values.max() / median) if median > 0 else float("inf")
    _, recent = phases(values, t)
    late = float(np.median(recent))
    by_spike, by_growth, by_level = (
        spike >= t.spike_ratio,
        growth >= t.growth_ratio,
        late >= t.grad_norm_high,
    )
    if not (by_spike or by_growth or by_level):
        return None
    loss_ratio = _loss_blowup(ev, t)
    blowup = loss_ratio is not None and loss_ratio >= t.loss_blowup_ratio
    clip = clip_norm(ev)
    evidence: dict[str, float | str] = {
        "grad_norm_growth": growth,
        "grad_norm_max_over_median": spike,
        "grad_norm_recent_median": late,
        "loss_blowup": float(blowup),
        "clipping_max_norm": "off" if clip is None else clip,
    }
    if loss_ratio is not None:
        evidence["loss_recent_over_early"] = loss_ratio
    strength = max(
        log_ramp(growth, t.growth_ratio, 10 * t.growth_ratio),
        log_ramp(late, t.grad_norm_high, 10 * t.grad_norm_high),
        float(blowup),
        0.5 * log_ramp(spike, t.spike_ratio, 10 * t.spike_ratio),
    )
    early_ratio = _early_fastest_ratio(ev, t)
    # Too-large first updates name the LR, unless the norms then grew by an order of magnitude
    # or stay huge: gradients that feed on themselves are exploding, whatever started it.
    first_steps = _early_blowup(ev, t)
    killed = first_steps is not None and bool(first_steps["died"])  # later "growth" is noise
    lr_from_start = (
        early_ratio is not None
        and early_ratio >= t.update_ratio_high
        and (killed or not (by_growth or by_level))
    )
    learning_through = (
        not blowup
        and not by_level
        and growth < 10 * t.growth_ratio  # beyond that no fit explains it
        and loss_ratio is not None
        and loss_ratio <= t.loss_learning_ratio
    )
    if lr_from_start:
        # The updates were too large from the first steps: the learning rate is the cause,
        # the growing gradients its consequence.
        evidence["update_ratio_fastest_group_early"] = early_ratio
        evidence["explained_by"] = LR_TOO_HIGH
        severity = Severity.INFO
    elif learning_through:
        # Norms that grow while the loss keeps falling well: the network sharpens as it fits.
        severity = Severity.INFO
    elif blowup or ((by_growth or by_level) and clip is None):
        severity = Severity.CRITICAL
    elif by_growth or by_level:
        severity = Severity.WARNING
    else:
        severity = Severity.INFO  # isolated spikes: a symptom of other causes, or harmless
    what = (
        f"grow {growth:.0f}x within the run"
        if by_growth
        else (f"stay at {late:.3g}" if by_level else f"spike to {spike:.0f}x their median")
    )
    return Finding(
        code=EXPLODING_GRADIENTS,
        severity=severity,
        title=f"Gradients explode: norms {what}" + (" and the loss diverges" if blowup else ""),
        evidence=evidence,
        thresholds={
            "spike_ratio": t.spike_ratio,
            "growth_ratio": t.growth_ratio,
            "grad_norm_high": t.grad_norm_high,
            "loss_blowup_ratio": t.loss_blowup_ratio,
            "loss_learning_ratio": t.loss_learning_ratio,
        },
        fix=(
            f"{sentence(clip_advice(ev))}, {lr_advice(ev, 0.3)} and warm it up; use "
            "normalization layers (LayerNorm/BatchNorm) and a standard initialization; check "
            "for outlier inputs (monitor/features.json: max) and standardize them."
        ),
        score=score(strength),
    )


@rule(
    VANISHING_GRADIENTS,
    family="optimization",
    title="Vanishing gradients",
    precedence=2,
    thresholds=("vanishing_ratio", "vanishing_norm", "recent_fraction", "frozen_fraction"),
    signals=(S.GRAD_NORM, S.FROZEN_FRACTION),
    defers_to=("non_finite", LR_TOO_HIGH, WEIGHT_DECAY_TOO_HIGH),
)
def vanishing_gradients(ev: RunEvidence, t: Thresholds, ctx: Context) -> Finding | None:
    """The input-end group's recent gradient norm is orders of magnitude below the output
    end's, or a group's is ~zero (groups in forward order, any architecture)."""
    medians = _group_grad_medians(ev, t)
    if not medians:
        raise MissingSignal(S.GRAD_NORM.name)
    ordered = list(medians)
    first, last = ordered[0], ordered[-1]
    ratio = medians[first] / medians[last] if len(ordered) > 1 and medians[last] > 0 else None
    smallest = min(medians.values())
    by_ratio = ratio is not None and ratio < t.vanishing_ratio
    by_norm = smallest < t.vanishing_norm
    if not (by_ratio or by_norm):
        return None
    evidence: dict[str, float | str] = {f"grad_norm_recent/{g}": v for g, v in medians.items()}
    evidence["smallest_group_median"] = smallest
    if ratio is not None:
        evidence[f"ratio_{first}_to_{last}"] = ratio
    strength = max(
        log_ramp(ratio, t.vanishing_ratio, t.vanishing_ratio / 100) if ratio is not None else 0,
        log_ramp(smallest, t.vanishing_norm, t.vanishing_norm / 100),
    )
    all_zero = all(v < t.vanishing_norm for v in medians.values())
    return Finding(
        code=VANISHING_GRADIENTS,
        severity=Severity.CRITICAL if all_zero or strength >= 0.5 else Severity.WARNING,
        title=(
            "Gradients vanish: "
            + (
                f"{first} (input end) gets {ratio:.1e}x the gradient of {last} (output end)"
                if by_ratio
                else f"smallest group gradient norm {smallest:.1e}"
            )
        ),
        evidence=evidence,
        thresholds={"vanishing_ratio": t.vanishing_ratio, "vanishing_norm": t.vanishing_norm},
        fix=(
            "Give gradients a path to the early layers: residual connections and "
            "normalization layers, ReLU/GELU instead of saturating sigmoid/tanh, a standard "
            "initialization (no large biases or weights that saturate activations), fewer "
            "layers"
            + (f" (the model has {size})" if (size := model_size(ev)) else "")
            + "; if gradients are zero everywhere, check that the loss depends on the "
            "parameters (no detach() or torch.no_grad() in the forward pass)."
        ),
        score=score(strength),
    )


@rule(
    LR_TOO_HIGH,
    family="optimization",
    title="Learning rate too high",
    precedence=3,
    thresholds=(
        "update_ratio_high",
        "loss_rise_ratio",
        "loss_oscillation",
        "early_fraction",
        "dead_ratio",
        "window_epochs",
        "growth_ratio",
        "loss_learning_ratio",
        "flat_noise_sigmas",
        "weight_shrink",
    ),
    signals=(
        S.UPDATE_RATIO,
        S.STEP_LOSS,
        S.TRAIN_LOSS,
        S.GRAD_NORM_TOTAL,
        S.LR,
        S.EPOCH_LAST_STEP,
        S.WEIGHT_NORM,
    ),
)
def lr_too_high(ev: RunEvidence, t: Thresholds, ctx: Context) -> Finding | None:
    """Updates far above ~1e-2 of the weights per step; or an early blow-up (the loss jumps in
    the first steps, after which the gradients die); or a training loss that rises or
    oscillates from epoch to epoch. Updates of a normal size at first that grow with growing
    gradients are exploding gradients instead; updates large only next to weights that faded
    (the loss steady) are weight decay's."""
    ratios = update_ratios(ev, t, trainable_only=True)
    early_ratio = _early_fastest_ratio(ev, t)
    blowup = _early_blowup(ev, t)
    epoch_losses = ev.values(S.TRAIN_LOSS.name)
    if not ratios and blowup is None and epoch_losses is None:
        raise MissingSignal(S.UPDATE_RATIO.name)
    grads = step_values(ev, S.GRAD_NORM_TOTAL.name)
    killed = blowup is not None and bool(blowup["died"])
    grew = not killed and grads is not None and grad_growth(grads[:, 1]) >= t.growth_ratio
    normal_start = early_ratio is not None and early_ratio < t.update_ratio_high
    if normal_start and grew:
        return None  # updates were fine until the gradients grew: exploding gradients
    ratio = max(ratios.values()) if ratios else None
    by_ratio = ratio is not None and ratio >= t.update_ratio_high
    by_early = early_ratio is not None and early_ratio >= t.update_ratio_high
    rise, oscillation = _epoch_loss_instability(epoch_losses, t, _epoch_loss_noise(ev, t))
    by_rise = rise is not None and rise >= t.loss_rise_ratio
    by_oscillation = oscillation is not None and oscillation >= t.loss_oscillation
    blown = blowup is not None and (blowup["loss_rise"] >= t.loss_rise_ratio or blowup["died"])
    if not (by_ratio or by_early or blown or by_rise or by_oscillation):
        return None
    shrink = weight_shrink(ev, t)
    if (
        shrink is not None
        and shrink <= t.weight_shrink
        and not (blown or by_rise or by_oscillation)
    ):
        return None  # updates large only next to weights that faded: weight decay's picture
    evidence: dict[str, float | str] = {}
    if ratio is not None:
        evidence["update_ratio_fastest_group"] = ratio
    if early_ratio is not None:
        evidence["update_ratio_fastest_group_early"] = early_ratio
    if blowup is not None:
        evidence.update({f"early_{k}": v for k, v in blowup.items()})
    if rise is not None:
        evidence["train_loss_window_over_earlier_min"] = rise
        evidence["train_loss_upward_moves"] = oscillation
    # An early blow-up is as strong as the loss's jump (a network it killed: full strength).
    blown_strength = 0.0
    if blown and blowup is not None:
        blown_strength = (
            1.0
            if blowup["died"]
            else log_ramp(blowup["loss_rise"], t.loss_rise_ratio, 10 * t.loss_rise_ratio)
        )
    strength = max(
        log_ramp(max(ratio or 0, early_ratio or 0), t.update_ratio_high, 10 * t.update_ratio_high),
        blown_strength,
        0.5 * ramp(rise or 0.0, t.loss_rise_ratio, 2 * t.loss_rise_ratio),
        0.5 * ramp(oscillation or 0.0, t.loss_oscillation, 3 * t.loss_oscillation),
    )
    if blown:
        reason = "an early blow-up wrecked the weights" + (
            f" at step {blowup['onset_step']:g}" if blowup and "onset_step" in blowup else ""
        )
    elif by_ratio or by_early:
        reason = f"weights change by {max(ratio or 0, early_ratio or 0):.1e} of their norm per step"
    else:
        reason = "the training loss " + ("rises" if by_rise else "oscillates")
    unstable = blown or strength >= 1.0 or ((by_ratio or by_early) and (by_rise or by_oscillation))
    loss_ratio = _loss_blowup(ev, t)
    if (
        by_early
        and not (by_ratio or blown or by_rise or by_oscillation)
        and loss_ratio is not None
        and loss_ratio <= t.loss_learning_ratio
        and _val_learned(ev, t)
    ):
        # Large first steps (an adaptive optimizer's usual start) that settle while the loss
        # keeps falling well and val accuracy learns: a note, not a cause.
        evidence["loss_recent_over_early"] = loss_ratio
        return Finding(
            code=LR_TOO_HIGH,
            severity=Severity.INFO,
            title=f"Large first updates ({early_ratio:.1e} of the weights per step) that settled",
            evidence=evidence,
            thresholds={"update_ratio_high": t.update_ratio_high},
            fix=f"Warm the learning rate up over the first epochs; {lr_advice(ev, 0.5)} if not.",
            score=score(min(strength, 0.5)),
        )
    if grew:
        # Large first updates, then gradients that grew by an order of magnitude: the LR let
        # them explode; exploding gradients is the finding that names the whole pattern.
        evidence["grad_norm_growth"] = grad_growth(grads[:, 1])
        unstable, strength = False, min(strength, 0.5)
    return Finding(
        code=LR_TOO_HIGH,
        severity=Severity.CRITICAL if unstable else Severity.WARNING,
        title=f"Learning rate too high: {reason}",
        evidence=evidence,
        thresholds={
            "update_ratio_high": t.update_ratio_high,
            "loss_rise_ratio": t.loss_rise_ratio,
            "loss_oscillation": t.loss_oscillation,
            "dead_ratio": t.dead_ratio,
        },
        fix=(
            f"{sentence(lr_advice(ev, 0.1))}; warm it up over the first epochs and decay "
            f"it (warmup + cosine, or ReduceLROnPlateau on the val loss), and {clip_advice(ev)}."
        ),
        score=score(strength),
    )


def _val_learned(ev: RunEvidence, t: Thresholds) -> bool:
    """Whether val accuracy rose clearly above its baseline (unknown: assumed so)."""
    try:
        return learned(ev, t)[0]
    except MissingSignal:
        return True


def _early_fastest_ratio(ev: RunEvidence, t: Thresholds) -> float | None:
    """The fastest group's median update ratio over the early steps."""
    best = None
    for group in ev.groups(S.UPDATE_RATIO):
        if is_frozen(ev, group, t):
            continue
        rows = step_values(ev, S.UPDATE_RATIO.key(group=group))
        if rows is None or len(rows) < 8:
            continue
        early, _ = phases(rows[:, 1], t)
        value = float(np.median(early))
        best = value if best is None else max(best, value)
    return best


def _early_blowup(ev: RunEvidence, t: Thresholds) -> dict[str, float] | None:
    """How the first steps went: the loss's rise over its start, and whether the gradients
    died afterwards (recent norm below ``dead_ratio`` of the early peak, loss not below its
    start)."""
    loss_rows = step_values(ev, S.STEP_LOSS.name)
    grad_rows = step_values(ev, S.GRAD_NORM_TOTAL.name)
    if loss_rows is None or len(loss_rows) < 10:
        return None
    losses = loss_rows[:, 1]
    start = float(np.median(losses[:3]))
    early, recent = phases(losses, t)
    smooth = np.convolve(early, np.ones(3) / 3, mode="valid") if len(early) >= 3 else early
    peak_at = int(np.argmax(smooth))
    out = {
        "loss_start": start,
        "loss_rise": float(smooth.max() / start) if start > 0 else 0.0,
        "died": 0.0,
    }
    if out["loss_rise"] >= t.loss_rise_ratio:
        out["onset_step"] = float(loss_rows[min(peak_at + 1, len(loss_rows) - 1), 0])
    if grad_rows is not None and len(grad_rows) >= 10:
        grads = grad_rows[:, 1]
        early_grads, recent_grads = phases(grads, t)
        peak, late = float(early_grads.max()), float(np.median(recent_grads))
        out["grad_norm_recent_over_early_peak"] = late / peak if peak > 0 else 1.0
        # Against the loss before any update: a blow-up in step 2 would inflate a median.
        no_learning = float(np.median(recent)) >= 0.9 * min(start, float(losses[0]))
        out["died"] = float(peak > 0 and late <= t.dead_ratio * peak and no_learning)
    return out


def _epoch_loss_instability(
    losses: np.ndarray | None, t: Thresholds, noise: float = 0.0
) -> tuple[float | None, float | None]:
    """Window-median train loss over the lowest loss before the window, and the sum of the
    window's upward moves over the first loss. Moves within ``flat_noise_sigmas`` standard
    errors ``noise`` of an epoch's mean loss are sampling noise and do not count."""
    if losses is None:
        return None, None
    losses = finite(losses)
    if len(losses) < max(3, t.window_epochs // 2) or losses.min() <= 0 or losses[0] <= 0:
        return None, None
    window = losses[-t.window_epochs :]
    before = losses[: -t.window_epochs] if len(losses) > t.window_epochs else losses[:1]
    margin = t.flat_noise_sigmas * noise
    excess = float(np.median(window) - before.min())
    rise = float(np.median(window) / before.min()) if excess >= margin else 1.0
    moves = np.diff(losses[-t.window_epochs - 1 :])
    upward = np.clip(moves - margin * np.sqrt(2.0), 0.0, None).sum()
    return rise, float(upward / losses[0])


def _epoch_loss_noise(ev: RunEvidence, t: Thresholds) -> float:
    """Standard error of an epoch's mean training loss over the window's epochs: the spread
    of the step losses within an epoch over the root of the steps per epoch (0 when the step
    losses or epoch ends are not recorded)."""
    ends = ev.values(S.EPOCH_LAST_STEP.name)
    rows = step_values(ev, S.STEP_LOSS.name)
    if ends is None or rows is None or len(ends) < 2:
        return 0.0
    ends = ends[-t.window_epochs - 1 :]
    epoch_of = np.searchsorted(ends, rows[:, 0], side="left")  # 0: before the window
    spreads, counts = [], []
    for epoch in range(1, len(ends)):
        values = rows[epoch_of == epoch, 1]
        if len(values) >= 2:
            spreads.append(float(np.var(values, ddof=1)))
            counts.append(len(values))
    if not spreads:
        return 0.0
    return float(np.sqrt(np.mean(spreads) / np.median(counts)))


@rule(
    LR_TOO_LOW,
    family="optimization",
    title="Learning rate too low",
    precedence=4,
    thresholds=("update_ratio_low", "update_ratio_zero", "loss_flat_change", "lr_active_fraction"),
    signals=(S.UPDATE_RATIO, S.TRAIN_LOSS, S.STEP_LOSS, S.LR),
)
def lr_too_low(ev: RunEvidence, t: Thresholds, ctx: Context) -> Finding | None:
    """Update/weight ratios far below ~1e-3 while the training loss barely moves."""
    ratios = update_ratios(ev, t, trainable_only=True)
    if not ratios:
        raise MissingSignal(S.UPDATE_RATIO.name)
    losses = train_loss(ev)
    if losses is None:
        raise MissingSignal(S.TRAIN_LOSS.name)
    ratio = max(ratios.values())
    losses = finite(losses)
    drop = float((losses[0] - losses.min()) / losses[0]) if losses[0] > 0 else 0.0
    if not (t.update_ratio_zero < ratio < t.update_ratio_low and drop < t.loss_flat_change):
        return None
    return Finding(
        code=LR_TOO_LOW,
        severity=Severity.WARNING,
        title=f"Learning rate too low: weights move by at most {ratio:.1e} of their norm per step",
        evidence={
            "update_ratio_fastest_group": ratio,
            **{f"update_ratio_median/{g}": v for g, v in ratios.items()},
            "train_loss_relative_drop": drop,
        },
        thresholds={
            "update_ratio_low": t.update_ratio_low,
            "update_ratio_zero": t.update_ratio_zero,
            "loss_flat_change": t.loss_flat_change,
        },
        fix=(
            f"{sentence(lr_advice(ev, 10.0))}: per-step update/weight ratios around 1e-3 "
            "are typical. Make sure a schedule does not decay it too early ("
            + knob(
                ev,
                "ReduceLROnPlateau lowers it only when the val loss stops improving",
                "scheduler",
                "plateau",
            )
            + ")."
        ),
        score=score(log_ramp(ratio, t.update_ratio_low, t.update_ratio_low / 100)),
    )


@rule(
    WEIGHT_DECAY_TOO_HIGH,
    family="optimization",
    title="Weight decay too strong",
    precedence=5,
    thresholds=("weight_shrink", "overfit_gap", "chance_margin", "window_epochs"),
    signals=(S.WEIGHT_NORM, S.TRAIN_ACCURACY, S.MAJORITY_FRACTION),
    # Decay scales with the learning rate: when the LR also blows the loss up or makes it
    # rise and oscillate, the LR is the cause to fix first (and lowering it cuts the decay).
    defers_to=(LR_TOO_HIGH,),
)
def weight_decay_too_high(ev: RunEvidence, t: Thresholds, ctx: Context) -> Finding | None:
    """A layer's weights fade to ``weight_shrink`` of their initial norm or less while train
    accuracy stays far from a fit: the decay outweighs the gradient and holds the model back
    (critical when train accuracy stays near chance). Updates look huge next to weights near
    zero; that is not a learning rate too high, under which the weights grow."""
    shrink = weight_shrink(ev, t)
    if shrink is None:
        raise MissingSignal(S.WEIGHT_NORM.name)
    train = require_epochs(ev, S.TRAIN_ACCURACY, t)
    chance = train_chance(ev)
    if chance is None:
        raise MissingSignal(S.MAJORITY_FRACTION.key(split="train"))
    k = min(t.window_epochs, len(train))
    train_late = float(np.mean(train[-k:]))
    if shrink > t.weight_shrink or 1.0 - train_late < t.overfit_gap:
        return None
    at_chance = train_late <= chance + 2 * t.chance_margin
    return Finding(
        code=WEIGHT_DECAY_TOO_HIGH,
        severity=Severity.CRITICAL if at_chance else Severity.WARNING,
        title=(
            f"Weight decay too strong: a layer's weights fade to {shrink:.1%} of their initial "
            f"norm while train accuracy stays at {train_late:.3f}"
            + (f", near chance ({chance:.3f})" if at_chance else ", far from a fit")
        ),
        evidence={
            "weight_norm_recent_over_initial": shrink,
            "train_accuracy_window": train_late,
            "train_chance": chance,
        },
        thresholds={
            "weight_shrink": t.weight_shrink,
            "overfit_gap": t.overfit_gap,
            "chance_margin": t.chance_margin,
        },
        fix=(
            "Lower the weight decay: "
            + knob(ev, "typical values are 1e-4 to 1e-2", "weight_decay", 0.01)
            + ". With Adam, weight_decay is an L2 term that the step size does not scale; "
            "use AdamW for decoupled decay, and exclude biases and norm layers from it."
        ),
        score=score(log_ramp(shrink, t.weight_shrink, t.weight_shrink / 100)),
    )
