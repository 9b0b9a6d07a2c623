"""Class labels and file names are checked before training: unusable ones are data errors that
name the row, folder or file; unusual but valid ones (``<``, ``/``, ``..``, ``$``) stay
ordinary text, each its own class, and plots draw them literally."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest

from mlflow_audiodiag.data.audio_io import write_wav
from mlflow_audiodiag.data.sources import load_clip_table, read_manifest, scan_class_folders
from mlflow_audiodiag.errors import DataError
from mlflow_audiodiag.features.config import FeatureConfig
from mlflow_audiodiag.features.store import build_feature_store

SR = 8000
CONFIG = FeatureConfig(sample_rate=SR, clip_seconds=0.25, n_fft=256, hop_length=80, n_mels=16)
ODD_LABELS = ["$\\undefinedcmd$", "../x", "b/", "<b>&amp;", "a/b", "a_b", "a b", "A/B", ".."]


def _tone(freq: float) -> np.ndarray:
    t = np.arange(SR // 4) / SR
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _manifest(tmp_path: Path, labels: list[str], clips_per_label: int = 3) -> Path:
    lines = ["path,label,split"]
    for index, label in enumerate(labels):
        for clip in range(clips_per_label):
            name = f"{index}_{clip}.wav"
            write_wav(tmp_path / name, _tone(300.0 + 150 * index + 10 * clip), SR)
            split = "train" if clip < clips_per_label - 1 else "val"
            quoted = '"' + label.replace('"', '""') + '"'
            lines.append(f"{name},{quoted},{split}")
    path = tmp_path / "manifest.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_unusual_labels_are_ordinary_text_and_stay_distinct_classes(tmp_path) -> None:
    table = load_clip_table(_manifest(tmp_path, ODD_LABELS))
    store = build_feature_store(table, CONFIG, tmp_path / "cache", progress=False)
    assert sorted(store.classes) == sorted(ODD_LABELS)
    train = store.split("train")
    assert [store.classes[i] for i in train.labels] == [
        table.set_index("path").label[p] for p in train.paths
    ]


@pytest.mark.parametrize(
    ("label", "problem"),
    [
        ("dog\x07", "control character"),
        ("a\tb", "control character"),
        ("x" * 300, "300 characters"),
        ("line\u2028break", "control character"),
    ],
)
def test_unusable_manifest_labels_are_data_errors_naming_the_line(
    tmp_path, label: str, problem: str
) -> None:
    manifest = tmp_path / "m.csv"
    rows = ["path,label,split", "a.wav,cat,train", f'b.wav,"{label}",train', "c.wav,cat,val"]
    manifest.write_text("\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=f"m.csv line 3: .*{problem}") as error:
        read_manifest(manifest)
    assert "\x07" not in str(error.value) and "\t" not in str(error.value)  # shown escaped


def test_a_class_folder_with_a_control_character_is_a_data_error(tmp_path) -> None:
    for label in ("cat", "do\x01g"):
        for i in range(3):
            write_wav(tmp_path / label / f"{i}.wav", _tone(400.0 + i), SR)
    with pytest.raises(DataError, match=r"class folder .*do\\x01g.*control character"):
        scan_class_folders(tmp_path)


needs_bytes_names = pytest.mark.skipif(
    os.name != "posix", reason="file names that are not UTF-8 need a POSIX file system"
)


@needs_bytes_names
def test_a_class_folder_whose_name_is_not_utf8_is_a_data_error(tmp_path) -> None:
    for label in ("cat", "dog"):
        for i in range(3):
            write_wav(tmp_path / label / f"{i}.wav", _tone(500.0 + i), SR)
    root = os.fsencode(tmp_path)  # soundfile cannot write such names; rename the folder
    os.rename(os.path.join(root, b"dog"), os.path.join(root, b"d\xffg"))
    with pytest.raises(DataError, match=r"class folder .*d\\xffg.*not UTF-8") as error:
        scan_class_folders(tmp_path)
    str(error.value).encode("utf-8")  # printable as it is


def _folders_with_a_non_utf8_file(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for label, freq in (("low", 300.0), ("high", 1500.0)):
        for i in range(4):
            write_wav(root / label / f"{i}.wav", _tone(freq * (1 + 0.05 * i)), SR)
    write_wav(root / "low" / "cafe.wav", _tone(320.0), SR)
    os.rename(root / "low" / "cafe.wav", os.path.join(os.fsencode(root / "low"), b"caf\xe9.wav"))
    return root  # low/caf\xe9.wav: a Latin-1 name, as old archives have


@needs_bytes_names
def test_a_file_name_that_is_not_utf8_is_a_data_error_naming_it(tmp_path) -> None:
    table = load_clip_table(_folders_with_a_non_utf8_file(tmp_path))
    with pytest.raises(DataError, match=r"caf\\xe9\.wav.*not UTF-8.*on_bad_file=skip") as error:
        build_feature_store(table, CONFIG, tmp_path / "cache", progress=False)
    str(error.value).encode("utf-8")


@needs_bytes_names
def test_a_file_name_that_is_not_utf8_is_skipped_with_its_reason(tmp_path) -> None:
    table = load_clip_table(_folders_with_a_non_utf8_file(tmp_path))
    store = build_feature_store(
        table, CONFIG, tmp_path / "cache", on_bad_file="skip", progress=False
    )
    (skipped,) = store.skipped
    assert skipped.path.endswith("caf\\xe9.wav") and "not UTF-8" in skipped.reason
    assert (skipped.label, skipped.split) == ("low", "")
    skipped.path.encode("utf-8")  # goes into the skipped-files CSV as it is
    kept = sum(len(split) for split in store.splits.values())
    assert kept == 8


def test_the_confusion_matrix_draws_labels_literally() -> None:
    from mlflow_audiodiag.metrics import ClassificationScores
    from mlflow_audiodiag.training import artifacts
    from mlflow_audiodiag.training.loop import SplitResult

    drawn: list[bytes] = []

    class Sink:  # what the run logger would upload, kept here
        def log_figure(self, figure, name: str) -> None:
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png")  # where mathtext would fail
            drawn.append(buffer.getvalue())

        def log_text(self, text: str, name: str) -> None:
            pass

    result = SplitResult(
        loss=1.0,
        scores=ClassificationScores(0.5, 0.5, 0.5),
        targets=np.array([0, 1, 2, 3]),
        predictions=np.array([0, 1, 3, 2]),
    )
    labels = ["$\\undefinedcmd$", "$x_1$", "../x", "<b>"]
    artifacts.log_confusion_matrix(result, labels, "val", Sink())
    assert len(drawn) == 1 and drawn[0].startswith(b"\x89PNG")
