"""The README's contract and rules tables are the ones the code generates, so they cannot drift."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mlflow_audiodiag import signals
from mlflow_audiodiag.diagnosis import rules

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def _between(marker: str) -> str:
    found = re.search(rf"<!-- {marker}:start -->\n(.*?)\n<!-- {marker}:end -->", README, re.S)
    assert found, f"README lacks the <!-- {marker}:start/end --> markers"
    return found.group(1)


@pytest.mark.parametrize(
    ("marker", "generate"),
    [("contract-table", signals.readme_table), ("rules-table", rules.docs_table)],
)
def test_readme_table_is_the_generated_one(marker, generate) -> None:
    assert _between(marker) == generate(), f"regenerate the README's {marker} from the code"
