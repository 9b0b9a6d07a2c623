"""Clip tables from manifests, class folders and the Speech Commands layout."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mlflow_audiodiag.data.audio_io import write_wav
from mlflow_audiodiag.data.sources import (
    BACKGROUND_NOISE_DIR,
    EXCLUDED_DIRS_ATTR,
    load_clip_table,
    read_manifest,
    scan_class_folders,
    scan_speech_commands,
)
from mlflow_audiodiag.errors import DataError


def make_wav(path: Path) -> Path:
    t = np.arange(800) / 16000
    write_wav(path, 0.3 * np.sin(2 * np.pi * 440 * t), 16000)
    return path


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --- manifest ---------------------------------------------------------------------------


def test_manifest_relative_paths_resolve_against_its_folder(tmp_path: Path) -> None:
    make_wav(tmp_path / "audio" / "a.wav")
    manifest = write_text(
        tmp_path / "lists" / "clips.csv",
        "path,label,split\n../audio/a.wav,dog,train\n/abs/b.wav,cat,val\n",
    )
    clips = read_manifest(manifest)
    assert list(clips.columns) == ["path", "label", "split"]
    assert clips["path"].tolist() == [str(tmp_path / "audio" / "a.wav"), "/abs/b.wav"]
    assert clips["label"].tolist() == ["dog", "cat"]
    assert clips["split"].tolist() == ["train", "val"]


def test_manifest_without_split_column_is_split_per_class(tmp_path: Path) -> None:
    rows = "".join(f"{label}{i}.wav,{label}\n" for label in ("a", "b") for i in range(20))
    clips = read_manifest(write_text(tmp_path / "m.csv", "path,label\n" + rows), 0.2, 0.2, seed=1)
    for label in ("a", "b"):
        assert clips[clips["label"] == label]["split"].value_counts().to_dict() == {
            "train": 12,
            "val": 4,
            "test": 4,
        }
    again = read_manifest(tmp_path / "m.csv", 0.2, 0.2, seed=1)
    assert clips.equals(again)


def test_manifest_with_empty_split_column_is_split_automatically(tmp_path: Path) -> None:
    rows = "".join(f"{i}.wav,{'ab'[i % 2]},\n" for i in range(12))
    clips = read_manifest(write_text(tmp_path / "m.csv", "path,label,split\n" + rows))
    assert set(clips["split"]) == {"train", "val", "test"}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("file,label\na.wav,x\n", r"line 1: header .* lacks the column\(s\) \['path'\]"),
        ("path,label\na.wav,x\nb.wav,\n", r"line 3: the label of b\.wav is empty"),
        ("path,label\na.wav,x\n  ,y\n", r"line 3: the path is blank"),
        (
            "path,label\na.wav,x\nb.wav,y\n./a.wav,z\n",
            r"line 4: \./a\.wav is listed again .*line 2",
        ),
        ("path,label,split\na.wav,x,train\nb.wav,y,\n", r"split column is empty .*lines 3\)"),
        ("path,label,split\na.wav,x,train\nb.wav,y,holdout\n", r"line 3: split 'holdout'"),
        ("path,label\n", r"has no clip rows"),
        ("path,label\na.wav,x,train\n", r"line 2 has 3 fields but the header has 2"),
        (
            "path,label,split\na.wav,x,train\nb.wav,y,train,extra\n",
            r"line 3 has 4 fields but the header has 3",
        ),
        ("path,label,split\na.wav,x,train\nb.wav,y\n", r"line 3 has 2 fields but the header"),
        ('path,label,split\n"a.wav,x",train\n', r"line 2 has 2 fields but the header has 3"),
    ],
)
def test_manifest_errors_name_the_line(tmp_path: Path, content: str, expected: str) -> None:
    manifest = write_text(tmp_path / "bad.csv", content)
    with pytest.raises(DataError, match=expected) as error:
        read_manifest(manifest)
    assert "bad.csv" in str(error.value)


def test_rows_with_a_split_under_a_header_without_one_are_rejected(tmp_path: Path) -> None:
    """Written splits must never be silently replaced by an automatic split."""
    rows = "".join(f"{i}.wav,{'ab'[i % 2]},{'train' if i < 12 else 'test'}\n" for i in range(20))
    manifest = write_text(tmp_path / "m.csv", "path,label\n" + rows)
    with pytest.raises(DataError, match=r"m\.csv line 2 has 3 fields .*add a split column"):
        read_manifest(manifest)


def test_manifest_that_is_not_text(tmp_path: Path) -> None:
    manifest = tmp_path / "binary.csv"
    manifest.write_bytes(b"path,label\n\xff\xfe\x00,x\n")
    with pytest.raises(DataError, match="binary.csv is not a readable UTF-8 CSV"):
        read_manifest(manifest)


# --- folder per class -------------------------------------------------------------------


def test_class_folders_are_scanned_recursively(tmp_path: Path) -> None:
    for label in ("cat", "dog"):
        for i in range(5):
            make_wav(tmp_path / label / f"{i}.wav")
    (tmp_path / "dog" / "nested").mkdir()
    sf.write(tmp_path / "dog" / "nested" / "deep.FLAC", np.full(800, 0.1), 16000, format="FLAC")
    (tmp_path / "cat" / "notes.txt").write_text("not audio")
    clips = scan_class_folders(tmp_path)
    assert clips["label"].value_counts().to_dict() == {"dog": 6, "cat": 5}
    assert all(Path(path).is_absolute() for path in clips["path"])
    assert not clips["path"].str.endswith(".txt").any()


def test_class_folders_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="has no class folders"):
        scan_class_folders(tmp_path)
    make_wav(tmp_path / "cat" / "1.wav")
    (tmp_path / "dog").mkdir()
    with pytest.raises(DataError, match=r"class folder .*dog has no audio files"):
        scan_class_folders(tmp_path)


# --- speech commands --------------------------------------------------------------------


def speech_commands_tree(root: Path) -> None:
    for word in ("yes", "no"):
        for i in range(4):
            make_wav(root / word / f"{word}_{i}.wav")
    make_wav(root / BACKGROUND_NOISE_DIR / "white_noise.wav")
    write_text(root / "validation_list.txt", "yes/yes_0.wav\nno/no_0.wav\n")
    write_text(root / "testing_list.txt", "yes/yes_1.wav\n\nno/no_1.wav\n")


def test_speech_commands_lists_and_background_noise(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    speech_commands_tree(tmp_path)
    with caplog.at_level(logging.INFO, logger="mlflow_audiodiag.data.sources"):
        clips = scan_speech_commands(tmp_path)
    assert set(clips["label"]) == {"yes", "no"}
    split_of = dict(zip(clips["path"], clips["split"], strict=True))
    assert split_of[str(tmp_path / "yes" / "yes_0.wav")] == "val"
    assert split_of[str(tmp_path / "no" / "no_1.wav")] == "test"
    assert split_of[str(tmp_path / "yes" / "yes_3.wav")] == "train"
    assert clips["split"].value_counts().to_dict() == {"train": 4, "val": 2, "test": 2}
    assert clips.attrs[EXCLUDED_DIRS_ATTR] == [BACKGROUND_NOISE_DIR]
    assert BACKGROUND_NOISE_DIR in caplog.text


def test_speech_commands_listed_file_must_exist(tmp_path: Path) -> None:
    speech_commands_tree(tmp_path)
    write_text(tmp_path / "testing_list.txt", "yes/yes_1.wav\nno/ghost.wav\n")
    with pytest.raises(DataError, match=r"testing_list\.txt line 2: no/ghost\.wav does not exist"):
        scan_speech_commands(tmp_path)


# --- auto-detection and coverage --------------------------------------------------------


def test_auto_detection(tmp_path: Path) -> None:
    speech = tmp_path / "speech"
    speech_commands_tree(speech)
    assert load_clip_table(speech)["split"].value_counts()["val"] == 2

    folders = tmp_path / "folders"
    for label in ("a", "b"):
        for i in range(6):
            make_wav(folders / label / f"{i}.wav")
    assert sorted(load_clip_table(folders)["label"].unique()) == ["a", "b"]

    with_manifest = tmp_path / "with_manifest"
    write_text(with_manifest / "manifest.csv", "path,label,split\nx.wav,p,train\ny.wav,q,train\n")
    assert load_clip_table(with_manifest)["label"].tolist() == ["p", "q"]
    assert load_clip_table(with_manifest / "manifest.csv")["label"].tolist() == ["p", "q"]


def test_missing_or_unsupported_source(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_clip_table(tmp_path / "absent")
    with pytest.raises(DataError, match="not a .csv manifest"):
        load_clip_table(make_wav(tmp_path / "one.wav"))


def test_unknown_validation_label_is_rejected(tmp_path: Path) -> None:
    manifest = write_text(
        tmp_path / "m.csv",
        "path,label,split\na.wav,dog,train\nb.wav,cat,train\nc.wav,owl,val\n",
    )
    with pytest.raises(DataError, match=r"'owl' has 1 clip\(s\) in val but none in train.*c\.wav"):
        load_clip_table(manifest)


def test_class_without_training_examples_in_speech_commands(tmp_path: Path) -> None:
    speech_commands_tree(tmp_path)
    make_wav(tmp_path / "maybe" / "maybe_0.wav")
    write_text(tmp_path / "testing_list.txt", "yes/yes_1.wav\nmaybe/maybe_0.wav\n")
    with pytest.raises(DataError, match="'maybe' has 1 clip.* in test but none in train"):
        load_clip_table(tmp_path)
