"""One cell of the matrix: front-end x architecture x dataset x scenario x seed."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from benchmarks.diagnosis_matrix.scenarios import SCENARIOS, Scenario

FRONT_ENDS = ("bundled", "user", "lightning")
BUNDLED_ARCH = "bundled_transformer"


@dataclass(frozen=True)
class RunSpec:
    front_end: str
    arch: str
    dataset: str  # family: tones or words
    scenario: str
    seed: int

    @property
    def key(self) -> str:
        return f"{self.front_end}-{self.arch}-{self.dataset}-{self.scenario}-s{self.seed}"

    @property
    def definition(self) -> Scenario:
        return SCENARIOS[self.scenario]

    @property
    def expected(self) -> str:
        return self.definition.expected or "none"

    @property
    def dataset_variant(self) -> str:
        """The dataset the run reads: the family, or its ``_hard``/``_imbalanced`` variant."""
        data = self.definition.data
        return f"{self.dataset}_{data}" if data else self.dataset

    def tags(self) -> dict[str, str]:
        return {
            "bench.front_end": self.front_end,
            "bench.arch": self.arch,
            "bench.dataset": self.dataset_variant,
            "bench.scenario": self.scenario,
            "bench.expected_cause": self.expected,
            "bench.seed": str(self.seed),
            "bench.fault": self.definition.fault,
        }

    def to_dict(self) -> dict:
        return asdict(self)
