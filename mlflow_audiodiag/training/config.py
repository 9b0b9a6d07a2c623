"""Training configuration: one frozen dataclass per concern, composed in :class:`TrainConfig`."""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from mlflow_audiodiag.errors import ConfigError
from mlflow_audiodiag.features.augment import AugmentConfig
from mlflow_audiodiag.features.config import FeatureConfig
from mlflow_audiodiag.features.normalization import NORMALIZATION_MODES, NormalizationMode
from mlflow_audiodiag.model.transformer import ModelConfig
from mlflow_audiodiag.monitoring.monitor import MonitorConfig

OnBadFile = Literal["error", "skip"]
ClassBalance = Literal["none", "weighted_loss", "balanced_sampler"]
OptimizerName = Literal["adamw", "sgd"]
SchedulerName = Literal["constant", "warmup_cosine", "step", "plateau"]


@dataclass(frozen=True)
class DataConfig:
    """Where the clips come from and how they are split and screened.

    ``source`` empty means the embedded synthetic corpus, generated from the ``synthetic_*``
    settings; otherwise a manifest CSV, a folder per class or a Speech Commands tree.
    """

    source: str = ""
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    split_seed: int = 0
    on_bad_file: OnBadFile = "error"
    normalization: NormalizationMode = "per_bin"
    synthetic_classes: int = 8
    synthetic_clips_per_class: int = 150
    synthetic_imbalance_ratio: float = 1.0
    synthetic_snr_db: tuple[float, float] = (5.0, 20.0)
    synthetic_seed: int = 0

    def __post_init__(self) -> None:
        if self.on_bad_file not in ("error", "skip"):
            raise ConfigError(f"on_bad_file must be 'error' or 'skip', got {self.on_bad_file!r}")
        if self.normalization not in NORMALIZATION_MODES:
            raise ConfigError(
                f"normalization must be one of {', '.join(NORMALIZATION_MODES)}, "
                f"got {self.normalization!r}"
            )


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer, learning-rate schedule and gradient clipping."""

    optimizer: OptimizerName = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.01
    momentum: float = 0.9
    scheduler: SchedulerName = "warmup_cosine"
    warmup_epochs: int = 2
    step_size: int = 10
    gamma: float = 0.5
    plateau_patience: int = 3
    plateau_factor: float = 0.5
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        if self.optimizer not in ("adamw", "sgd"):
            raise ConfigError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        if self.scheduler not in ("constant", "warmup_cosine", "step", "plateau"):
            raise ConfigError(
                "scheduler must be one of constant, warmup_cosine, step, plateau, "
                f"got {self.scheduler!r}"
            )
        if self.lr <= 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if self.grad_clip < 0:
            raise ConfigError(f"grad_clip must be >= 0 (0 disables it), got {self.grad_clip}")


@dataclass(frozen=True)
class LoopConfig:
    """Epochs, batching, class balancing, early stopping and determinism."""

    epochs: int = 60
    batch_size: int = 32
    class_balance: ClassBalance = "none"
    early_stopping_patience: int = 0
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.epochs <= 0 or self.batch_size <= 0:
            raise ConfigError("epochs and batch_size must be positive")
        if self.class_balance not in ("none", "weighted_loss", "balanced_sampler"):
            raise ConfigError(
                "class_balance must be none, weighted_loss or balanced_sampler, "
                f"got {self.class_balance!r}"
            )
        if self.early_stopping_patience < 0 or self.num_workers < 0:
            raise ConfigError("early_stopping_patience and num_workers must be >= 0")


@dataclass(frozen=True)
class FaultConfig:
    """Deliberate training faults, all off by default: the fault zoo uses them to reproduce
    each cause of stagnant validation for real (see :mod:`mlflow_audiodiag.zoo`).

    ``shuffle_labels``: the training labels are permuted once against their clips, as when a
    label column is shuffled separately from the file column (labels no longer match the
    audio, but a model can still memorise them).
    ``freeze``: comma-separated parameter-name prefixes whose ``requires_grad`` is turned off.
    ``skip_optimizer_step``: ``backward()`` runs but ``optimizer.step()`` never does.
    ``eval_feature_offset``: added to every val/test feature before normalization, as if those
    clips came through a different front end (for log-mel, +1 is a 4.3 dB gain).
    ``attention_init_scale``: multiplies the initial query/key projection weights.
    ``embedding_saturation``: > 0 puts ``sigmoid(x + saturation)`` on the token embeddings
    (patches plus positions), a squashing step whose bias drives it deep into saturation.
    ``labels_to_class0``: share of training labels turned into class 0, as when a label
    lookup silently falls back to the first class (e.g. on a case mismatch).
    ``fail_rank``: the (DDP) rank that raises at its first training step; -1: none.
    ``mixup_weight``: a fixed mixup weight instead of a Beta draw; outside [0, 1] the mixed
    targets are no probability distribution and the loss can go below zero.
    """

    shuffle_labels: bool = False
    freeze: str = ""
    skip_optimizer_step: bool = False
    eval_feature_offset: float = 0.0
    attention_init_scale: float = 1.0
    embedding_saturation: float = 0.0
    labels_to_class0: float = 0.0
    fail_rank: int = -1
    mixup_weight: float | None = None

    def __post_init__(self) -> None:
        if self.attention_init_scale <= 0:
            raise ConfigError(f"attention_init_scale must be > 0, got {self.attention_init_scale}")
        if not 0.0 <= self.labels_to_class0 <= 1.0:
            raise ConfigError(f"labels_to_class0 must be in [0, 1], got {self.labels_to_class0}")
        if self.embedding_saturation < 0:
            raise ConfigError("embedding_saturation must be >= 0")

    @property
    def active(self) -> bool:
        return self != FaultConfig()


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs; every leaf is logged as an MLflow param."""

    data: DataConfig = field(default_factory=DataConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    faults: FaultConfig = field(default_factory=FaultConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def to_params(self) -> dict[str, str]:
        """Flat ``section.field`` -> string, the form MLflow params take."""
        return {
            f"{section}.{name}": _param_str(value)
            for section, values in self.to_dict().items()
            for name, value in values.items()
        }

    @classmethod
    def from_flat(cls, values: dict[str, Any]) -> TrainConfig:
        """Builds a config from flat option names (see :func:`option_fields`); others default."""
        unknown = set(values) - {opt.name for opt in option_fields()}
        if unknown:
            raise ConfigError(f"unknown training option(s): {', '.join(sorted(unknown))}")
        sections: dict[str, dict[str, Any]] = {}
        for opt in option_fields():
            if opt.name in values:
                sections.setdefault(opt.section, {})[opt.field] = values[opt.name]
        kwargs = {}
        for section_field in dataclasses.fields(cls):
            section_type = _SECTION_TYPES[section_field.name]
            kwargs[section_field.name] = section_type(**sections.get(section_field.name, {}))
        return cls(**kwargs)


_SECTION_TYPES: dict[str, type] = {
    "data": DataConfig,
    "features": FeatureConfig,
    "augment": AugmentConfig,
    "model": ModelConfig,
    "optim": OptimConfig,
    "loop": LoopConfig,
    "monitor": MonitorConfig,
    "faults": FaultConfig,
}

# Flat option names that would otherwise be ambiguous or unclear on the command line.
_RENAMED = {
    ("features", "kind"): "feature_kind",
    ("monitor", "every_n_steps"): "monitor_every_n_steps",
    ("monitor", "buffer_steps"): "monitor_buffer_steps",
    ("monitor", "flush_interval_s"): "monitor_flush_interval_s",
}


# What each flat option means, in the user's words (the CLI's help and the MLproject's
# parameters read this; the choices of Literal options are added from their types).
OPTION_HELP: dict[str, str] = {
    "source": "your audio: a manifest CSV, a folder per class or a Speech Commands tree",
    "val_fraction": "share of each class held out for validation when no split is given",
    "test_fraction": "share of each class held out for testing when no split is given",
    "split_seed": "seed of that split",
    "on_bad_file": "what to do with an unreadable, empty or non-finite clip",
    "normalization": "feature standardization, fitted on the training split",
    "synthetic_classes": "embedded data: number of classes (2-8)",
    "synthetic_clips_per_class": "embedded data: clips of the largest class",
    "synthetic_imbalance_ratio": "embedded data: clips of the largest / the smallest class",
    "synthetic_snr_db": "embedded data: background-noise SNR range 'low,high' in dB",
    "synthetic_seed": "embedded data: generation seed",
    "feature_kind": "log-mel spectrogram or MFCC",
    "sample_rate": "audio is resampled to this rate (Hz)",
    "clip_seconds": "clips are center-cropped or zero-padded to this length",
    "n_fft": "FFT size of the spectrogram",
    "hop_length": "samples between spectrogram frames",
    "n_mels": "mel bands",
    "n_mfcc": "MFCC coefficients (feature_kind=mfcc)",
    "f_min": "lowest frequency of the mel filters (Hz)",
    "f_max": "highest frequency of the mel filters (Hz; none: half the sample rate)",
    "top_db": "dynamic range kept per clip (dB)",
    "noise_p": "probability of adding background noise to a training clip",
    "noise_snr_db": "SNR range 'low,high' of that noise in dB",
    "gain_p": "probability of a random gain",
    "gain_db": "gain range 'low,high' in dB",
    "shift_p": "probability of a random time shift",
    "shift_max_s": "largest time shift in seconds",
    "stretch_p": "probability of a time-stretch",
    "stretch_rate": "time-stretch rate range 'low,high'",
    "pitch_p": "probability of a pitch shift",
    "pitch_semitones": "pitch-shift range 'low,high' in semitones",
    "specaug_p": "probability of SpecAugment masks on a training batch",
    "freq_mask_param": "largest SpecAugment frequency mask (bins)",
    "time_mask_param": "largest SpecAugment time mask (frames)",
    "n_freq_masks": "SpecAugment frequency masks per clip",
    "n_time_masks": "SpecAugment time masks per clip",
    "mixup_alpha": "mixup Beta(alpha, alpha) strength; 0 turns mixup off",
    "resampled_variants": "precomputed stretch/pitch variants per clip (0: on the fly)",
    "dim": "transformer width",
    "heads": "attention heads per layer (dim must be divisible by heads)",
    "layers": "transformer encoder layers",
    "mlp_ratio": "feed-forward width / dim",
    "dropout": "dropout rate",
    "patch_bins": "patch height in mel bins (0: full-height patches)",
    "patch_frames": "patch width in frames",
    "norm_position": "layer norm before each encoder block (pre) or after its residual (post)",
    "optimizer": "the optimizer",
    "lr": "peak learning rate",
    "weight_decay": "weight decay",
    "momentum": "SGD momentum",
    "scheduler": "learning-rate schedule",
    "warmup_epochs": "warmup epochs of warmup_cosine",
    "step_size": "epochs between LR drops of the step schedule",
    "gamma": "LR factor of each drop of the step schedule",
    "plateau_patience": "epochs without a better val loss before the plateau schedule cuts the LR",
    "plateau_factor": "LR factor of each plateau cut",
    "grad_clip": "gradient-norm clipping threshold (0: no clipping)",
    "epochs": "training epochs",
    "batch_size": "clips per batch (per process under DDP)",
    "class_balance": "counter class imbalance with loss weights or a balanced sampler",
    "early_stopping_patience": "stop after this many epochs without improvement (0: never)",
    "seed": "seed of initialization, shuffling and augmentation",
    "num_workers": "DataLoader worker processes",
    "device": "auto, cpu, cuda or cuda:N",
    "progress": "show progress bars",
    "monitor_every_n_steps": "record the step signals every n-th optimizer step",
    "monitor_buffer_steps": "steps of gradient statistics kept on the device between transfers",
    "track_updates": "record update-to-weight ratios",
    "update_interval": "measure update ratios every n-th recorded step",
    "attention_probe_size": "validation clips on which attention entropy is measured",
    "live_check": "check for stagnation at every epoch end (tag audiodiag.live)",
    "stop_on_stagnation": "stop training once stagnation is confirmed",
    "monitor_flush_interval_s": "seconds between deliveries of recorded points to MLflow",
}
# Deliberate faults for the fault zoo: accepted, but not listed among the user's options.
HIDDEN_SECTIONS = frozenset({"faults"})


@dataclass(frozen=True)
class OptionField:
    """One leaf of :class:`TrainConfig` as a flat command-line / MLproject option."""

    name: str
    section: str
    field: str
    default: Any
    type_hint: str
    choices: tuple[str, ...] = ()


def option_fields() -> list[OptionField]:
    """Every configurable leaf with its flat option name (unique across sections)."""
    options = []
    for section, section_type in _SECTION_TYPES.items():
        defaults = section_type()
        hints = typing.get_type_hints(section_type)
        for f in dataclasses.fields(section_type):
            name = _RENAMED.get((section, f.name), f.name)
            hint = hints[f.name]
            choices = typing.get_args(hint) if typing.get_origin(hint) is Literal else ()
            options.append(
                OptionField(
                    name,
                    section,
                    f.name,
                    getattr(defaults, f.name),
                    str(f.type),
                    tuple(str(c) for c in choices),
                )
            )
    names = [o.name for o in options]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:  # pragma: no cover - guards future edits of the dataclasses
        raise RuntimeError(f"ambiguous option names: {sorted(duplicates)}")
    return options


def _param_str(value: Any) -> str:
    if isinstance(value, tuple | list):
        return ",".join(str(v) for v in value)
    return str(value)
