"""Joining a ``torchrun`` job: process group, device, and what ends a job cleanly."""

from __future__ import annotations

import os
import signal

import torch
import torch.distributed as dist

from mlflow_audiodiag.errors import AudioDiagError
from mlflow_audiodiag.monitoring.distributed import DistContext, current


class RankFailure(AudioDiagError):
    """This rank was stopped because another rank of the job failed."""


def init_distributed(device: str) -> DistContext:
    """Joins the ``torchrun`` job described by the environment (``WORLD_SIZE`` > 1): gloo on
    CPU, nccl on CUDA. Without such a job: a single process, nothing initialised."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistContext()
    if not dist.is_initialized():
        cuda = device in ("auto", "cuda") and torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    signal.signal(signal.SIGTERM, _terminated)  # torchrun stops the others when a rank fails
    return current()


def device_for(ctx: DistContext, device: torch.device) -> torch.device:
    """One GPU per local rank under DDP; the given device otherwise."""
    if ctx.enabled and device.type == "cuda":
        return torch.device("cuda", ctx.local_rank)
    return device


_PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")


def peer_failed(error: BaseException) -> bool:
    """Whether ``error`` is a collective that failed because another rank went away."""
    network_error = getattr(dist, "DistNetworkError", ())
    return isinstance(error, network_error) or any(text in str(error) for text in _PEER_GONE)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _terminated(signum: int, frame: object) -> None:
    raise RankFailure(
        "stopped by torchrun: another rank of this job failed (its error is printed above); "
        "the MLflow run is marked FAILED"
    )
