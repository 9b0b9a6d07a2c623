"""What the monitor learns from hooks on the model, the loss function and autograd.

:class:`ForwardOrder` records once in which order the forward pass reaches each module.
:class:`BackwardEnd` calls back when a backward pass has finished accumulating gradients, so
that gradient norms are read before any clipping. :class:`ModelTaps` watches the model's
inputs and outputs: statistics of the first batches of training and validation inputs, a fixed
validation batch for the attention probe, and per training step the loss, the accuracy and the
targets, from whichever source the loop offers (a watched loss function, the framework's batch,
a loss the model returns, or, for a cross-entropy loss, the gradient of the logits).

Every hook only stores device tensors; nothing here waits for the device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from mlflow_audiodiag.monitoring.statistics import FeatureStatsAccumulator

Batch = tuple[tuple[Any, ...], dict[str, Any]]
_LABEL_KEYS = ("labels", "label", "targets", "target", "y")
_PROBE_ROWS = 16


class ForwardOrder:
    """Records the index of each module's first call in the first forward pass, then removes
    its hooks and hands the result to ``on_done``."""

    def __init__(self, model: nn.Module, on_done: Callable[[dict[str, int]], None]) -> None:
        self.first_call: dict[str, int] = {}
        self._on_done = on_done
        self._handles = [
            module.register_forward_pre_hook(self._seen(name))
            for name, module in model.named_modules()
        ]
        self._handles.append(model.register_forward_hook(self._finished))

    def _seen(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any) -> None:
            self.first_call.setdefault(name, len(self.first_call))

        return hook

    def _finished(self, module: nn.Module, args: Any, output: Any) -> None:
        self.remove()
        self._on_done(dict(self.first_call))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


class BackwardEnd:
    """Calls ``callback()`` once at the end of every backward pass that reaches ``params``."""

    def __init__(self, params: list[nn.Parameter], callback: Callable[[], None]) -> None:
        self._callback = callback
        self._queued = False
        self._handles = [p.register_post_accumulate_grad_hook(self._hook) for p in params]

    def _hook(self, param: torch.Tensor) -> None:
        if not self._queued:
            self._queued = True
            torch.autograd.Variable._execution_engine.queue_callback(self._done)

    def _done(self) -> None:
        self._queued = False
        self._callback()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


@dataclass
class StepOutputs:
    """The training-batch outputs of one optimizer step, as device tensors (or ``None``)."""

    loss: torch.Tensor | None = None
    correct: torch.Tensor | None = None
    count: int = 0
    invalid_rows: torch.Tensor | None = None
    class_counts: torch.Tensor | None = None


@dataclass
class _Pending:
    losses: list[torch.Tensor] = field(default_factory=list)
    logits: list[torch.Tensor] = field(default_factory=list)
    targets: list[torch.Tensor] = field(default_factory=list)
    grads: list[torch.Tensor | None] = field(default_factory=list)
    model_losses: list[torch.Tensor] = field(default_factory=list)


class ModelTaps:
    """Hooks on the model (and optionally its loss function) that gather training evidence.

    Args:
        model: the model being trained.
        loss_fn: a loss module whose calls give the step's loss and targets.
        input_batches: how many training and how many validation batches feed the input
            statistics.
        derive_from_gradient: when no loss or targets are seen otherwise, read the targets of a
            cross-entropy loss from the gradient of the logits (its one negative entry per row).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: nn.Module | None = None,
        input_batches: int = 32,
        derive_from_gradient: bool = True,
    ) -> None:
        self.model = model
        self.input_batches = input_batches
        self.derive_from_gradient = derive_from_gradient
        self.inputs: dict[str, FeatureStatsAccumulator] = {}
        self._input_batches: dict[str, int] = {}
        self.probe: Batch | None = None
        self.validating = True  # eval-mode forwards count as validation until told otherwise
        self.explicit_loss = False
        self.keep_eval = False  # keep eval-mode logits (and labels) for take_eval()
        self._train_forwards = 0
        self._eval_logits: list[torch.Tensor] = []
        self._eval_targets: list[torch.Tensor] = []
        self._pending = _Pending()
        self._handles = [
            model.register_forward_pre_hook(self._on_input, with_kwargs=True),
            model.register_forward_hook(self._on_output, with_kwargs=True),
        ]
        if loss_fn is not None:
            self._handles.append(loss_fn.register_forward_hook(self._on_loss))
        self._has_attention = any(isinstance(m, nn.MultiheadAttention) for m in model.modules())

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Forward passes of the monitor's own (an attention probe) are not the loop's."""
        self._paused = True
        try:
            yield
        finally:
            self._paused = False

    _paused = False

    # -- hooks ----------------------------------------------------------------------------
    def _on_input(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._paused:
            return
        split = "train" if module.training else ("val" if self.validating else None)
        if split is None:
            return
        if self._input_batches.get(split, 0) < self.input_batches:
            tensor = _first_float(args, kwargs)
            if tensor is not None and tensor.dim() >= 2:
                accumulator = self.inputs.setdefault(split, FeatureStatsAccumulator())
                accumulator.update(as_feature_batch(tensor.detach()))
                self._input_batches[split] = self._input_batches.get(split, 0) + 1
        if split == "val" and self.probe is None and self._has_attention:
            self.probe = _slice_batch(args, kwargs, _PROBE_ROWS)

    def _on_output(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if self._paused:
            return
        if not module.training:
            if self.keep_eval:
                logits, _ = _logits_and_loss(output)
                labels = _label_tensor(kwargs)
                if logits is not None:
                    self._eval_logits.append(logits.detach())
                if labels is not None:
                    self._eval_targets.append(labels.detach())
            return
        self._train_forwards += 1
        logits, model_loss = _logits_and_loss(output)
        if model_loss is not None:
            self._pending.model_losses.append(model_loss.detach().reshape(()))
            labels = _label_tensor(kwargs)
            if labels is not None and logits is not None:
                self._pending.targets.append(labels.detach())
        if logits is None:
            return
        self._pending.logits.append(logits.detach())
        slot = len(self._pending.grads)
        self._pending.grads.append(None)
        # The gradient is read only while no loss is known (see take_step).
        if self.derive_from_gradient and logits.requires_grad and not self.explicit_loss:
            logits.register_hook(self._grad_keeper(slot))

    def _grad_keeper(self, slot: int) -> Callable[[torch.Tensor], None]:
        pending = self._pending

        def keep(grad: torch.Tensor) -> None:
            if slot < len(pending.grads):
                pending.grads[slot] = grad.detach()

        return keep

    def _on_loss(self, module: nn.Module, args: tuple, output: Any) -> None:
        if not torch.is_grad_enabled() or not isinstance(output, torch.Tensor):
            return
        self._pending.losses.append(output.detach().reshape(-1).mean())
        if len(args) >= 2 and isinstance(args[1], torch.Tensor):
            self._pending.targets.append(args[1].detach())

    def take_forward_count(self) -> int:
        """Training-mode forward passes since the last call."""
        count, self._train_forwards = self._train_forwards, 0
        return count

    def observe_targets(self, targets: torch.Tensor) -> None:
        """The targets of the training batch just run (an adapter reads them off the batch)."""
        self._pending.targets.append(targets.detach())

    def observe_eval_targets(self, targets: torch.Tensor) -> None:
        """The targets of the evaluation batch just run (with ``keep_eval``)."""
        self._eval_targets.append(targets.detach())

    def take_eval(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The evaluation logits and targets kept since the last call, when they line up."""
        logits, self._eval_logits = self._eval_logits, []
        targets, self._eval_targets = self._eval_targets, []
        logits = [z for z in logits if z.dim() == 2]
        if not logits or not targets:
            return None
        joined = torch.cat([t.reshape(-1) for t in targets])
        stacked = torch.cat(logits)
        return (stacked, joined) if len(joined) == len(stacked) else None

    # -- per step -------------------------------------------------------------------------
    def take_step(self) -> StepOutputs:
        """What the hooks saw since the last step, reduced to device tensors."""
        pending, self._pending = self._pending, _Pending()
        out = StepOutputs()
        losses = pending.losses or pending.model_losses
        if losses and not self.explicit_loss:
            out.loss = torch.stack([loss.float() for loss in losses]).mean()
        logits = [z for z in pending.logits if z.dim() == 2 and z.shape[1] >= 2]
        if not logits:
            return out
        targets = _align(pending.targets, logits)
        if targets is None and not losses and not self.explicit_loss:
            targets, derived_loss = _from_gradients(logits, pending.grads)
            out.loss = derived_loss
        if targets is None:
            return out
        z = torch.cat(logits).float()
        hard, invalid = _hard_targets(targets, z.shape[1])
        out.correct = (z.argmax(dim=1) == hard).sum()
        out.count = int(hard.numel())
        out.invalid_rows = invalid
        out.class_counts = torch.bincount(hard, minlength=z.shape[1])
        return out

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def as_feature_batch(tensor: torch.Tensor) -> torch.Tensor:
    """A model input batch as ``[batch, bins, frames]`` for the feature statistics: a 2-D batch
    is ``[batch, features]`` (one frame), a channel axis of size 1 is dropped and further
    leading axes are folded into the bins."""
    x = tensor.float()
    if x.dim() == 2:
        return x.unsqueeze(-1)
    if x.dim() == 4 and x.shape[1] == 1:
        return x[:, 0]
    if x.dim() > 3:
        return x.reshape(x.shape[0], -1, x.shape[-1])
    return x


