"""Attention entropy per ``nn.MultiheadAttention`` module, measured on a fixed batch."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

# Positional parameters of nn.MultiheadAttention.forward after query, key, value.
_MHA_ARGS = (
    "key_padding_mask",
    "need_weights",
    "attn_mask",
    "average_attn_weights",
    "is_causal",
)


def attention_entropy(
    model: nn.Module, inputs: torch.Tensor | tuple[tuple[Any, ...], dict[str, Any]]
) -> list[float]:
    """Mean normalized entropy (entropy / log(n_keys)) of the attention distributions of every
    ``nn.MultiheadAttention`` in ``model`` (module order), over heads, queries and examples.

    ``inputs`` is a batch, or the ``(args, kwargs)`` of a forward call. 1.0 means uniform
    attention, values near 0 attention on single tokens. The probe runs in
    eval mode (no dropout) and leaves the model's modes, parameters and hooks as they were; its
    output is discarded. A module that the forward pass does not call gives NaN; a model without
    attention gives ``[]``.
    """
    modules = [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    if not modules:
        return []
    entropies: dict[nn.Module, list[torch.Tensor]] = {m: [] for m in modules}
    handles = []
    try:
        for module in modules:
            handles.append(module.register_forward_pre_hook(_want_weights, with_kwargs=True))
            handles.append(module.register_forward_hook(_collector(entropies[module])))
        with _eval_mode(model), _without_fastpath(), torch.enable_grad():
            args, kwargs = inputs if isinstance(inputs, tuple) else ((inputs,), {})
            model(*_to_model_device(model, args), **_to_model_device(model, kwargs))
    finally:
        for handle in handles:
            handle.remove()
    nan = torch.tensor(float("nan"))
    means = [torch.stack(values).mean().cpu() if values else nan for values in entropies.values()]
    return torch.stack(means).tolist()


def _want_weights(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    kwargs = dict(kwargs)
    kwargs.update(zip(_MHA_ARGS, args[3:], strict=False))
    kwargs["need_weights"] = True
    kwargs["average_attn_weights"] = False
    return args[:3], kwargs


def _collector(values: list[torch.Tensor]) -> Any:
    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        weights = output[1].detach().float()  # [..., heads, queries, keys]
        n_keys = weights.shape[-1]
        if n_keys < 2:
            values.append(torch.full((), float("nan"), device=weights.device))
            return
        entropy = torch.special.entr(weights).sum(dim=-1) / math.log(n_keys)
        values.append(entropy.mean())

    return hook


def _to_model_device(model: nn.Module, values: Any) -> Any:
    """Tensors in ``values`` (a tuple or a dict of them) on the model's device."""
    param = next(model.parameters(), None)
    if param is None:
        return values

    def move(value: Any) -> Any:
        return value.to(param.device) if isinstance(value, torch.Tensor) else value

    if isinstance(values, dict):
        return {key: move(value) for key, value in values.items()}
    return tuple(move(value) for value in values)


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


@contextmanager
def _without_fastpath() -> Iterator[None]:
    """The fused TransformerEncoderLayer path skips the attention module's hooks."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)
