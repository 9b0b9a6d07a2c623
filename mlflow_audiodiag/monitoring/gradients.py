"""Per-group gradient norms and update-to-weight ratios, recorded without host syncs.

A step costs a few fused ``torch._foreach_*`` kernels and one ``torch.stack`` into a row of a
preallocated device buffer: the L2 norm of every tracked gradient and the norms of every group's
weights and update. :meth:`GradientTracker.drain` moves the finished rows to the host in one
transfer and combines them there, vectorised over steps, into group norms, totals and ratios.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mlflow_audiodiag import signals
from mlflow_audiodiag.monitoring.groups import ParameterGroups

EPS = 1e-12


@dataclass(frozen=True)
class StepBlock:
    """Signals of consecutive optimizer steps as columns (NaN where a step has no value).

    ``first_step`` counts the tracker's ``after_step`` calls from 0; the columns are named by
    the evidence contract: ``grad_norm/<group>``, ``grad_norm/total``, ``nonfinite/grads``,
    ``update_ratio/<group>`` and ``weight_norm/<group>``.
    """

    first_step: int
    columns: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0


@dataclass(frozen=True)
class _Chunk:
    rows: torch.Tensor  # host copy; on CUDA it may still be in flight until a sync
    first_step: int
    has_grads: list[bool]
    has_updates: list[bool]


class GradientTracker:
    """Per step: per-group and total gradient L2 norms (before any clipping), the number of
    parameter tensors whose gradient norm is not finite, and per-group update-to-weight ratios
    ``||W_after - W_before|| / ||W_before||``.

    Call :meth:`after_backward` after the (last) backward of a step, :meth:`before_step` before
    ``optimizer.step()`` and :meth:`after_step` after it. None of them waits for the device:
    results stay in a device buffer of ``capacity`` rows until :meth:`drain`; a full buffer is
    queued for the host with an asynchronous copy.

    Update ratios need a copy of the weights, the costliest part on CPU. ``after_step`` copies
    the new weights into one flat buffer and subtracts it from the flat copy taken before the
    step; when the next step is measured too, that new copy already is its "before" snapshot
    and ``before_step`` copies nothing. So ``W_before`` is the weights as the previous measured
    step left them: a change made between two steps outside the optimizer (loading a
    checkpoint, say) counts toward the next update. ``update_interval=k`` measures updates on
    every k-th step only, ``track_updates=False`` not at all (the records of those steps have no
    ``update_ratio/*`` entries).
    """

    def __init__(
        self,
        model: nn.Module,
        groups: ParameterGroups,
        capacity: int = 256,
        track_updates: bool = True,
        update_interval: int = 1,
    ) -> None:
        if capacity <= 0 or update_interval <= 0:
            raise ValueError(
                f"capacity and update_interval must be positive, got {capacity}, {update_interval}"
            )
        self.model = model
        self.groups = groups
        self.capacity = capacity
        self.track_updates = track_updates
        self.update_interval = update_interval
        self.group_names = list(groups)
        self._params = groups.parameters()
        sizes = [len(groups[name]) for name in self.group_names]
        self._bounds = np.cumsum([0, *sizes]).tolist()  # group i: tensors bounds[i]:bounds[i+1]
        self._steps = 0
        self._row = 0
        self._has_grads = [False] * capacity
        self._has_updates = [False] * capacity
        self._grad_norms: list[torch.Tensor] | None = None
        self._weight_norms: list[torch.Tensor] | None = None
        self._chunks: list[_Chunk] = []
        self._allocate()

    @property
    def parameters(self) -> list[nn.Parameter]:
        """The tracked parameters, group by group."""
        return self._params

    @property
    def steps(self) -> int:
        """Number of completed steps (``after_step`` calls)."""
        return self._steps

    def after_backward(self) -> None:
        """Gradient norm of every tracked tensor; a missing ``.grad`` counts as zero."""
        self._check_device()
        zero = self._zero
        grads = [zero if p.grad is None else p.grad for p in self._params]
        self._grad_norms = torch._foreach_norm(grads) if grads else []
        self._total_norm = None

    def total_grad_norm(self) -> torch.Tensor | None:
        """The L2 norm over every tracked gradient, from the norms :meth:`after_backward`
        computed (a device tensor, no host sync); None before ``after_backward``."""
        if self._grad_norms is None:
            return None
        if self._total_norm is None:
            norms = self._grad_norms or [self._zero.reshape(())]
            self._total_norm = torch.linalg.vector_norm(torch.stack(norms))
        return self._total_norm

    def before_step(self) -> None:
        """Snapshots the tracked parameters when this step's update is measured."""
        if not self.track_updates or self._steps % self.update_interval:
            return
        self._check_device()
        if self._snapshot_for == self._steps:  # the previous step left this snapshot
            self._weight_norms = self._next_weight_norms
            return
        with torch.no_grad():
            if self._params:
                torch._foreach_copy_(self._views[0], self._params)
            self._weight_norms = self._slice_norms(0)

    def after_step(self) -> None:
        """Writes this step's row and advances to the next one."""
        self._check_device()
        grads, weights = self._grad_norms, self._weight_norms
        self._grad_norms = self._weight_norms = None
        self._snapshot_for = -1
        if weights is not None:
            with torch.no_grad():
                before, after = self._flat
                if self._params:
                    torch._foreach_copy_(self._views[1], self._params)
                before.sub_(after)  # W_before - W_after; ``after`` is the next snapshot
                norms = list(torch._foreach_norm(self._slices[0] + self._slices[1]))
            n = len(self.group_names)
            updates, self._next_weight_norms = norms[:n], norms[n:]
            self._flat.reverse()
            self._views.reverse()
            self._slices.reverse()
            self._snapshot_for = self._steps + 1
        n_groups = len(self.group_names)
        values = [
            *(grads if grads is not None else self._zeros[: len(self._params)]),
            *(weights if weights is not None else self._zeros[:n_groups]),
            *(updates if weights is not None else self._zeros[:n_groups]),
        ]
        row = self._rows[self._row]
        if self._exact_dtype and values:
            torch.stack(values, out=row)
        elif values:
            row.copy_(torch.stack([v.float() for v in values]))
        self._has_grads[self._row] = grads is not None
        self._has_updates[self._row] = weights is not None
        self._steps += 1
        self._row += 1
        if self._row == self.capacity:
            self._flush()

    def drain(self) -> StepBlock | None:
        """Every step finished since the last drain, oldest first (``None`` when none)."""
        self._flush()
        chunks, self._chunks = self._chunks, []
        if not chunks:
            return None
        if any(chunk.rows.is_pinned() for chunk in chunks):
            torch.cuda.synchronize()  # completes the asynchronous copies
        rows = np.concatenate([chunk.rows.numpy() for chunk in chunks]).astype(np.float64)
        has_grads = np.array([flag for chunk in chunks for flag in chunk.has_grads])
        has_updates = np.array([flag for chunk in chunks for flag in chunk.has_updates])
        columns = self._columns(rows)
        for name, values in columns.items():
            by_update = name.startswith((signals.UPDATE_RATIO.prefix, signals.WEIGHT_NORM.prefix))
            present = has_updates if by_update else has_grads
            values[~present] = np.nan
        return StepBlock(chunks[0].first_step, columns)

    def _columns(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Group norms, total, non-finite count, update ratios and weight norms of rows
        ``[steps, columns]``."""
        n_params = len(self._params)
        squares = np.square(rows[:, :n_params])
        out: dict[str, np.ndarray] = {}
        for name, start, stop in zip(
            self.group_names, self._bounds[:-1], self._bounds[1:], strict=True
        ):
            out[signals.GRAD_NORM.key(group=name)] = np.sqrt(squares[:, start:stop].sum(axis=1))
        out[signals.GRAD_NORM_TOTAL.name] = np.sqrt(squares.sum(axis=1))
        nonfinite = (~np.isfinite(rows[:, :n_params])).sum(axis=1).astype(float)
        out[signals.NONFINITE_GRADS.name] = nonfinite
        n_groups = len(self.group_names)
        weights = rows[:, n_params : n_params + n_groups]
        updates = rows[:, n_params + n_groups :]
        with np.errstate(invalid="ignore", over="ignore"):
            ratios = updates / np.maximum(weights, EPS)
        for i, name in enumerate(self.group_names):
            out[signals.UPDATE_RATIO.key(group=name)] = ratios[:, i]
            out[signals.WEIGHT_NORM.key(group=name)] = weights[:, i]
        return out

    def _slice_norms(self, buffer: int) -> list[torch.Tensor]:
        slices = self._slices[buffer]
        return list(torch._foreach_norm(slices)) if slices else []

    def _flush(self) -> None:
        """Queues the finished rows for the host (asynchronously on CUDA) and rewinds."""
        if self._row == 0:
            return
        n, rows = self._row, self._buffer[: self._row]
        pinned = rows.device.type == "cuda"
        host = torch.empty(rows.shape, dtype=rows.dtype, pin_memory=pinned)
        host.copy_(rows, non_blocking=pinned)
        self._chunks.append(
            _Chunk(host, self._steps - n, self._has_grads[:n], self._has_updates[:n])
        )
        self._row = 0

    def _check_device(self) -> None:
        if self._params and self._params[0].device != self._device:
            self._flush()
            self._allocate()

    def _allocate(self) -> None:
        devices = {p.device for p in self._params}
        if len(devices) > 1:
            names = ", ".join(sorted(map(str, devices)))
            raise ValueError(f"tracked parameters are on several devices: {names}")
        device = devices.pop() if devices else torch.device("cpu")
        dtypes = [p.dtype for p in self._params] or [torch.float32]
        dtype = functools.reduce(torch.promote_types, dtypes)
        n_params, n_groups = len(self._params), len(self.group_names)
        self._device = device
        # Columns: the norm of every tracked gradient, then per group the weight norm before
        # the step and the update norm.
        self._buffer = torch.zeros(self.capacity, n_params + 2 * n_groups, device=device)
        self._rows = list(self._buffer.unbind(0))
        self._exact_dtype = set(dtypes) == {torch.float32}
        self._zero = torch.zeros(1, dtype=dtypes[0], device=device)
        self._zeros = list(torch.zeros(max(n_params, n_groups), device=device).unbind(0))
        # Two flat weight buffers laid out group by group (before and after a step; they swap
        # roles after each measured step): weight and update norms are then one norm per group
        # instead of one per tensor, and the delta is one subtraction.
        self._flat: list[torch.Tensor] = []
        self._views: list[list[torch.Tensor]] = [[], []]
        self._slices: list[list[torch.Tensor]] = [[], []]
        if self.track_updates:
            numels = [p.numel() for p in self._params]
            sizes = [sum(p.numel() for _, p in self.groups[name]) for name in self.group_names]
            for index in range(2):
                flat = torch.zeros(sum(numels), dtype=dtype, device=device)
                self._flat.append(flat)
                self._views[index] = [
                    v.view(p.shape) for v, p in zip(flat.split(numels), self._params, strict=True)
                ]
                self._slices[index] = list(flat.split(sizes))
        self._grad_norms = self._weight_norms = None
        self._total_norm: torch.Tensor | None = None
        self._next_weight_norms: list[torch.Tensor] = []
        self._snapshot_for = -1  # the step whose "before" snapshot the first buffer holds
