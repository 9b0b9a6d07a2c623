import argparse

import pytest

from mlflow_audiodiag.cli.main import build_parser
from mlflow_audiodiag.cli.options import training_values
from mlflow_audiodiag.errors import ConfigError
from mlflow_audiodiag.training.config import TrainConfig, option_fields


def _parse(*argv: str) -> dict:
    return training_values(build_parser().parse_args(["train", *argv]))


def test_every_leaf_becomes_a_param() -> None:
    params = TrainConfig().to_params()
    assert len(params) == len(option_fields())
    assert params["optim.lr"] == "0.001"
    assert params["augment.noise_snr_db"] == "10.0,30.0"
    assert params["features.kind"] == "logmel"


def test_cli_values_reach_the_config_and_defaults_stay() -> None:
    config = TrainConfig.from_flat(
        _parse(
            "--lr",
            "0.01",
            "--epochs",
            "5.0",
            "--feature-kind",
            "mfcc",
            "--noise-snr-db",
            "5,15",
            "--f-max",
            "none",
            "--progress",
            "false",
        )
    )
    assert config.optim.lr == 0.01
    assert config.loop.epochs == 5  # MLproject passes numbers as floats
    assert config.features.kind == "mfcc"
    assert config.augment.noise_snr_db == (5.0, 15.0)
    assert config.features.f_max is None
    assert config.loop.progress is False
    assert config.model == TrainConfig().model


@pytest.mark.parametrize("flag", ["--data-dir", "--manifest", "--source"])
def test_source_aliases(flag: str, tmp_path) -> None:
    assert _parse(flag, str(tmp_path))["source"] == str(tmp_path)


def test_empty_source_means_embedded_data() -> None:
    assert "source" not in _parse("--data-dir", "", "--manifest", "")


def test_two_sources_are_rejected(tmp_path) -> None:
    with pytest.raises(ConfigError, match="only one"):
        _parse("--data-dir", str(tmp_path), "--manifest", str(tmp_path / "m.csv"))


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--optimizer", "adam"], "optimizer"),
        (["--scheduler", "linear"], "scheduler"),
        (["--normalization", "minmax"], "normalization"),
        (["--on-bad-file", "ignore"], "on_bad_file"),
        (["--dim", "90", "--heads", "4"], "divisible"),
        (["--class-balance", "oversample"], "class_balance"),
    ],
)
def test_invalid_values_are_named(argv: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        TrainConfig.from_flat(_parse(*argv))


def test_non_integer_epochs_is_rejected() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--epochs", "2.5"])


def test_unknown_flat_option_is_rejected() -> None:
    with pytest.raises(ConfigError, match="unknown"):
        TrainConfig.from_flat({"learning_rate": 1.0})


def test_bool_parser_rejects_garbage() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--progress", "maybe"])
    assert isinstance(build_parser(), argparse.ArgumentParser)


def test_train_help_gives_every_option_a_meaning_and_hides_the_fault_switches() -> None:
    from mlflow_audiodiag.cli.main import build_parser
    from mlflow_audiodiag.training.config import HIDDEN_SECTIONS, OPTION_HELP, option_fields

    visible = [o for o in option_fields() if o.section not in HIDDEN_SECTIONS]
    assert sorted(o.name for o in visible if o.name not in OPTION_HELP) == []
    assert set(OPTION_HELP) <= {o.name for o in visible}  # no help for options that are gone
    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    text = " ".join(train.format_help().split())
    assert "(adamw, sgd)" in text and "(none, weighted_loss, balanced_sampler)" in text
    assert "--fail-rank" not in text and "--shuffle-labels" not in text
    assert train.parse_args(["--shuffle-labels", "true"]).shuffle_labels is True  # still accepted
