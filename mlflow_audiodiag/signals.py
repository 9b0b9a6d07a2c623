"""The evidence contract: every signal the diagnosis reads, declared once.

A :class:`Signal` says what one measurement is called, how often it is recorded (its cadence),
its unit, which :class:`~mlflow_audiodiag.monitoring.monitor.TrainingMonitor` call produces it
and what it means. Names may hold ``{placeholders}`` (a parameter group, a class, a split, ...).
The monitor records every signal itself; where it keeps them follows from the cadence:

- ``step``: one row per optimizer step in the run's artifact ``monitor/steps.parquet``;
- ``epoch``: one row per validation epoch in ``monitor/epochs.parquet``;
- ``once``: one value in ``monitor/summary.json``.

Signals marked ``headline`` are also MLflow metrics, for people to chart (per-step ones
downsampled). The evidence loader, the rules and the README table all read :data:`SIGNALS`.

    >>> VAL_ACCURACY.name, VAL_ACCURACY.cadence
    ('val/accuracy', 'epoch')
    >>> GRAD_NORM.key(group="encoder.0")
    'grad_norm/encoder.0'
    >>> declared("grad_norm/encoder.0") is GRAD_NORM
    True
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from typing import Final, Literal

Cadence = Literal["step", "epoch", "once"]
STEP: Final = "step"
EPOCH: Final = "epoch"
ONCE: Final = "once"

# The monitor calls that produce signals (the producer column of the contract).
BY_STEP = "every optimizer step (after_backward/after_step, or the hooks of watch())"
BY_EPOCH = "end_epoch"
BY_DATA = "log_dataset, or the model inputs and targets seen in training and validation"
BY_MODEL = "the monitor's constructor (the model's parameters)"


@dataclass(frozen=True)
class Signal:
    """One declared measurement of the evidence contract."""

    name: str
    cadence: Cadence
    unit: str
    producer: str
    meaning: str
    headline: bool = False
    _pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        regex = ""
        for literal, placeholder, _, _ in string.Formatter().parse(self.name):
            regex += re.escape(literal)
            if placeholder is not None:
                regex += f"(?P<{placeholder}>.+?)"
        object.__setattr__(self, "_pattern", re.compile(f"^{regex}$"))

    @property
    def is_template(self) -> bool:
        """Whether the name holds placeholders (one key per group, class, ...)."""
        return "{" in self.name

    @property
    def prefix(self) -> str:
        """The name up to its first placeholder (the whole name when there is none)."""
        return self.name.split("{", 1)[0]

    def key(self, **parts: object) -> str:
        """The concrete name, e.g. ``GRAD_NORM.key(group="head")``."""
        return self.name.format(**{k: str(v) for k, v in parts.items()})

    def match(self, key: str) -> dict[str, str] | None:
        """The placeholder values when ``key`` is a name of this signal, else ``None``."""
        found = self._pattern.match(key)
        return None if found is None else found.groupdict()


# --- per optimizer step ------------------------------------------------------------------------
STEP_LOSS = Signal(
    "train/step_loss",
    STEP,
    "loss units (nats for cross-entropy)",
    BY_STEP + "; the loss passed in, the watched loss function's output, or the adapter's loss",
    "training loss of the step",
    headline=True,
)
STEP_ACCURACY = Signal(
    "train/step_accuracy",
    STEP,
    "fraction",
    BY_STEP + "; needs the batch's logits and integer targets",
    "accuracy of the step's training batch",
)
GRAD_NORM_TOTAL = Signal(
    "grad_norm/total",
    STEP,
    "L2 norm",
    BY_STEP,
    "norm of every tracked gradient together, before clipping",
    headline=True,
)
GRAD_NORM = Signal(
    "grad_norm/{group}", STEP, "L2 norm", BY_STEP, "gradient norm of one parameter group"
)
UPDATE_RATIO = Signal(
    "update_ratio/{group}",
    STEP,
    "ratio",
    BY_STEP,
    "||W_after - W_before|| / ||W_before|| of one parameter group in the step",
)
WEIGHT_NORM = Signal(
    "weight_norm/{group}",
    STEP,
    "L2 norm",
    BY_STEP + "; on the steps whose update is measured",
    "norm of one parameter group's weights before the step",
)
LR = Signal(
    "lr/{param_group}",
    STEP,
    "learning rate",
    BY_STEP + "; read from the optimizer's param groups",
    "learning rate of one optimizer param group",
)
NONFINITE_GRADS = Signal(
    "nonfinite/grads",
    STEP,
    "count",
    BY_STEP,
    "gradient tensors whose norm is NaN or infinite in the step",
    headline=True,
)
NONFINITE_LOSS = Signal(
    "nonfinite/loss", STEP, "0 or 1", BY_STEP, "1 when the step's loss is NaN or infinite",
    headline=True,
)  # fmt: skip
INVALID_TARGETS = Signal(
    "train/invalid_targets",
    STEP,
    "fraction",
    BY_STEP + "; needs soft targets (the watched loss function's, or the adapter's batch)",
    "share of the step's soft-target rows that are no probability distribution",
)
CLIP_MAX_NORM = Signal(
    "clip/max_norm",
    STEP,
    "L2 norm",
    BY_STEP + "; clip_grad_norm_, the framework's clipping setting, or a measured clip",
    "the gradient-clipping threshold in force (NaN when gradients are not clipped)",
)

# --- per validation epoch ----------------------------------------------------------------------
TRAIN_LOSS = Signal(
    "train/loss",
    EPOCH,
    "loss units",
    BY_EPOCH + "; the mean of the epoch's step losses unless the loop passes its own",
    "training loss of the epoch",
    headline=True,
)
TRAIN_ACCURACY = Signal(
    "train/accuracy",
    EPOCH,
    "fraction",
    BY_EPOCH + "; from the epoch's training logits and targets unless the loop passes it",
    "training accuracy of the epoch",
    headline=True,
)
VAL_LOSS = Signal(
    "val/loss",
    EPOCH,
    "nats",
    BY_EPOCH + "; cross-entropy of the validation logits unless the loop passes its own",
    "validation loss",
    headline=True,
)
VAL_ACCURACY = Signal(
    "val/accuracy",
    EPOCH,
    "fraction",
    BY_EPOCH + "; from the validation logits and targets unless the loop passes its own",
    "validation accuracy",
    headline=True,
)
VAL_BALANCED_ACCURACY = Signal(
    "val/balanced_accuracy",
    EPOCH,
    "fraction",
    BY_EPOCH,
    "mean per-class recall on the validation split",
    headline=True,
)
VAL_MACRO_F1 = Signal(
    "val/macro_f1", EPOCH, "fraction", BY_EPOCH, "unweighted mean F1 over classes",
    headline=True,
)  # fmt: skip
EPOCH_LAST_STEP = Signal(
    "train/last_step",
    EPOCH,
    "optimizer steps",
    BY_EPOCH,
    "the global step at the end of the epoch (maps epochs onto the step table)",
)
TRAIN_BATCHES = Signal(
    "train/batches",
    EPOCH,
    "forward passes",
    BY_EPOCH + "; the model's forward hook",
    "training-mode forward passes of the model in the epoch",
)
TOP_CLASS_FRACTION = Signal(
    "val_pred/top_class_fraction",
    EPOCH,
    "fraction",
    BY_EPOCH,
    "share of validation predictions that fall in the most predicted class",
    headline=True,
)
PREDICTION_ENTROPY = Signal(
    "val_pred/hist_entropy",
    EPOCH,
    "fraction of log K",
    BY_EPOCH,
    "normalized entropy of the validation prediction histogram",
)
N_PREDICTED_CLASSES = Signal(
    "val_pred/n_predicted_classes",
    EPOCH,
    "classes",
    BY_EPOCH,
    "number of classes predicted at least once on validation",
)
VAL_PRED_COUNT = Signal(
    "val_pred_count/{cls}", EPOCH, "clips", BY_EPOCH, "validation clips predicted as a class"
)
VAL_RECALL = Signal("val_recall/{cls}", EPOCH, "fraction", BY_EPOCH, "validation recall of a class")
ATTENTION_ENTROPY = Signal(
    "attention_entropy/layer{layer}",
    EPOCH,
    "fraction of log(keys)",
    BY_EPOCH + "; on a fixed validation batch, for every nn.MultiheadAttention",
    "mean normalized attention entropy of one attention layer",
)

# --- once per run ------------------------------------------------------------------------------
LABEL_COUNT = Signal(
    "labels/{split}/count/{cls}", ONCE, "clips", BY_DATA, "clips of a class in a split"
)
LABEL_N = Signal("labels/{split}/n", ONCE, "clips", BY_DATA, "labelled clips in a split")
IMBALANCE_RATIO = Signal(
    "labels/{split}/imbalance_ratio",
    ONCE,
    "ratio",
    BY_DATA,
    "clips of the largest class / clips of the smallest present class",
)
MAJORITY_FRACTION = Signal(
    "labels/{split}/majority_fraction", ONCE, "fraction", BY_DATA, "share of the largest class"
)
MAJORITY_BASELINE = Signal(
    "data/val_majority_accuracy",
    ONCE,
    "fraction",
    BY_DATA,
    "validation accuracy of always predicting the largest training class",
    headline=True,
)
FEATURE_STAT = Signal(
    "features/{stage}/{split}/{stat}",
    ONCE,
    "feature units",
    BY_DATA,
    "a statistic (mean, std, min, max, dynamic_range, nan_count, inf_count, n_clips, "
    "bin_mean_abs_max, bin_std_min, bin_std_max) of a split's features at a stage "
    "(raw: before the loop's normalization; input: what the model receives)",
)
FEATURE_SHIFT = Signal(
    "feature_shift/{stage}/{split}_vs_train_smd_{agg}",
    ONCE,
    "standard deviations",
    BY_DATA,
    "largest (max) or mean |standardized mean difference| per feature bin, split vs train",
)
AUDIO_STAT = Signal(
    "audio/{split}/{stat}",
    ONCE,
    "fraction or dBFS",
    "log_dataset with waveforms= or levels=",
    "silent_fraction, clipped_fraction, peak_dbfs_mean, rms_dbfs_mean, nonfinite_clips, n_clips",
)
FROZEN_FRACTION = Signal(
    "frozen_fraction/{group}",
    ONCE,
    "fraction",
    BY_MODEL,
    "share of a parameter group's elements with requires_grad=False",
)
TRAINABLE_PARAMETERS = Signal(
    "model/trainable_parameters", ONCE, "parameters", BY_MODEL, "trainable parameter count"
)

SIGNALS: Final[tuple[Signal, ...]] = tuple(
    value for value in list(globals().values()) if isinstance(value, Signal)
)

# Names people already log for a contract signal; the diagnosis reads the first one found when
# the run has no value under the contract's own name.
ALIASES: Final[dict[str, tuple[str, ...]]] = {
    VAL_ACCURACY.name: ("val_acc", "val_accuracy", "eval_accuracy", "valid_acc", "val/acc"),
    VAL_LOSS.name: ("val_loss", "eval_loss", "valid_loss"),
    TRAIN_LOSS.name: ("train_loss", "training_loss"),
    TRAIN_ACCURACY.name: ("train_acc", "train_accuracy"),
}

# Feature stages: before the loop's own normalization, and what the model receives.
STAGE_RAW: Final = "raw"
STAGE_INPUT: Final = "input"


def declared(key: str) -> Signal | None:
    """The signal ``key`` is a name of (exact names before templates), or ``None``."""
    for signal in SIGNALS:
        if not signal.is_template and signal.name == key:
            return signal
    for signal in SIGNALS:
        if signal.is_template and signal.match(key) is not None:
            return signal
    return None


def of_cadence(cadence: Cadence) -> tuple[Signal, ...]:
    """Every signal recorded at ``cadence``."""
    return tuple(s for s in SIGNALS if s.cadence == cadence)


def alias_of(key: str) -> str | None:
    """The contract name that ``key`` is a common alias of, or ``None``."""
    for name, aliases in ALIASES.items():
        if key in aliases:
            return name
    return None


def readme_table() -> str:
    """The contract as a Markdown table (the README embeds it)."""
    rows = ["| signal | cadence | unit | recorded by | meaning |", "|---|---|---|---|---|"]
    for s in SIGNALS:
        name = re.sub(r"\{(\w+)\}", r"<\1>", s.name)
        rows.append(
            f"| `{name}`{' *' if s.headline else ''} | {s.cadence} | {s.unit} | "
            f"{s.producer} | {s.meaning} |"
        )
    return "\n".join(rows)
