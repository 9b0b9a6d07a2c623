"""Imports follow the data flow one way (docs/ARCHITECTURE.md): a layer imports only from the
layers it is allowed to; ``monitoring`` needs no audio stack, so any loop can use it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "mlflow_audiodiag"
BASE = {"errors", "schema", "signals", "cache", "numeric", "metrics"}

# Layer -> the layers it may import (besides itself and the base modules).
ALLOWED: dict[str, set[str]] = {
    "data": set(),
    "features": {"data"},
    "model": {"features"},
    "monitoring": set(),
    "diagnosis": set(),
    "reporting": {"diagnosis"},
    "training": {"data", "features", "model", "monitoring", "diagnosis", "reporting"},
    "comparison": {"diagnosis", "reporting"},
    "zoo": {"training", "diagnosis", "reporting"},
    "integrations": {"monitoring", "reporting"},
    "plugins": {"diagnosis", "reporting"},
    "api": {"monitoring", "diagnosis", "reporting"},
    "cli": {
        "data", "features", "model", "monitoring", "diagnosis", "reporting", "training",
        "comparison", "zoo",
    },
}  # fmt: skip


def _layer(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0].removesuffix(".py")


def _imported_layers(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "mlflow_audiodiag" and len(parts) > 1:
                found.add(parts[1])
    return found


def test_every_module_belongs_to_a_known_layer() -> None:
    layers = {_layer(p) for p in PACKAGE.rglob("*.py")} - {"__init__"}
    assert layers <= set(ALLOWED) | BASE


def test_imports_go_one_way() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        layer = _layer(path)
        if layer == "__init__":
            continue
        allowed = ALLOWED.get(layer, set()) | BASE | {layer}
        if layer in BASE:
            allowed = BASE
        for imported in _imported_layers(path) - allowed:
            wrong.append(f"{path.relative_to(PACKAGE)} imports {imported}")
    assert wrong == []


def test_the_monitor_imports_without_the_audio_stack() -> None:
    import subprocess
    import sys

    code = (
        "import sys; import mlflow_audiodiag.monitoring.monitor; "
        "bad = [m for m in ('librosa', 'soundfile', 'torchaudio') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_test_module_basenames_are_unique() -> None:
    """pytest's default import mode refuses two test files with one basename."""
    tests = Path(__file__).resolve().parents[1]
    names = [p.name for p in tests.rglob("test_*.py")]
    assert sorted({n for n in names if names.count(n) > 1}) == []
