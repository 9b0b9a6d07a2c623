"""The diagnosis benchmark's pieces that need no training: scoring, tables, the matrix, the
fault-pattern checks and the spoken-words data."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.diagnosis_matrix import matrix, report  # noqa: E402
from benchmarks.diagnosis_matrix.checks import fault_check  # noqa: E402
from benchmarks.diagnosis_matrix.scenarios import SCENARIOS  # noqa: E402
from benchmarks.diagnosis_matrix.speech import WORDS, random_speaker  # noqa: E402
from benchmarks.diagnosis_matrix.words import (  # noqa: E402
    WordsConfig,
    generate_words,
    synthesize_clip,
)


def _result(expected: str, verdict: str, primary: str, severities=(), **extra) -> dict:
    findings = [{"code": "x", "severity": s, "score": 0.5, "title": ""} for s in severities]
    return {
        "key": f"user-mlp-words-{expected}-{verdict}-{primary}",
        "front_end": "user",
        "arch": "mlp",
        "dataset": "words",
        "scenario": "healthy" if expected == "none" else expected,
        "seed": 0,
        "expected": expected,
        "status": "ok",
        "verdict": verdict,
        "primary_cause": primary,
        "findings": findings,
        **extra,
    }


def test_a_healthy_run_alarms_on_a_stagnant_verdict_or_a_critical_finding() -> None:
    assert report.correct(_result("none", "healthy", "none"))
    assert report.correct(_result("none", "inconclusive", "underfitting", ["warning"]))
    assert not report.correct(_result("none", "stagnant", "none", ["warning"]))
    assert not report.correct(_result("none", "inconclusive", "lr_too_high", ["critical"]))


def test_a_faulty_run_is_right_only_with_its_cause_and_errors_are_counted_apart() -> None:
    results = [
        _result("lr_too_low", "stagnant", "lr_too_low"),
        _result("lr_too_low", "stagnant", "no_weight_updates"),
        _result("none", "stagnant", "none"),
        {**_result("label_noise", "", ""), "status": "timeout", "error": "killed"},
    ]
    overall = report.summarize(results)["overall"]
    assert (overall["faulty"], overall["cause_correct"], overall["cause_accuracy"]) == (2, 1, 0.5)
    assert (overall["healthy"], overall["false_alarms"], overall["errors"]) == (1, 1, 1)
    table = report.confusion_table(results)
    assert "[1]" in table and "ERR" in table
    text = report.misses(results)
    assert "primary no_weight_updates" in text and "timeout: killed" in text


def test_the_full_matrix_covers_every_scenario_front_end_and_seed_twice() -> None:
    specs = matrix.full_matrix()
    assert len({s.key for s in specs}) == len(specs)
    assert {s.scenario for s in specs} == set(SCENARIOS)
    assert {s.front_end for s in specs} == {"bundled", "user", "lightning"}
    for name in SCENARIOS:
        assert {s.seed for s in specs if s.scenario == name} == {0, 1}
    attention = matrix.select(specs, ["scenario=attention_collapse", "front_end=user"])
    assert {s.arch for s in attention} == {"transformer"}
    assert all("-gru-" in s.key for s in matrix.select(specs, ["gru"]))


def test_fault_checks_read_the_logged_pattern() -> None:
    negative = {"train_loss_min": -0.4, "val_majority": 0.1}
    assert fault_check({"scenario": "invalid_targets", "pattern": negative})[0] is True
    flat = {"train_loss_first": 2.3, "train_loss_min": 2.29, "val_first": 0.1, "val_best": 0.11}
    assert fault_check({"scenario": "lr_too_low", "pattern": flat})[0] is True
    moving = {**flat, "val_best": 0.6}
    assert fault_check({"scenario": "lr_too_low", "pattern": moving})[0] is False
    assert fault_check({"scenario": "lr_too_low"})[0] is None
    spiky = {"grad_norm_early": 6.0, "grad_norm_late": 4.0, "grad_norm_max": 1e3}
    assert fault_check({"scenario": "lr_too_high_sgd", "pattern": spiky})[0] is True
    grown = {**spiky, "grad_norm_late": 300.0}
    assert fault_check({"scenario": "lr_too_high_sgd", "pattern": grown})[0] is False
    assert fault_check({"scenario": "exploding_gradients", "pattern": grown})[0] is True


def test_words_clips_are_deterministic_and_in_range() -> None:
    config = WordsConfig()
    speaker = random_speaker(np.random.default_rng(3))
    clips = [
        synthesize_clip(word, speaker, config, np.random.default_rng(7)) for word in ("yes", "yes")
    ]
    np.testing.assert_array_equal(*clips)
    assert clips[0].dtype == np.float32 and len(clips[0]) == 16000
    assert 0 < np.abs(clips[0]).max() <= 1.0


def test_words_dataset_is_written_once_with_an_imbalance(tmp_path: Path) -> None:
    config = WordsConfig(n_words=3, clips_per_word=8, imbalance_ratio=4.0, n_speakers=3)
    assert config.counts() == [8, 4, 4]
    manifest = generate_words(config, root=tmp_path)
    rows = manifest.read_text().splitlines()
    assert rows[0] == "path,label,split" and len(rows) == 1 + sum(config.counts())
    labels = [row.split(",")[1] for row in rows[1:]]
    assert set(labels) == set(list(WORDS)[:3])
    for split in ("train", "val", "test"):
        assert sum(row.endswith("," + split) for row in rows) > 0
    info = sf.info(manifest.parent / rows[1].split(",")[0])
    assert (info.samplerate, info.subtype) == (16000, "PCM_16")
    mtime = manifest.stat().st_mtime_ns
    assert generate_words(config, root=tmp_path) == manifest
    assert manifest.stat().st_mtime_ns == mtime  # cached, not rewritten
    assert not list(tmp_path.glob("*.partial-*"))
