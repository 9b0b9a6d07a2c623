import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mlflow_audiodiag.model.transformer import AudioTransformer, ModelConfig
from mlflow_audiodiag.monitoring.gradients import GradientTracker
from mlflow_audiodiag.monitoring.groups import ParameterGroups


def _model(seed: int = 0) -> AudioTransformer:
    torch.manual_seed(seed)
    return AudioTransformer(16, 40, 3, ModelConfig(dim=32, heads=2, layers=2, dropout=0.0))


def _backward(model: nn.Module, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(4, 16, 40, generator=generator)
    targets = torch.randint(0, 3, (4,), generator=generator)
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(features), targets).backward()


def _records(tracker: GradientTracker) -> list[SimpleNamespace]:
    """The drained block as one ``(step, metrics)`` record per step, absent values left out."""
    block = tracker.drain()
    if block is None:
        return []
    return [
        SimpleNamespace(
            step=block.first_step + i,
            metrics={k: float(v[i]) for k, v in block.columns.items() if not np.isnan(v[i])},
        )
        for i in range(len(block))
    ]


def _group_grad_norm(groups: ParameterGroups, name: str) -> torch.Tensor:
    grads = [p.grad.reshape(-1) for _, p in groups[name] if p.grad is not None]
    return torch.linalg.vector_norm(torch.cat(grads)) if grads else torch.tensor(0.0)


def test_group_norms_and_total_norm_before_clipping() -> None:
    model = _model()
    groups = ParameterGroups.default(model)
    tracker = GradientTracker(model, groups)
    _backward(model)
    tracker.after_backward()
    expected = {name: _group_grad_norm(groups, name).item() for name in groups}
    total = nn.utils.clip_grad_norm_(model.parameters(), max_norm=1e-3).item()
    tracker.after_step()
    (record,) = _records(tracker)
    assert record.step == 0
    for name, value in expected.items():
        assert record.metrics[f"grad_norm/{name}"] == pytest.approx(value, rel=1e-5)
    assert record.metrics["grad_norm/total"] == pytest.approx(total, rel=1e-6)
    assert total > 1e-3  # clipping happened after the tracker read the norm
    assert record.metrics["nonfinite/grads"] == 0.0


