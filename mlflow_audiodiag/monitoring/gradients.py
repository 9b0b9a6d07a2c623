"""Per-group gradient norms and update-to-weight ratios, recorded without host syncs.

A step costs a few fused kernels writing into a row of a preallocated device buffer: the L2
norm of every tracked gradient (one ``torch._foreach_norm``) and, for the update ratios, one
copy of the weights into a flat buffer, one subtraction and one norm per fixed-size chunk of it
(a single reduction). :meth:`GradientTracker.drain` moves the finished rows to the host in one
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
MAX_CHUNKS = 256  # chunks of the flat weight buffer beyond one per group (bounds a row's width)
MIN_CHUNK = 128  # elements per chunk at least (padding to whole chunks stays small)


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
    delta_in: list[int]  # which of the two flat buffers held the update in each row
    fresh: list[bool]  # the weights before the step were snapshot in that step


@dataclass(frozen=True)
class FlatLayout:
    """Where each tracked tensor lies in a flat weight buffer cut into ``chunks`` rows of
    ``chunk`` elements: the groups one after the other, each padded with zeros to whole chunks,
    so that one norm along the last dimension gives every chunk's norm and a group's norm is
    the root sum of squares of its own chunks (``group_chunks[i]:group_chunks[i + 1]``).

    >>> FlatLayout.build([[3, 2], [4]], chunk=4)
    FlatLayout(chunk=4, chunks=3, offsets=[0, 3, 8], group_chunks=[0, 2, 3])
    """

    chunk: int
    chunks: int
    offsets: list[int]  # start of every tensor
    group_chunks: list[int]  # first chunk of every group, then the total

    @classmethod
    def build(cls, group_numels: list[list[int]], chunk: int | None = None) -> FlatLayout:
        total = sum(map(sum, group_numels))
        if chunk is None:
            chunk = max(MIN_CHUNK, -(-total // MAX_CHUNKS))
        offsets, group_chunks, start = [], [0], 0
        for numels in group_numels:
            for numel in numels:
                offsets.append(start)
                start += numel
            group_chunks.append(group_chunks[-1] + max(1, -(-sum(numels) // chunk)))
            start = group_chunks[-1] * chunk
        return cls(chunk, group_chunks[-1], offsets, group_chunks)


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
        self._fresh = [True] * capacity
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
        """Gradient norm of every tracked tensor, into this step's row; a missing ``.grad``
        counts as zero."""
        self._check_device()
        zero = self._zero
        grads = [zero if p.grad is None else p.grad for p in self._params]
        norms = torch._foreach_norm(grads) if grads else []
        self._write(self._rows[self._row][: len(grads)], norms)
        self._grads_recorded = True
        self._total_norm = None

    def total_grad_norm(self) -> torch.Tensor | None:
        """The L2 norm over every tracked gradient, from the norms :meth:`after_backward`
        recorded (a device tensor, no host sync); None before ``after_backward``."""
        if not self._grads_recorded:
            return None
        if self._total_norm is None:
            norms = self._rows[self._row][: len(self._params)]
            self._total_norm = torch.linalg.vector_norm(norms if len(norms) else self._zero)
        return self._total_norm

    def before_step(self) -> None:
        """Snapshots the tracked parameters when this step's update is measured."""
        if not self.track_updates or self._steps % self.update_interval:
            return
        self._check_device()
        self._measure_update = True
        self._fresh[self._row] = self._snapshot_for != self._steps
        if not self._fresh[self._row]:  # the previous step left this snapshot
            return
        with torch.no_grad():
            if self._params:
                torch._foreach_copy_(self._views[self._before], self._params)
            start, chunks = len(self._params), self._layout.chunks
            self._chunk_norms(self._flat[self._before], self._rows[self._row][start:][:chunks])

    def after_step(self) -> None:
        """Completes this step's row and advances to the next one."""
        self._check_device()
        measured = self._measure_update
        self._has_grads[self._row] = self._grads_recorded
        self._has_updates[self._row] = measured
        self._delta_in[self._row] = self._before
        self._grads_recorded = self._measure_update = False
        self._total_norm = None
        self._snapshot_for = -1
        if measured:
            with torch.no_grad():
                before, after = self._before, 1 - self._before
                if self._params:
                    torch._foreach_copy_(self._views[after], self._params)
                self._flat[before].sub_(self._flat[after])  # W_before - W_after
                start, chunks = len(self._params) + self._layout.chunks, self._layout.chunks
                both = self._rows[self._row][start:].view(2, chunks)
                self._chunk_norms(self._both, both)  # the update and W_after, chunk by chunk
            self._before = after  # the weights after this step are the next step's snapshot
            self._snapshot_for = self._steps + 1
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
        flags = {
            name: np.array([flag for chunk in chunks for flag in getattr(chunk, name)])
            for name in ("has_grads", "has_updates", "delta_in", "fresh")
        }
        columns = self._columns(rows, flags)
        for name, values in columns.items():
            by_update = name.startswith((signals.UPDATE_RATIO.prefix, signals.WEIGHT_NORM.prefix))
            present = flags["has_updates"] if by_update else flags["has_grads"]
            values[~present] = np.nan
        return StepBlock(chunks[0].first_step, columns)

    def _columns(self, rows: np.ndarray, flags: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Group norms, total, non-finite count, update ratios and weight norms of rows
        ``[steps, columns]``."""
        n_params, chunks = len(self._params), self._layout.chunks
        squares = np.square(rows[:, :n_params])
        out: dict[str, np.ndarray] = {}
        for name, start, stop in zip(
            self.group_names, self._bounds[:-1], self._bounds[1:], strict=True
        ):
            out[signals.GRAD_NORM.key(group=name)] = np.sqrt(squares[:, start:stop].sum(axis=1))
        out[signals.GRAD_NORM_TOTAL.name] = np.sqrt(squares.sum(axis=1))
        nonfinite = (~np.isfinite(rows[:, :n_params])).sum(axis=1).astype(float)
        out[signals.NONFINITE_GRADS.name] = nonfinite
        weights = ratios = np.full((len(rows), len(self.group_names)), np.nan)
        if chunks:
            steps = np.arange(len(rows))
            both = rows[:, n_params + chunks :].reshape(len(rows), 2, chunks)
            updates = both[steps, flags["delta_in"]]
            after = both[steps, 1 - flags["delta_in"]]
            # A step that reused the previous step's snapshot starts from its weights.
            previous = np.concatenate([self._carried_weights[None], after[:-1]])
            before = np.where(
                flags["fresh"][:, None], rows[:, n_params : n_params + chunks], previous
            )
            if flags["has_updates"][-1]:
                self._carried_weights = after[-1]
            weights = self._group_norms(before)
            with np.errstate(invalid="ignore", over="ignore"):
                ratios = self._group_norms(updates) / np.maximum(weights, EPS)
        for i, name in enumerate(self.group_names):
            out[signals.UPDATE_RATIO.key(group=name)] = ratios[:, i]
            out[signals.WEIGHT_NORM.key(group=name)] = weights[:, i]
        return out

    def _group_norms(self, chunk_norms: np.ndarray) -> np.ndarray:
        """``[steps, chunks]`` chunk norms to ``[steps, groups]`` group norms."""
        starts = self._layout.group_chunks[:-1]
        return np.sqrt(np.add.reduceat(np.square(chunk_norms), starts, axis=1))

    def _chunk_norms(self, flat: torch.Tensor, out: torch.Tensor) -> None:
        """The norm of every chunk of one flat buffer (into ``[chunks]``) or of both (into
        ``[2, chunks]``)."""
        chunked = flat.view(*flat.shape[:-1], self._layout.chunks, self._layout.chunk)
        if self._exact_dtype:
            torch.linalg.vector_norm(chunked, dim=-1, out=out)
        else:
            out.copy_(torch.linalg.vector_norm(chunked, dim=-1))

    def _write(self, row: torch.Tensor, values: list[torch.Tensor]) -> None:
        if not values:
            return
        if self._exact_dtype:
            torch.stack(values, out=row)
        else:
            row.copy_(torch.stack([v.float() for v in values]))

    def _flush(self) -> None:
        """Queues the finished rows for the host (asynchronously on CUDA) and rewinds."""
        if self._row == 0:
            return
        n, rows = self._row, self._buffer[: self._row]
        pinned = rows.device.type == "cuda"
        host = torch.empty(rows.shape, dtype=rows.dtype, pin_memory=pinned)
        host.copy_(rows, non_blocking=pinned)
        flags = self._has_grads[:n], self._has_updates[:n], self._delta_in[:n], self._fresh[:n]
        self._chunks.append(_Chunk(host, self._steps - n, *flags))
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
        n_params = len(self._params)
        self._device = device
        self._layout = FlatLayout.build(
            [[p.numel() for _, p in self.groups[name]] for name in self.group_names]
            if self.track_updates
            else []
        )
        chunks = self._layout.chunks
        # Columns: the norm of every tracked gradient, then (when updates are tracked) the norm
        # of every chunk of the weights before the step, then of both flat buffers after it.
        self._buffer = torch.zeros(self.capacity, n_params + 3 * chunks, device=device)
        self._rows = list(self._buffer.unbind(0))
        self._exact_dtype = set(dtypes) == {torch.float32}
        self._zero = torch.zeros(1, dtype=dtypes[0], device=device)
        # Two flat weight buffers in the chunked layout (before and after a step; they swap
        # roles after each measured step): the weight and update norms are then one reduction
        # over fixed-size chunks instead of one norm per tensor, and the delta is one
        # subtraction. Padding stays zero.
        self._both = torch.zeros(2, chunks * self._layout.chunk, dtype=dtype, device=device)
        self._flat = list(self._both.unbind(0))
        self._views: list[list[torch.Tensor]] = [[], []]
        if self.track_updates:
            for index, flat in enumerate(self._flat):
                self._views[index] = [
                    flat[start : start + p.numel()].view(p.shape)
                    for start, p in zip(self._layout.offsets, self._params, strict=True)
                ]
        self._before = 0  # the flat buffer that holds the weights before the next step
        self._delta_in = [0] * self.capacity
        self._grads_recorded = self._measure_update = False
        self._total_norm: torch.Tensor | None = None
        self._carried_weights = np.full(chunks, np.nan)  # the last drained step's W_after
        self._snapshot_for = -1  # the step whose "before" snapshot the buffer holds
