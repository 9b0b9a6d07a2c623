"""Command-line options generated from the training dataclasses, so the two never drift."""

from __future__ import annotations

import argparse
from typing import Any

from mlflow_audiodiag.errors import ConfigError
from mlflow_audiodiag.training.config import (
    HIDDEN_SECTIONS,
    OPTION_HELP,
    OptionField,
    option_fields,
)

_HANDLED_ELSEWHERE = {"source"}


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parse_range(text: str) -> tuple[float, float]:
    parts = [p for p in text.replace(" ", "").split(",") if p]
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected two numbers 'low,high', got {text!r}")
    low, high = (float(p) for p in parts)
    return low, high


def parse_int(text: str) -> int:
    """An integer; accepts "10.0" as MLproject passes numeric parameters as floats."""
    value = float(text)
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
    return int(value)


def parse_optional_path(text: str) -> str | None:
    return text or None


def parse_optional_float(text: str) -> float | None:
    return None if text.strip().lower() in ("", "none") else float(text)


def _parser_for(option: OptionField) -> Any:
    default = option.default
    if isinstance(default, bool):
        return parse_bool
    if isinstance(default, tuple):
        return parse_range
    if default is None:
        return parse_optional_float
    if isinstance(default, int):
        return parse_int
    return type(default)


def add_training_options(parser: argparse.ArgumentParser) -> None:
    """Adds ``--name`` for every :class:`TrainConfig` leaf (default: the dataclass default)."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for option in option_fields():
        if option.name in _HANDLED_ELSEWHERE:
            continue
        hidden = option.section in HIDDEN_SECTIONS
        target = (
            parser
            if hidden
            else groups.setdefault(
                option.section, parser.add_argument_group(f"{option.section} options")
            )
        )
        choices = _choices(option)
        meaning = OPTION_HELP.get(option.name, "")
        if choices:
            meaning += f" ({', '.join(choices)})"
        target.add_argument(
            f"--{option.name.replace('_', '-')}",
            dest=option.name,
            type=_parser_for(option),
            default=argparse.SUPPRESS,
            metavar=option.name.upper(),
            help=argparse.SUPPRESS if hidden else f"{meaning}; default: {_show(option.default)}",
        )


def _choices(option: OptionField) -> list[str]:
    """The allowed values of a Literal-typed option."""
    return list(option.choices)


def add_source_options(parser: argparse.ArgumentParser) -> None:
    """``--source`` and its aliases ``--data-dir`` / ``--manifest`` (empty: embedded data)."""
    group = parser.add_argument_group("data source")
    for flag, what in (
        ("--source", "a manifest CSV, a folder per class or a Speech Commands tree"),
        ("--data-dir", "a folder per class or a Speech Commands tree"),
        ("--manifest", "a manifest CSV with columns path,label[,split]"),
    ):
        group.add_argument(
            flag,
            type=parse_optional_path,
            default=None,
            metavar="PATH",
            help=f"{what} (empty: the embedded synthetic dataset)",
        )


def training_values(namespace: argparse.Namespace) -> dict[str, Any]:
    """The training options the user gave explicitly, with the data source resolved."""
    names = {option.name for option in option_fields()} - _HANDLED_ELSEWHERE
    values = {name: value for name, value in vars(namespace).items() if name in names}
    given = {
        flag: value
        for flag, value in (
            ("--source", namespace.source),
            ("--data-dir", namespace.data_dir),
            ("--manifest", namespace.manifest),
        )
        if value
    }
    if len(given) > 1:
        raise ConfigError(f"give only one of {', '.join(given)} (got {given})")
    if given:
        values["source"] = next(iter(given.values()))
    return values


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return "empty" if value == "" else str(value)
