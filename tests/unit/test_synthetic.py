"""The embedded synthetic dataset: determinism, caching, balance, splits, and pair structure."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from support import processes

from mlflow_audiodiag.data.sources import load_clip_table
from mlflow_audiodiag.data.synthetic import (
    CLASS_NAMES,
    SyntheticConfig,
    default_cache_root,
    generate_dataset,
    synthesize_clip,
)
from mlflow_audiodiag.errors import ConfigError
from mlflow_audiodiag.features.config import FeatureConfig
from mlflow_audiodiag.features.extractor import FeatureExtractor

SMALL = SyntheticConfig(n_classes=4, clips_per_class=6, duration_s=0.5)


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_same_seed_gives_identical_files(tmp_path: Path) -> None:
    first = generate_dataset(tmp_path / "one", SMALL, progress=False).parent
    second = generate_dataset(tmp_path / "two", SMALL, progress=False).parent
    assert folder_bytes(first) == folder_bytes(second)
    other_seed = SyntheticConfig(n_classes=4, clips_per_class=6, duration_s=0.5, seed=1)
    third = generate_dataset(tmp_path / "three", other_seed, progress=False).parent
    assert folder_bytes(first) != folder_bytes(third)


def test_clips_are_audible_16_bit_mono(tmp_path: Path) -> None:
    manifest = generate_dataset(tmp_path, SMALL, progress=False)
    table = pd.read_csv(manifest)
    assert list(table.columns) == ["path", "label", "split"]
    assert not any(Path(path).is_absolute() for path in table["path"])
    info = sf.info(tmp_path / table["path"][0])
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (16000, 1, "PCM_16", 8000)
    samples, _ = sf.read(tmp_path / table["path"][0])
    assert 0.1 < np.abs(samples).max() <= 1.0


def test_existing_dataset_is_reused_and_changed_config_regenerates(tmp_path: Path) -> None:
    manifest = generate_dataset(tmp_path, SMALL, progress=False)
    stamps = {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*.wav")}
    assert generate_dataset(tmp_path, SMALL, progress=False) == manifest
    assert {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*.wav")} == stamps

    bigger = SyntheticConfig(n_classes=4, clips_per_class=7, duration_s=0.5)
    generate_dataset(tmp_path, bigger, progress=False)
    assert json.loads((tmp_path / "dataset.json").read_text())["clips_per_class"] == 7
    assert len(pd.read_csv(manifest)) == 28
    assert len(list(tmp_path.rglob("*.wav"))) == 28


def test_interrupted_generation_is_not_reused(tmp_path: Path) -> None:
    manifest = generate_dataset(tmp_path, SMALL, progress=False)
    manifest.unlink()  # as if generation stopped before the manifest was written
    assert generate_dataset(tmp_path, SMALL, progress=False).is_file()


def test_default_location_uses_cache_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIODIAG_CACHE_DIR", str(tmp_path / "cache"))
    manifest = generate_dataset(None, SMALL, progress=False)
    assert manifest.parent == tmp_path / "cache" / f"synthetic-{SMALL.short_hash()}"


def test_default_cache_root_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AUDIODIAG_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_root() == tmp_path / "xdg" / "mlflow-audiodiag"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_root() == Path.home() / ".cache" / "mlflow-audiodiag"
    monkeypatch.setenv("AUDIODIAG_CACHE_DIR", str(tmp_path / "explicit"))
    assert default_cache_root() == tmp_path / "explicit"


def test_imbalance_counts_and_every_class_in_every_split(tmp_path: Path) -> None:
    config = SyntheticConfig(n_classes=4, clips_per_class=20, imbalance_ratio=4.0, duration_s=0.5)
    assert config.class_counts() == [20, 13, 8, 5]
    table = load_clip_table(generate_dataset(tmp_path, config, progress=False))
    counts = table["label"].value_counts()
    assert [counts[name] for name in CLASS_NAMES[:4]] == [20, 13, 8, 5]
    for split in ("train", "val", "test"):
        assert set(table[table["split"] == split]["label"]) == set(CLASS_NAMES[:4])


@pytest.mark.parametrize(
    "settings",
    [
        {"n_classes": 1},
        {"n_classes": 9},
        {"imbalance_ratio": 0.5},
        {"clips_per_class": 4, "imbalance_ratio": 3.0},
        {"snr_db": (20.0, 5.0)},
        {"val_fraction": 0.0},
    ],
)
def test_invalid_config(settings: dict) -> None:
    with pytest.raises(ConfigError):
        SyntheticConfig(**settings)


@pytest.mark.parametrize("pair", [("chirp_up", "chirp_down"), ("tones_low_high", "tones_high_low")])
def test_pair_has_same_average_spectrum_but_different_frames(pair: tuple[str, str]) -> None:
    """With the same random draws the two members are time reversals of one another."""
    config = SyntheticConfig()
    extractor = FeatureExtractor(FeatureConfig())
    for seed in range(3):
        first, second = (
            extractor(torch.from_numpy(synthesize_clip(name, config, np.random.default_rng(seed))))
            for name in pair
        )
        first, second = first[0], second[0]
        clip_mean_gap = (first.mean(dim=1) - second.mean(dim=1)).abs().max().item()
        loud = torch.maximum(first, second) > first.max() - 10
        frame_gap = (first - second).abs()[loud].mean().item()
        assert clip_mean_gap < 1.5
        assert frame_gap > 10 * clip_mean_gap
        # The loudest band moves in opposite directions over the event.
        slopes = []
        for features in (first[8:], second[8:]):  # above the pink-noise rumble
            active = np.flatnonzero((features.max(dim=0).values > features.max() - 10).numpy())
            peak_band = features.argmax(dim=0).numpy()[active]
            slopes.append(np.polyfit(active, peak_band, 1)[0])
        assert slopes[0] > 0 > slopes[1]


# Waits for its go file, generates the dataset, then checks that every clip its manifest lists
# is there and readable.
_GENERATE_AND_READ = """
import sys, time
from pathlib import Path
import pandas as pd, soundfile as sf
from mlflow_audiodiag.data.synthetic import SyntheticConfig, generate_dataset
config = SyntheticConfig(n_classes=2, clips_per_class=int(sys.argv[2]), duration_s=0.5)
while not Path(sys.argv[3]).exists():
    time.sleep(0.01)
