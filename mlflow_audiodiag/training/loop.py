"""The epoch loop: batches to features, forward/backward, validation, best-model tracking."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mlflow_audiodiag.features.augment import SpecAugment, mixup
from mlflow_audiodiag.features.extractor import FeatureExtractor
from mlflow_audiodiag.features.normalization import FeatureNormalizer
from mlflow_audiodiag.metrics import ClassificationScores, classification_scores
from mlflow_audiodiag.monitoring.distributed import (
    DistContext,
    broadcast_from_main,
    gather_objects,
)
from mlflow_audiodiag.monitoring.monitor import TrainingMonitor
from mlflow_audiodiag.training.config import TrainConfig
from mlflow_audiodiag.training.optim import LRSchedule, build_optimizer


@dataclass(frozen=True)
class SplitResult:
    """Loss, scores and raw predictions of one pass over a split."""

    loss: float
    scores: ClassificationScores
    targets: np.ndarray
    predictions: np.ndarray
    logits: np.ndarray | None = None

    def metrics(self) -> dict[str, float]:
        return {"loss": self.loss, **self.scores.as_dict()}


@dataclass(frozen=True)
class EpochResult:
    epoch: int
    train: SplitResult
    val: SplitResult
    lr: float
    seconds: float


@dataclass
class FitResult:
    best_epoch: int
    best_val: SplitResult
    history: list[EpochResult] = field(default_factory=list)
    stopped_early: bool = False


class Trainer:
    """Trains an :class:`AudioTransformer` on batches of cached features or raw waveforms.

    Waveform batches (when waveform augmentation is on) go through ``extractor`` first; every
    batch is normalized with the training-fitted ``normalizer``; SpecAugment and mixup apply to
    training batches only.
    """

    def __init__(
        self,
        model: nn.Module,
        extractor: FeatureExtractor,
        normalizer: FeatureNormalizer,
        config: TrainConfig,
        n_classes: int,
        class_weights: torch.Tensor | None = None,
        device: torch.device | str = "cpu",
        dist_ctx: DistContext | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.dist = dist_ctx or DistContext()
        self.module = model.to(self.device)  # the model itself, also under DDP
        self.model: nn.Module = self.module
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(
                self.module, device_ids=ids, broadcast_buffers=False
            )
        self.extractor = extractor.to(self.device)
        self.normalizer = normalizer.to(self.device)
        self.spec_augment = SpecAugment(config.augment).to(self.device)
        self.config = config
        self.n_classes = n_classes
        self.class_weights = None if class_weights is None else class_weights.to(self.device)
        self.optimizer = build_optimizer(self.module, config.optim)
        self.generator = torch.Generator().manual_seed(config.loop.seed)
        self.monitor: TrainingMonitor | None = None

    def attach(self, monitor: TrainingMonitor) -> None:
        """Records gradient, update, learning-rate and loss signals through ``monitor``."""
        self.monitor = monitor

    def to_features(self, inputs: torch.Tensor) -> torch.Tensor:
        """Normalized features for a batch of waveforms ``[B, S]`` or features ``[B, F, T]``."""
        inputs = inputs.to(self.device)
        if inputs.dim() == 2:
            inputs = self.extractor(inputs)
        return self.normalizer(inputs)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, targets, weight=self.class_weights)

    def train_step(
        self, inputs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One optimizer step on a training batch; returns the loss, logits and targets (on
        the device). The attached monitor records the step."""
        monitor = self.monitor
        if self.config.faults.fail_rank == self.dist.rank:
            raise RuntimeError(f"deliberate failure on rank {self.dist.rank} (faults.fail_rank)")
        targets = targets.to(self.device)
        features = self.spec_augment(self.to_features(inputs), generator=self.generator)
        alpha = self.config.augment.mixup_alpha
        features, targets_a, targets_b, lam = mixup(
            features, targets, alpha, self.generator, self.config.faults.mixup_weight
        )
        logits = self.model(features)
        loss = lam * self.loss(logits, targets_a) + (1.0 - lam) * self.loss(logits, targets_b)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if monitor is not None:
            monitor.after_backward(loss)
        if self.config.optim.grad_clip > 0:
            # The monitor reuses the gradient norms it just recorded. Under DDP only rank 0
            # has a monitor, and every rank must clip with bit-identical arithmetic.
            if monitor is not None and not self.dist.enabled:
                monitor.clip_grad_norm_(self.config.optim.grad_clip)
            else:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.config.optim.grad_clip)
                if monitor is not None:
                    monitor.clip_max_norm = self.config.optim.grad_clip
        if not self.config.faults.skip_optimizer_step:
            self.optimizer.step()
        if monitor is not None:
            monitor.after_step()
        return loss, logits, targets

    def train_epoch(
        self, loader: DataLoader, schedule: LRSchedule, epoch: int, progress: bool
    ) -> SplitResult:
        self.model.train()
        self.spec_augment.train()
        dataset = loader.dataset
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        if hasattr(loader.sampler, "set_epoch"):  # DistributedSampler: a new shuffle per epoch
            loader.sampler.set_epoch(epoch)
        total_loss, seen = torch.zeros((), device=self.device), 0
        targets_all, predictions_all = [], []
        shown = progress and self.dist.is_main  # one progress bar per job
        bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=not shown, unit="batch")
        for inputs, targets in bar:
            loss, logits, targets = self.train_step(inputs, targets)
            schedule.step_batch()
            batch = targets.shape[0]
            total_loss += loss.detach() * batch
            seen += batch
            targets_all.append(targets)
            predictions_all.append(logits.detach().argmax(dim=1))
        return self._gathered(total_loss.item(), seen, targets_all, predictions_all)

    @torch.no_grad()
    def evaluate(self, loader: DataLoader) -> SplitResult:
        """Loss and scores on ``loader``'s split; under DDP each rank passes its shard and
        every rank gets the result over all of them."""
        self.module.eval()
        total_loss, seen = torch.zeros((), device=self.device), 0
        targets_all, logits_all = [], []
        for inputs, targets in loader:
            targets = targets.to(self.device)
            logits = self.module(self.to_features(inputs))
            total_loss += F.cross_entropy(logits, targets, reduction="sum")
            seen += targets.shape[0]
            targets_all.append(targets)
            logits_all.append(logits)
        logits_np = torch.cat(logits_all).float().cpu().numpy() if logits_all else None
        if logits_np is None:
            logits_np = np.zeros((0, self.n_classes), dtype=np.float32)
        logits_np = np.concatenate(gather_objects(logits_np, self.dist))
        predictions = [torch.from_numpy(logits_np.argmax(axis=1))]
        return self._gathered(total_loss.item(), seen, targets_all, predictions, logits_np)

    def _gathered(
        self,
        loss_sum: float,
        seen: int,
        targets: list[torch.Tensor],
        predictions: list[torch.Tensor],
        logits: np.ndarray | None = None,
    ) -> SplitResult:
        """The result over every rank's batches (the local ones without DDP)."""
        local = torch.cat(targets).cpu() if targets else torch.zeros(0, dtype=torch.long)
        if not self.dist.enabled:
            return self._result(loss_sum / seen, [local], predictions, logits)
        parts = gather_objects((loss_sum, seen, local), self.dist)
        total = sum(part[1] for part in parts)
        all_targets = [part[2] for part in parts]
        if logits is None:  # training: gather the predictions too
            local_pred = torch.cat(predictions).cpu()
            predictions = gather_objects(local_pred, self.dist)
        return self._result(sum(p[0] for p in parts) / total, all_targets, predictions, logits)

    def fit(
        self,
        train_loader: DataLoader,
        val_loader: DataLoader,
        on_epoch_end: Callable[[EpochResult], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> FitResult:
        """Runs up to ``loop.epochs`` epochs and restores the best weights (by val accuracy,
        ties broken by val loss). Stops early after ``early_stopping_patience`` epochs in which
        neither val accuracy nor val loss improved (0 disables early stopping), or when
        ``should_stop()`` says so after an epoch (e.g. confirmed stagnation)."""
        loop = self.config.loop
        schedule = LRSchedule(self.optimizer, self.config.optim, len(train_loader), loop.epochs)
        best: FitResult | None = None
        best_state: dict[str, torch.Tensor] = {}
        best_loss = float("inf")
        stale = 0
        shown = loop.progress and self.dist.is_main
        epochs = tqdm(range(1, loop.epochs + 1), desc="training", disable=not shown)
        for epoch in epochs:
            start = time.perf_counter()
            lr = self.optimizer.param_groups[0]["lr"]
            train = self.train_epoch(train_loader, schedule, epoch, loop.progress)
            val = self.evaluate(val_loader)
            schedule.step_epoch(val.loss)
            result = EpochResult(epoch, train, val, lr, time.perf_counter() - start)
            epochs.set_postfix(train_loss=f"{train.loss:.3f}", val_acc=f"{val.scores.accuracy:.3f}")
            if on_epoch_end is not None:
                on_epoch_end(result)
            improved_acc = best is None or _better(val, best.best_val)
            improved_loss = val.loss < best_loss
            best_loss = min(best_loss, val.loss)
            if best is None:
                best = FitResult(epoch, val)
            best.history.append(result)
            if improved_acc:
                best.best_epoch, best.best_val = epoch, val
                best_state = copy.deepcopy(self.model.state_dict())
            stale = 0 if (improved_acc or improved_loss) else stale + 1
            patience_spent = loop.early_stopping_patience and stale >= loop.early_stopping_patience
            # Rank 0 decides (its live check); every rank stops at the same epoch.
            stop = broadcast_from_main(should_stop is not None and should_stop(), self.dist)
            if patience_spent or stop:
                best.stopped_early = True
                break
        assert best is not None
        self.model.load_state_dict(best_state)
        return best

    def _result(
        self,
        loss: float,
        targets: list[torch.Tensor],
        predictions: list[torch.Tensor],
        logits: np.ndarray | None = None,
    ) -> SplitResult:
        targets_np = torch.cat(targets).cpu().numpy()
        predictions_np = torch.cat(predictions).cpu().numpy()
        scores = classification_scores(targets_np, predictions_np, self.n_classes)
        return SplitResult(loss, scores, targets_np, predictions_np, logits)


def _better(candidate: SplitResult, incumbent: SplitResult) -> bool:
    if candidate.scores.accuracy != incumbent.scores.accuracy:
        return candidate.scores.accuracy > incumbent.scores.accuracy
    return candidate.loss < incumbent.loss