def test_update_ratio_and_weight_norm_match_an_explicit_computation() -> None:
    model = _model()
    groups = ParameterGroups.default(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    tracker = GradientTracker(model, groups)
    _backward(model)
    tracker.after_backward()
    before = {name: [p.detach().clone() for _, p in params] for name, params in groups.items()}
    tracker.before_step()
    optimizer.step()
    tracker.after_step()
    (record,) = _records(tracker)
    for name, params in groups.items():
        old = torch.cat([t.reshape(-1) for t in before[name]])
        new = torch.cat([p.detach().reshape(-1) for _, p in params])
        ratio = (torch.linalg.vector_norm(new - old) / torch.linalg.vector_norm(old)).item()
        assert ratio > 0
        assert record.metrics[f"update_ratio/{name}"] == pytest.approx(ratio, rel=1e-4)
        weight = torch.linalg.vector_norm(old).item()  # the weights before the step
        assert record.metrics[f"weight_norm/{name}"] == pytest.approx(weight, rel=1e-5)


def _group_ratio(groups: ParameterGroups, name: str, before: dict, after: dict) -> float:
    old = torch.cat([before[n].reshape(-1) for n, _ in groups[name]])
    new = torch.cat([after[n].reshape(-1) for n, _ in groups[name]])
    return (torch.linalg.vector_norm(new - old) / torch.linalg.vector_norm(old)).item()


@pytest.mark.parametrize("interval", [1, 2])
def test_update_ratios_over_consecutive_steps_match_weight_snapshots(interval: int) -> None:
    model = _model()
    groups = ParameterGroups.default(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    tracker = GradientTracker(model, groups, update_interval=interval)
    expected = []
    for step in range(5):
        _backward(model, seed=step)
        tracker.after_backward()
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        tracker.before_step()
        optimizer.step()
        tracker.after_step()
        after = dict(model.named_parameters())
        expected.append({name: _group_ratio(groups, name, before, after) for name in groups})
    records = _records(tracker)
    for step, (record, ratios) in enumerate(zip(records, expected, strict=True)):
        if step % interval:
            assert not any(key.startswith("update_ratio/") for key in record.metrics)
            continue
        for name, ratio in ratios.items():
            assert record.metrics[f"update_ratio/{name}"] == pytest.approx(ratio, rel=1e-4)


def test_weights_before_a_step_carry_over_drains_and_full_buffers() -> None:
    model = _model()
    groups = ParameterGroups.default(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    tracker = GradientTracker(model, groups, capacity=2)  # a full buffer every second step
    expected, records = [], []
    for step in range(7):
        _backward(model, seed=step)
        tracker.after_backward()
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        tracker.before_step()
        optimizer.step()
        tracker.after_step()
        after = dict(model.named_parameters())
        weights = {
            name: torch.linalg.vector_norm(
                torch.cat([before[n].reshape(-1) for n, _ in groups[name]])
            ).item()
            for name in groups
        }
        ratios = {name: _group_ratio(groups, name, before, after) for name in groups}
        expected.append((weights, ratios))
        if step % 3 == 2:
            records += _records(tracker)
    records += _records(tracker)
    assert [r.step for r in records] == list(range(7))
    for record, (weights, ratios) in zip(records, expected, strict=True):
        for name in groups:
            assert record.metrics[f"weight_norm/{name}"] == pytest.approx(weights[name], rel=1e-5)
            assert record.metrics[f"update_ratio/{name}"] == pytest.approx(ratios[name], rel=1e-4)


def test_frozen_parameters_show_frozen_fraction_and_no_update() -> None:
    model = _model()
    for param in (*model.embedding.parameters(), model.cls_token, model.pos_embedding):
        param.requires_grad_(False)
    groups = ParameterGroups.default(model)
    assert groups.frozen_fraction()["embedding"] == 1.0
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    frozen_before = model.pos_embedding.detach().clone()
    tracker = GradientTracker(model, groups)
    _backward(model)
    tracker.after_backward()
    tracker.before_step()
    optimizer.step()
    tracker.after_step()
    (record,) = _records(tracker)
    assert record.metrics["grad_norm/embedding"] == 0.0
    assert record.metrics["update_ratio/embedding"] == 0.0
    assert record.metrics["update_ratio/encoder.layers.0"] > 0
    assert torch.equal(model.pos_embedding, frozen_before)


def test_nonfinite_gradients_are_counted_without_raising() -> None:
    model = _model()
    groups = ParameterGroups.default(model)
    tracker = GradientTracker(model, groups)
    _backward(model)
    model.head.weight.grad[0, 0] = float("nan")
    model.encoder.layers[0].linear1.bias.grad[1] = float("inf")
    tracker.after_backward()
    tracker.after_step()
    block = tracker.drain()
    metrics = {name: float(values[0]) for name, values in block.columns.items()}
    assert metrics["nonfinite/grads"] == 2.0
    assert math.isnan(metrics["grad_norm/head"])
    assert math.isinf(metrics["grad_norm/encoder.layers.0"])
    assert not math.isfinite(metrics["grad_norm/total"])
    for name in ("embedding", "encoder.layers.1"):
        assert metrics[f"grad_norm/{name}"] == pytest.approx(
            _group_grad_norm(groups, name).item(), rel=1e-5
        )


def test_missing_gradients_count_as_zero() -> None:
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(3, 2))
    groups = ParameterGroups.default(model)
    tracker = GradientTracker(model, groups)
    model[0](torch.randn(5, 3)).sum().backward()  # model[1] gets no gradient
    tracker.after_backward()
    tracker.after_step()
    (record,) = _records(tracker)
    assert record.metrics["grad_norm/linear.1"] == 0.0
    assert record.metrics["grad_norm/linear.0"] == pytest.approx(
        _group_grad_norm(groups, "linear.0").item()
    )


def test_drain_returns_steps_in_order_across_automatic_drains() -> None:
    model = _model()
    groups = ParameterGroups.default(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    tracker = GradientTracker(model, groups, capacity=3)
    totals = []
    for step in range(7):
        _backward(model, seed=step)
        tracker.after_backward()
        totals.append(nn.utils.clip_grad_norm_(model.parameters(), max_norm=1e9).item())
        tracker.before_step()
        optimizer.step()
        tracker.after_step()
    _backward(model, seed=99)
    tracker.after_backward()  # an unfinished step is not drained
    records = _records(tracker)
    assert [r.step for r in records] == list(range(7))
    for record, total in zip(records, totals, strict=True):
        assert record.metrics["grad_norm/total"] == pytest.approx(total, rel=1e-6)
        assert record.metrics["update_ratio/head"] > 0
    assert _records(tracker) == []
    tracker.after_step()
    assert [r.step for r in _records(tracker)] == [7]
    assert tracker.steps == 8


def test_update_tracking_can_be_skipped() -> None:
    model = _model()
    groups = ParameterGroups.default(model)
    tracker = GradientTracker(model, groups, track_updates=False)
    _backward(model)
    tracker.after_backward()
    tracker.before_step()
    tracker.after_step()
    tracked = GradientTracker(model, groups)
    tracked.after_step()  # no before_step: no update ratio for this step
    ((record,), (untracked,)) = _records(tracker), _records(tracked)
    assert not any(key.startswith("update_ratio/") for key in record.metrics)
    assert "grad_norm/total" in record.metrics
    assert untracked.metrics == {}


def test_model_without_trainable_parameters() -> None:
    model = nn.Sequential(nn.Linear(2, 2)).requires_grad_(False)
    tracker = GradientTracker(model, ParameterGroups.default(model))
    tracker.after_backward()
    tracker.before_step()
    tracker.after_step()
    (record,) = _records(tracker)
    assert record.metrics == {
        "grad_norm/linear.0": 0.0,
        "grad_norm/total": 0.0,
        "nonfinite/grads": 0.0,
        "update_ratio/linear.0": 0.0,
        "weight_norm/linear.0": 0.0,
    }


def test_update_interval_measures_every_kth_step() -> None:
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    tracker = GradientTracker(model, ParameterGroups.default(model), update_interval=2)
    for step in range(5):
        _backward(model, seed=step)
        tracker.after_backward()
        tracker.before_step()
        optimizer.step()
        tracker.after_step()
    measured = [r.step for r in _records(tracker) if "update_ratio/head" in r.metrics]
    assert measured == [0, 2, 4]


def _clip_with(clip, max_norm: float, seed: int = 3) -> tuple[list[torch.Tensor], float]:
    model = _model(seed)
    _backward(model, seed)
    total = clip(model, max_norm)
    return [p.grad.clone() for p in model.parameters() if p.grad is not None], float(total)


def test_total_grad_norm_reuses_the_recorded_norms_for_clipping() -> None:
    def torch_clip(model, max_norm):
        return nn.utils.clip_grad_norm_(model.parameters(), max_norm)

    def tracker_clip(model, max_norm):
        tracker = GradientTracker(model, ParameterGroups.default(model))
        assert tracker.total_grad_norm() is None  # nothing recorded yet
        tracker.after_backward()
        total = tracker.total_grad_norm()
        nn.utils.clip_grads_with_norm_(tracker.parameters, max_norm, total)
        return total

    for max_norm in (1e-3, 1e6):  # clipping, and a bound the norm stays under
        expected, expected_total = _clip_with(torch_clip, max_norm)
        clipped, total = _clip_with(tracker_clip, max_norm)
        assert total == pytest.approx(expected_total, rel=1e-6)
        for got, want in zip(clipped, expected, strict=True):
            torch.testing.assert_close(got, want)


def _train_steps(tracker: GradientTracker, model: nn.Module, steps: int) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for step in range(steps):
        _backward(model, seed=step)
        tracker.after_backward()
        tracker.before_step()
        optimizer.step()
        tracker.after_step()


def test_weights_changed_after_the_step_count_toward_the_next_update() -> None:
    model = _model()
    groups = ParameterGroups.default(model)
    tracker = GradientTracker(model, groups)
    _train_steps(tracker, model, 1)
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(2.0)
    _train_steps(tracker, model, 1)
    first, second = _records(tracker)
    for name in groups:
        # Doubling the weights is an update of about the weights' own size, in step 1 only.
        assert first.metrics[f"update_ratio/{name}"] < 0.5
        assert second.metrics[f"update_ratio/{name}"] > 0.9
