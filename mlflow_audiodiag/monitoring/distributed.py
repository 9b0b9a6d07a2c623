"""Collectives for recording signals under ``torch.distributed`` (DDP): each rank sees its
shard of the data; rank 0 records what the ranks saw together. Without an initialised process
group every helper is the single-process identity."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch.distributed as dist

from mlflow_audiodiag.monitoring.statistics import FeatureStatsAccumulator

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job (``world_size`` 1 without DDP)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current() -> DistContext:
    """The context of the initialised process group, or a single process."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistContext()
    local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    return DistContext(dist.get_rank(), dist.get_world_size(), local)


def shard_indices(n: int, ctx: DistContext) -> np.ndarray:
    """Every index in ``range(n)`` on exactly one rank (no padding, no duplicates)."""
    return np.arange(ctx.rank, n, ctx.world_size)


def gather_objects(value: T, ctx: DistContext) -> list[T]:
    """``value`` of every rank, in rank order, on every rank."""
    if not ctx.enabled:
        return [value]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, value)
    return out


def concat_from_ranks(array: np.ndarray, ctx: DistContext) -> np.ndarray:
    """The rows of every rank's ``array``, concatenated in rank order, on every rank."""
    parts = gather_objects(np.asarray(array), ctx)
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def broadcast_from_main(value: T, ctx: DistContext) -> T:
    """Rank 0's ``value`` on every rank (e.g. a stop decision)."""
    if not ctx.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def merge_from_ranks(
    accumulator: FeatureStatsAccumulator, ctx: DistContext
) -> FeatureStatsAccumulator:
    """Every rank's feature statistics merged (in rank order), on every rank."""
    parts = gather_objects(accumulator, ctx)
    merged = FeatureStatsAccumulator(parts[0].silent_below)
    for part in parts:
        merged.merge(part)
    return merged
