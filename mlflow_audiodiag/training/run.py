"""One training run under MLflow: data, features, model, fit, evaluation and logging."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Subset

from mlflow_audiodiag import __version__, schema
from mlflow_audiodiag.data.synthetic import default_cache_root
from mlflow_audiodiag.diagnosis.live import LiveStagnationCheck
from mlflow_audiodiag.diagnosis.writeback import diagnose_run
from mlflow_audiodiag.errors import ConfigError, DataError
from mlflow_audiodiag.features.augment import WaveformAugmenter
from mlflow_audiodiag.features.extractor import FeatureExtractor
from mlflow_audiodiag.features.normalization import FeatureNormalizer, fit_normalization
from mlflow_audiodiag.features.store import FeatureStore, SplitFeatures, build_feature_store
from mlflow_audiodiag.features.variants import resampled_variants
from mlflow_audiodiag.model.transformer import AudioTransformer
from mlflow_audiodiag.monitoring.distributed import (
    DistContext,
    barrier,
    concat_from_ranks,
    merge_from_ranks,
    shard_indices,
)
from mlflow_audiodiag.monitoring.monitor import TrainingMonitor
from mlflow_audiodiag.monitoring.statistics import FeatureStatsAccumulator
from mlflow_audiodiag.training import artifacts
from mlflow_audiodiag.training.config import TrainConfig
from mlflow_audiodiag.training.dataset_source import resolve_clip_table
from mlflow_audiodiag.training.datasets import (
    AugmentedWaveformDataset,
    CachedFeatureDataset,
    balanced_sampler,
    class_counts,
    make_loader,
)
from mlflow_audiodiag.training.distributed import (
    RankFailure,
    device_for,
    init_distributed,
    peer_failed,
    shutdown,
)
from mlflow_audiodiag.training.faults import apply_data_faults, apply_model_faults
from mlflow_audiodiag.training.loop import EpochResult, SplitResult, Trainer
from mlflow_audiodiag.training.metrics import majority_fraction

logger = logging.getLogger(__name__)

_NORMALIZATION_CHUNK = 256
_PROBE_CLIPS = 16


@dataclass(frozen=True)
class TrainResult:
    """What a finished run reports back to the caller."""

    run_id: str
    experiment_id: str
    best_epoch: int
    best_val_accuracy: float
    test_accuracy: float | None
    classes: list[str]
    verdict: str | None = None
    primary_cause: str | None = None
    rank: int = 0  # under DDP only rank 0 has a run (the others report empty ids)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _unseeded_run_name() -> str:
    """A fresh MLflow run name. MLflow draws names from ``random``, which the run's seed has
    already fixed (every run would get the same name); the seeded state is kept as it was."""
    from mlflow.utils.name_utils import _generate_random_name

    state = random.getstate()
    random.seed()  # from the operating system's entropy
    try:
        return _generate_random_name()
    finally:
        random.setstate(state)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def train(config: TrainConfig, cache_root: Path | None = None) -> TrainResult:
    """Trains with ``config`` inside the active MLflow run (or a new one) and logs everything.

    When launched by ``mlflow run``, the run that MLflow created (``MLFLOW_RUN_ID``) is used.
    The run ends FAILED if anything raises, KILLED on Ctrl-C.
    """
    ctx = init_distributed(config.loop.device)
    try:
        return _train(config, cache_root, ctx)
    except RuntimeError as error:
        if ctx.enabled and peer_failed(error):
            raise RankFailure(
                f"rank {ctx.rank}: another rank of this job failed or left ({error}); its own "
                "error is printed above"
                + ("; the MLflow run is marked FAILED" if ctx.is_main else "")
            ) from error
        raise
    finally:
        shutdown()


def _train(config: TrainConfig, cache_root: Path | None, ctx: DistContext) -> TrainResult:
    seed_everything(config.loop.seed)
    cache_root = Path(cache_root) if cache_root else default_cache_root()
    if not ctx.is_main:
        barrier(ctx)  # rank 0 generates and caches the data first
    table, source = resolve_clip_table(config.data, config.features, config.loop.progress)
    store = build_feature_store(
        table,
        config.features,
        cache_root,
        on_bad_file=config.data.on_bad_file,
        waveform_splits=("train",) if config.augment.uses_waveform else (),
        progress=config.loop.progress and ctx.is_main,
    )
    if ctx.is_main:
        barrier(ctx)
    store = apply_data_faults(store, config.faults, config.loop.seed)
    train_split = store.split(schema.SPLIT_TRAIN)
    val_split = store.split(schema.SPLIT_VAL)
    if val_split is None:
        raise DataError(
            "the dataset has no validation clips; give some clips split=val or set val_fraction > 0"
        )
    stats = fit_normalization(
        _feature_chunks(train_split), config.data.normalization
    )  # training split only: val/test never reach the fit
    n_classes = len(store.classes)
    splits = (train_split, val_split, n_classes)
    if not ctx.is_main:  # other DDP ranks train and evaluate; they never touch MLflow
        result = _train_logged(config, store, source, stats, *splits, ctx)
        return TrainResult("", "", rank=ctx.rank, **result)

    active = mlflow.active_run()
    run = active or mlflow.start_run(run_name=_unseeded_run_name())
    try:
        result = _train_logged(config, store, source, stats, *splits, ctx)
    except KeyboardInterrupt:
        if active is None:
            mlflow.end_run(status="KILLED")
        raise
    except BaseException:
        if active is None:
            mlflow.end_run(status="FAILED")
        raise
    verdict, cause = _diagnose(run.info.run_id)
    if active is None:
        mlflow.end_run()
    return TrainResult(
        run_id=run.info.run_id,
        experiment_id=run.info.experiment_id,
        verdict=verdict,
        primary_cause=cause,
        **result,
    )


def _diagnose(run_id: str) -> tuple[str | None, str | None]:
    """Diagnoses the finished training and writes the result to the run; a failure here is
    reported but never costs the trained run."""
    try:
        diagnosis = diagnose_run(run_id)
    except Exception as error:
        logger.error("could not diagnose run %s: %s", run_id, error)
        return None, None
    return diagnosis.verdict, diagnosis.primary_cause


def _train_logged(config, store, source, stats, train_split, val_split, n_classes, ctx) -> dict:
    """Training and evaluation on every rank; logging (and the monitor) on rank 0 only."""
    device = device_for(ctx, resolve_device(config.loop.device))
    if ctx.is_main:
        mlflow.log_params(config.to_params())
        mlflow.set_tags(
            {
                schema.TAG_DATA_SOURCE: source,
                schema.TAG_PACKAGE_VERSION: __version__,
                schema.TAG_WORLD_SIZE: str(ctx.world_size),
            }
        )
        artifacts.log_dataset_summary(config, store, stats)

    extractor = FeatureExtractor(config.features)
    normalizer = FeatureNormalizer(stats)
    model = AudioTransformer(
        config.features.n_bins, config.features.n_frames, n_classes, config.model
    )
    apply_model_faults(model, config.faults)
    counts = class_counts(train_split.labels, n_classes)
    class_weights = None
    if config.loop.class_balance == "weighted_loss":
        class_weights = torch.as_tensor(counts.sum() / (n_classes * counts), dtype=torch.float32)
    trainer = Trainer(
        model, extractor, normalizer, config, n_classes, class_weights, device, dist_ctx=ctx
    )
    monitor = None
    if ctx.is_main:  # gradients are synchronized across ranks: rank 0 sees the job's
        monitor = TrainingMonitor(trainer.module, trainer.optimizer, config=config.monitor)
        trainer.attach(monitor)
    try:
        return _fit_and_evaluate(config, store, trainer, monitor, train_split, val_split, ctx)
    finally:
        if monitor is not None and not monitor.close():
            logger.error("some monitor points were not delivered; see the spool file above")


def build_train_loader(
    config: TrainConfig,
    store: FeatureStore,
    train_split: SplitFeatures,
    n_classes: int,
    ctx: DistContext | None = None,
) -> DataLoader:
    """The training batches: waveforms augmented on the fly (stretch and pitch drawn from
    cached precomputed variants) when waveform augmentation is on, else cached features.
    Under DDP a ``DistributedSampler`` gives each rank its shard."""
    ctx = ctx or DistContext()
    loop = config.loop
    if config.augment.uses_waveform:
        augmenter = WaveformAugmenter(config.augment, config.features.sample_rate)
        variants = None
        if config.augment.uses_resampling and config.augment.resampled_variants > 0:
            variants = resampled_variants(
                train_split.waveforms, augmenter, store.cache_dir, loop.seed, loop.progress
            )
        train_dataset = AugmentedWaveformDataset(train_split, augmenter, loop.seed, variants)
    else:
        train_dataset = CachedFeatureDataset(train_split)
    sampler = None
    if loop.class_balance == "balanced_sampler":
        if ctx.enabled:
            raise ConfigError(
                "class_balance=balanced_sampler does not shard across DDP ranks; "
                "use class_balance=weighted_loss with torchrun"
            )
        sampler = balanced_sampler(train_split.labels, n_classes, loop.seed)
    elif ctx.enabled:
        sampler = DistributedSampler(
            train_dataset, ctx.world_size, ctx.rank, shuffle=True, seed=loop.seed
        )
    return make_loader(
        train_dataset,
        loop.batch_size,
        shuffle=True,
        seed=loop.seed,
        num_workers=loop.num_workers,
        sampler=sampler,
    )


def _fit_and_evaluate(config, store, trainer, monitor, train_split, val_split, ctx) -> dict:
    n_classes = len(store.classes)
    _log_dataset_signals(monitor, store, trainer.normalizer, ctx)
    test_split = store.split(schema.SPLIT_TEST)
    train_loader = build_train_loader(config, store, train_split, n_classes, ctx)
    val_loader = _eval_loader(val_split, config, ctx)
    if monitor is None:  # another DDP rank: the same training and evaluation, no logging
        fit = trainer.fit(train_loader, val_loader)
        if test_split is not None:
            trainer.evaluate(_eval_loader(test_split, config, ctx))
        return _result_fields(fit, None, store)
    monitor.log_metrics(
        {
            schema.METRIC_MAJORITY_BASELINE: majority_fraction(
                val_split.labels, train_split.labels, n_classes
            ),
            schema.METRIC_SKIPPED_FILES: len(store.skipped),
            schema.METRIC_CROPPED_CLIPS: store.cropped_clips,
            **{
                f"{schema.METRIC_CLIPS_PREFIX}{name}": len(split)
                for name, split in store.splits.items()
            },
        },
        step=0,
    )
    monitor.set_attention_probe(
        trainer.normalizer(torch.from_numpy(np.array(val_split.features[:_PROBE_CLIPS])))
    )

    def on_epoch_end(result: EpochResult) -> None:
        monitor.end_epoch(
            result.epoch,
            result.val.targets,
            result.val.logits,
            classes=store.classes,
            metrics=_epoch_metrics(result),
        )

    live = None
    if config.monitor.live_check:
        live = LiveStagnationCheck(monitor.run_id, stop=config.monitor.stop_on_stagnation)
        monitor.add_epoch_hook(live)
    fit = trainer.fit(
        train_loader,
        val_loader,
        on_epoch_end=on_epoch_end,
        should_stop=(lambda: live.should_stop) if live is not None else None,
    )
    summary = {
        schema.METRIC_BEST_EPOCH: fit.best_epoch,
        schema.METRIC_BEST_VAL_ACCURACY: fit.best_val.scores.accuracy,
        schema.METRIC_STOPPED_EARLY: float(fit.stopped_early),
    }
    final: SplitResult = fit.best_val
    test_accuracy = None
    if test_split is not None:
        final = trainer.evaluate(_eval_loader(test_split, config, ctx))
        summary.update(_prefixed(schema.SPLIT_TEST, final.metrics()))
        test_accuracy = final.scores.accuracy
    monitor.log_metrics(summary, step=fit.best_epoch)
    artifacts.log_confusion_matrix(
        final, store.classes, schema.SPLIT_TEST if test_split is not None else schema.SPLIT_VAL
    )
    artifacts.log_model(
        trainer.extractor, trainer.normalizer, trainer.module, store.classes, config.features
    )
    return _result_fields(fit, test_accuracy, store)


def _result_fields(fit, test_accuracy: float | None, store: FeatureStore) -> dict:
    return {
        "best_epoch": fit.best_epoch,
        "best_val_accuracy": fit.best_val.scores.accuracy,
        "test_accuracy": test_accuracy,
        "classes": store.classes,
    }


def _log_dataset_signals(
    monitor: TrainingMonitor | None,
    store: FeatureStore,
    normalizer: FeatureNormalizer,
    ctx: DistContext,
) -> None:
    """Label histograms and feature statistics of every split, before and after
    normalization (streamed in chunks). Under DDP each rank accumulates its shard and rank 0
    logs the merged statistics, the same as one process over the whole split."""
    for name, split in store.splits.items():
        shard = shard_indices(len(split), ctx)
        raw, normalized = FeatureStatsAccumulator(), FeatureStatsAccumulator()
        for chunk in _feature_chunks(split, shard):
            raw.update(chunk)
            normalized.update(normalizer(chunk))
        labels = concat_from_ranks(split.labels[shard], ctx)
        levels = concat_from_ranks(split.levels[shard], ctx)
        raw, normalized = merge_from_ranks(raw, ctx), merge_from_ranks(normalized, ctx)
        if monitor is None:
            continue
        classes = store.classes
        monitor.log_dataset(name, labels, classes, accumulated=raw, stage="raw", levels=levels)
        monitor.log_dataset(name, labels, classes, accumulated=normalized, stage="normalized")


def _eval_loader(split: SplitFeatures, config: TrainConfig, ctx: DistContext) -> DataLoader:
    """The split's cached features; under DDP this rank's shard (each clip on one rank)."""
    dataset = CachedFeatureDataset(split)
    if ctx.enabled:
        dataset = Subset(dataset, shard_indices(len(split), ctx).tolist())
    return make_loader(dataset, config.loop.batch_size * 2, shuffle=False, seed=config.loop.seed)


def _epoch_metrics(result: EpochResult) -> dict[str, float]:
    return {
        **_prefixed(schema.SPLIT_TRAIN, result.train.metrics()),
        **_prefixed(schema.SPLIT_VAL, result.val.metrics()),
        schema.METRIC_LR: result.lr,
        schema.METRIC_EPOCH_SECONDS: result.seconds,
    }


def _prefixed(split: str, metrics: dict[str, float]) -> dict[str, float]:
    return {schema.split_metric(split, name): value for name, value in metrics.items()}


def _feature_chunks(split: SplitFeatures, indices: np.ndarray | None = None):
    """The split's features (or those at ``indices``, in order) in chunks, as tensors."""
    if indices is None:
        indices = np.arange(len(split))
    for start in range(0, len(indices), _NORMALIZATION_CHUNK):
        rows = indices[start : start + _NORMALIZATION_CHUNK]
        yield torch.from_numpy(np.asarray(split.features[rows]))
