"""Per-step series as MLflow metrics for people: a bounded number of points per run.

Windows start one step wide and double every ``points_per_level`` points, so a run of ``n``
steps gives ``points_per_level * log2(n / points_per_level + 1)`` points per series: every
step of a short run, 451 points for 100,000 steps, under 1,000 for any run shorter than a
billion steps with the default 40. Each point is the window's mean at the window's last step;
series named in ``maxima`` also get the window's largest value as ``<name>_max``.

    >>> down = Downsampler({"train/step_loss": "train/step_loss"}, points_per_level=2)
    >>> down.update({"step": [1, 2, 3, 4], "train/step_loss": [4.0, 3, 2, 1]})
    [(1, {'train/step_loss': 4.0}), (2, {'train/step_loss': 3.0}), (4, {'train/step_loss': 1.5})]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np
from numpy.typing import ArrayLike

Block = Mapping[str, ArrayLike]  # consecutive step rows as columns by name, with "step"
Reducer = Callable[[Block], np.ndarray]


class Downsampler:
    """Turns step-table blocks (a DataFrame or columns by name) into ``(step, {metric: value})``
    points.

    Args:
        series: metric name -> the step-table column it summarizes, or a function of the block
            that returns one value per row.
        maxima: metric names whose window maximum is logged too, as ``<name>_max``.
        points_per_level: points per window size before the window doubles.
    """

    def __init__(
        self,
        series: Mapping[str, str | Reducer],
        maxima: tuple[str, ...] = (),
        points_per_level: int = 40,
    ) -> None:
        if points_per_level < 1:
            raise ValueError(f"points_per_level must be >= 1, got {points_per_level}")
        self.series = dict(series)
        self.maxima = maxima
        self.points_per_level = points_per_level
        self.window = 1
        self._emitted_at_level = 0
        self._sums = {name: 0.0 for name in self.series}
        self._counts = dict.fromkeys(self.series, 0)
        self._max = {name: -math.inf for name in maxima}
        self._filled = 0
        self._last_step = 0

    def update(self, block: Block) -> list[tuple[int, dict[str, float]]]:
        """Adds consecutive step rows; returns the points of every window they complete."""
        steps = np.asarray(block["step"]).tolist()
        values = {
            name: self._values(block, source, len(steps)).tolist()
            for name, source in self.series.items()
        }
        out = []
        for row in range(len(steps)):
            for name, column in values.items():
                value = column[row]
                if math.isfinite(value):
                    self._sums[name] += value
                    self._counts[name] += 1
                    if name in self._max:
                        self._max[name] = max(self._max[name], value)
            self._filled += 1
            self._last_step = int(steps[row])
            if self._filled == self.window:
                point = self._emit()
                if point[1]:
                    out.append(point)
        return out

    def finish(self) -> list[tuple[int, dict[str, float]]]:
        """The point of a partly filled last window, if any."""
        if self._filled == 0:
            return []
        point = self._emit()
        return [point] if point[1] else []

    def _values(self, block: Block, source: str | Reducer, rows: int) -> np.ndarray:
        if callable(source):
            return np.asarray(source(block), dtype=np.float64)
        if source not in block:
            return np.full(rows, np.nan)
        return np.asarray(block[source], dtype=np.float64)

    def _emit(self) -> tuple[int, dict[str, float]]:
        metrics = {
            name: self._sums[name] / self._counts[name]
            for name in self.series
            if self._counts[name]
        }
        for name, value in self._max.items():
            if math.isfinite(value):
                metrics[f"{name}_max"] = value
        self._sums = dict.fromkeys(self.series, 0.0)
        self._counts = dict.fromkeys(self.series, 0)
        self._max = {name: -math.inf for name in self.maxima}
        self._filled = 0
        self._emitted_at_level += 1
        if self._emitted_at_level == self.points_per_level:
            self.window *= 2
            self._emitted_at_level = 0
        return self._last_step, metrics