def _first_float(args: tuple, kwargs: Mapping[str, Any]) -> torch.Tensor | None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value
    return None


def _slice_batch(args: tuple, kwargs: dict, rows: int) -> Batch:
    def cut(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.dim() >= 1:
            return value[:rows].detach().clone()
        return value

    return tuple(cut(a) for a in args), {k: cut(v) for k, v in kwargs.items()}


def _logits_and_loss(output: Any) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The logits and (when the model computes it) the loss in a model's output."""
    if isinstance(output, torch.Tensor):
        return (output if output.is_floating_point() else None), None
    getter = output.get if isinstance(output, Mapping) else lambda k: getattr(output, k, None)
    logits, loss = getter("logits"), getter("loss")
    logits = logits if isinstance(logits, torch.Tensor) else None
    loss = loss if isinstance(loss, torch.Tensor) and loss.numel() == 1 else None
    if logits is None and isinstance(output, tuple | list) and output:
        first = output[0]
        logits = first if isinstance(first, torch.Tensor) and first.is_floating_point() else None
    return logits, loss


def _label_tensor(kwargs: Mapping[str, Any]) -> torch.Tensor | None:
    for key in _LABEL_KEYS:
        value = kwargs.get(key)
        if isinstance(value, torch.Tensor):
            return value
    return None


def _align(targets: list[torch.Tensor], logits: list[torch.Tensor]) -> torch.Tensor | None:
    """The targets matching the logits row for row, or ``None`` when they do not line up."""
    if not targets:
        return None
    joined = torch.cat([t.reshape(t.shape[0], -1) if t.dim() > 1 else t for t in targets])
    rows = sum(z.shape[0] for z in logits)
    return joined if joined.shape[0] == rows else None


def _hard_targets(
    targets: torch.Tensor, n_classes: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Class indices of hard or soft targets, and for soft targets the share of rows that are
    no probability distribution (an entry outside [0, 1], or a sum other than 1)."""
    if targets.dim() == 2 and targets.shape[1] == n_classes and targets.is_floating_point():
        soft = targets.float()
        bad = (soft < -1e-4).any(dim=1) | (soft > 1 + 1e-4).any(dim=1)
        bad |= (soft.sum(dim=1) - 1).abs() > 1e-3
        return soft.argmax(dim=1), bad.float().mean()
    return targets.reshape(-1).long().clamp(0, n_classes - 1), None


def _from_gradients(
    logits: list[torch.Tensor], grads: list[torch.Tensor | None]
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Targets and loss of a cross-entropy-shaped gradient: its rows sum to zero and the target
    class is the only negative entry, whatever the weighting or reduction."""
    pairs = [(z, g) for z, g in zip(logits, grads, strict=False) if g is not None]
    if not pairs or len(pairs) != len(logits):
        return None, None
    z = torch.cat([z for z, _ in pairs]).float()
    g = torch.cat([g for _, g in pairs]).float()
    if g.shape != z.shape:
        return None, None
    scale = g.abs().amax(dim=1).clamp_min(1e-30)
    shaped = (g.sum(dim=1).abs() <= 1e-3 * scale) & ((g < 0).sum(dim=1) == 1)
    if not bool(shaped.all()):  # one host sync per step, only on this fallback path
        return None, None
    targets = g.argmin(dim=1)
    return targets, F.cross_entropy(z, targets)