manifest = generate_dataset(Path(sys.argv[1]), config, progress=False)
for relative in pd.read_csv(manifest)["path"]:
    path = manifest.parent / relative
    if not path.is_file():
        sys.exit(f"{path} does not exist")
    sf.read(path)
print("complete")
"""


def _wav_count(folder: Path) -> int:
    """WAV files under ``folder`` now; 0 when a folder vanished during the scan (the
    generator renames its partial folder into place), so the caller polls again."""
    try:
        return sum(1 for _ in folder.rglob("*.wav"))
    except FileNotFoundError:
        return 0


@pytest.mark.slow
def test_simultaneous_first_generations_all_get_a_complete_dataset(tmp_path: Path) -> None:
    """Four trainings starting at once on an empty cache: the later ones must neither delete
    the clips the first is writing nor read a dataset still being written."""
    clips = 400
    out = tmp_path / "synthetic"
    go_first, go_next = tmp_path / "go-first", tmp_path / "go-next"
    with contextlib.ExitStack() as stack:

        def start(go: Path) -> subprocess.Popen:
            command = [sys.executable, "-c", _GENERATE_AND_READ, str(out), str(clips), str(go)]
            return stack.enter_context(
                processes.spawned(
                    command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
                )
            )

        children = {"first": start(go_first), **{f"next-{i}": start(go_next) for i in range(3)}}
        go_first.touch()
        deadline = time.monotonic() + 120
        while _wav_count(out) < 0.85 * 2 * clips and time.monotonic() < deadline:
            time.sleep(0.01)  # the others start when the first is nearly done
        go_next.touch()
        results = processes.communicate_all(children, timeout_s=300)
    for name, (code, out_text, err) in results.items():
        assert code == 0 and "complete" in out_text, f"{name}: {err[-2000:]}"
    assert len(pd.read_csv(out / "manifest.csv")) == 2 * clips
