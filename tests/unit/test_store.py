"""Feature store on real WAV files: caching, bad-file policy and train-only normalization."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mlflow_audiodiag.data.audio_io import read_audio, write_wav
from mlflow_audiodiag.errors import DataError
from mlflow_audiodiag.features.config import FeatureConfig
from mlflow_audiodiag.features.extractor import FeatureExtractor
from mlflow_audiodiag.features.normalization import fit_normalization
from mlflow_audiodiag.features.store import build_feature_store

SR = 8000
CONFIG = FeatureConfig(sample_rate=SR, clip_seconds=0.25, n_fft=256, hop_length=80, n_mels=16)


def _tone(freq: float, seconds: float = 0.25, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(SR * seconds)) / SR
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _write_table(root: Path, per_split: dict[str, int]) -> pd.DataFrame:
    rows = []
    for label, freq in (("low", 300.0), ("high", 1500.0)):
        for split, count in per_split.items():
            for i in range(count):
                path = root / label / f"{split}_{i}.wav"
                write_wav(path, _tone(freq * (1 + 0.05 * i)), SR)
                rows.append((str(path), label, split))
    return pd.DataFrame(rows, columns=["path", "label", "split"])


def test_features_match_direct_extraction_and_labels_follow_classes(tmp_path: Path) -> None:
    table = _write_table(tmp_path / "audio", {"train": 3, "val": 2})
    store = build_feature_store(table, CONFIG, tmp_path / "cache", progress=False)
    assert store.classes == ["high", "low"]
    train = store.split("train")
    assert train.features.shape == (6, CONFIG.n_bins, CONFIG.n_frames)
    decoded = read_audio(table.path[0], SR)  # as stored: 16-bit PCM
    first = FeatureExtractor(CONFIG)(torch.from_numpy(decoded))[0].numpy()
    index = train.paths.index(table.path[0])
    np.testing.assert_allclose(train.features[index], first, rtol=1e-4, atol=1e-3)
    assert [store.classes[i] for i in train.labels] == [Path(p).parent.name for p in train.paths]


def test_second_build_reuses_the_cache_and_a_changed_file_invalidates_it(tmp_path: Path) -> None:
    table = _write_table(tmp_path / "audio", {"train": 2, "val": 1})
    first = build_feature_store(table, CONFIG, tmp_path / "cache", progress=False)
    stamp = (first.cache_dir / "index.json").stat().st_mtime_ns
    again = build_feature_store(table, CONFIG, tmp_path / "cache", progress=False)
    assert again.cache_dir == first.cache_dir
    assert (again.cache_dir / "index.json").stat().st_mtime_ns == stamp

    write_wav(table.path[0], _tone(700.0, seconds=0.2), SR)
    changed = build_feature_store(table, CONFIG, tmp_path / "cache", progress=False)
    assert changed.cache_dir != first.cache_dir


def test_bad_file_is_an_error_naming_the_file_by_default(tmp_path: Path) -> None:
    table = _write_table(tmp_path / "audio", {"train": 2, "val": 1})
    Path(table.path[1]).write_bytes(b"RIFF....not really a wav")
    with pytest.raises(DataError) as info:
        build_feature_store(table, CONFIG, tmp_path / "cache", progress=False)
    assert table.path[1] in str(info.value)


def test_skip_policy_lists_every_skipped_file_with_its_reason(tmp_path: Path) -> None:
    table = _write_table(tmp_path / "audio", {"train": 3, "val": 1})
    Path(table.path[0]).write_bytes(b"garbage")
    write_wav(table.path[1], np.zeros(SR // 4, dtype=np.float32), SR)
    store = build_feature_store(
        table, CONFIG, tmp_path / "cache", on_bad_file="skip", progress=False
    )
    skipped = {s.path: s.reason for s in store.skipped}
    assert set(skipped) == {table.path[0], table.path[1]}
    assert all(reason for reason in skipped.values())
    assert len(store.split("train")) == 4
    assert table.path[0] not in store.split("train").paths


def test_skipping_every_training_clip_of_a_class_is_an_error(tmp_path: Path) -> None:
    table = _write_table(tmp_path / "audio", {"train": 1, "val": 1})
    low_train = table[(table.label == "low") & (table.split == "train")].path.iloc[0]
    Path(low_train).write_bytes(b"garbage")
    with pytest.raises(DataError, match="after skipping 1 bad file"):
        build_feature_store(table, CONFIG, tmp_path / "cache", on_bad_file="skip", progress=False)


def test_longer_clips_are_counted_as_cropped(tmp_path: Path) -> None:
    table = _write_table(tmp_path / "audio", {"train": 2, "val": 1})
    write_wav(table.path[0], _tone(300.0, seconds=1.0), SR)
    store = build_feature_store(table, CONFIG, tmp_path / "cache", progress=False)
    assert store.cropped_clips == 1


def test_normalization_fit_never_sees_validation_or_test_audio(tmp_path: Path) -> None:
    table = _write_table(tmp_path / "audio", {"train": 3, "val": 2, "test": 2})

    def fitted() -> tuple[list[float], list[float], np.ndarray]:
        store = build_feature_store(table, CONFIG, tmp_path / "cache", progress=False)
        chunks = (torch.from_numpy(np.array(store.split("train").features)),)
        stats = fit_normalization(iter(chunks), "per_bin")
        return stats.mean, stats.std, np.array(store.split("val").features)

    mean_before, std_before, val_before = fitted()
    rng = np.random.default_rng(0)
    for path in table[table.split != "train"].path:  # wildly different val/test audio
        write_wav(path, (rng.standard_normal(SR // 4) * 0.9).clip(-1, 1).astype(np.float32), SR)
    mean_after, std_after, val_after = fitted()

    assert not np.allclose(val_before, val_after)
    assert mean_after == mean_before
    assert std_after == std_before
