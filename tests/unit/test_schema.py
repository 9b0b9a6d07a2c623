"""Every name in the schema module is documented in the README's name table."""

import re
from pathlib import Path

from mlflow_audiodiag import schema

README = Path(__file__).resolve().parents[2] / "README.md"


def _schema_names() -> dict[str, str]:
    return {
        name: value
        for name, value in vars(schema).items()
        if name.isupper() and isinstance(value, str) and not name.startswith("SPLIT_")
    }


def test_every_schema_name_is_in_the_readme_table() -> None:
    table = README.read_text()
    missing = [
        name
        for name, value in _schema_names().items()
        if re.sub(r"\{(\w+)\}", r"<\1>", value) not in table
    ]
    assert not missing, f"document these schema names in README.md: {missing}"
