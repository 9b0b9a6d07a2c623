"""The benchmark's datasets and the user-side features computed from them.

Two families made differently: ``tones`` is the package's embedded synthetic corpus, and
``words`` the synthesised spoken words of :mod:`.words`; each has a ``_hard`` (noisier: a
healthy model converges below 0.9) and an ``_imbalanced`` (20:1, noisy) variant.

User loops compute their own features once per dataset and kind (torchaudio
``MelSpectrogram``, cached as ``.npy`` under ``$AUDIODIAG_CACHE_DIR/matrix-features``):
``logmel`` (dB, ``top_db`` 80), ``power`` (linear mel power, no dB), ``log_padded`` (clips
zero-padded to 1.25 s and ``log`` taken without a floor) and ``logmel_int16`` (the clips read
as raw int16 counts instead of floats).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

from benchmarks.diagnosis_matrix.words import WordsConfig, cache_root, generate_words

N_MELS = 40
SAMPLE_RATE = 16000
FEATURE_KINDS = ("logmel", "power", "log_padded", "logmel_int16")
_FEATURE_VERSION = 1
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class DatasetSpec:
    """A named dataset: ``family`` ``tones`` (package generator settings) or ``words``."""

    name: str
    family: str
    settings: dict


DATASETS: dict[str, DatasetSpec] = {
    s.name: s
    for s in (
        DatasetSpec("tones", "tones", {"clips_per_class": 80}),
        DatasetSpec("tones_hard", "tones", {"clips_per_class": 80, "snr_db": (-18.0, -12.0)}),
        DatasetSpec(
            "tones_imbalanced",
            "tones",
            {"clips_per_class": 120, "imbalance_ratio": 20.0, "snr_db": (-5.0, 0.0)},
        ),
        DatasetSpec("words", "words", {}),
        DatasetSpec("words_hard", "words", {"snr_db": (-6.0, 0.0)}),
        DatasetSpec(
            "words_imbalanced",
            "words",
            {"clips_per_word": 120, "imbalance_ratio": 20.0, "snr_db": (-3.0, 5.0)},
        ),
    )
}


def family(dataset: str) -> str:
    return DATASETS[dataset].family


def manifest(dataset: str) -> Path:
    """The dataset's ``manifest.csv`` (``path,label,split``), generated when missing."""
    spec = DATASETS[dataset]
    if spec.family == "words":
        return generate_words(WordsConfig(**spec.settings))
    from mlflow_audiodiag.data.synthetic import SyntheticConfig, generate_dataset

    return generate_dataset(None, SyntheticConfig(**spec.settings), progress=False)


def read_manifest(path: Path) -> list[tuple[Path, str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return [
            (path.parent / row["path"], row["label"], row["split"])
            for row in csv.DictReader(handle)
        ]


@dataclass
class Arrays:
    """Features ``[clips, mels, frames]``, integer labels and split names of one dataset."""

    classes: list[str]
    features: np.ndarray
    labels: np.ndarray
    splits: np.ndarray

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.splits == _SPLIT_CODES[name]
        return torch.from_numpy(self.features[rows].copy()), torch.from_numpy(self.labels[rows])


def _mel() -> torchaudio.transforms.MelSpectrogram:
    return torchaudio.transforms.MelSpectrogram(
        SAMPLE_RATE, n_fft=400, hop_length=160, n_mels=N_MELS
    )


def _compute(rows: list[tuple[Path, str, str]], kind: str) -> np.ndarray:
    mel = _mel()
    to_db = torchaudio.transforms.AmplitudeToDB("power", top_db=80.0)
    length = int(1.25 * SAMPLE_RATE) if kind == "log_padded" else SAMPLE_RATE
    waves = np.zeros((len(rows), length), dtype=np.float32)
    for index, (path, _, _) in enumerate(rows):
        dtype = "int16" if kind == "logmel_int16" else "float32"
        samples, _ = sf.read(path, dtype=dtype)
        samples = samples[:SAMPLE_RATE].astype(np.float32)
        waves[index, : len(samples)] = samples
    out = []
    with torch.no_grad():
        for start in range(0, len(waves), 128):
            power = mel(torch.from_numpy(waves[start : start + 128]))
            if kind == "power":
                out.append(power)
            elif kind == "log_padded":
                out.append(torch.log(power))  # no floor: log(0) on the padding
            else:
                out.append(to_db(power.unsqueeze(1)).squeeze(1))  # top_db per clip
    return torch.cat(out).numpy().astype(np.float32)


def load_arrays(dataset: str, kind: str = "logmel") -> Arrays:
    """Features of ``kind`` for every clip of ``dataset`` (computed once, then cached)."""
    if kind not in FEATURE_KINDS:
        raise ValueError(f"unknown feature kind {kind!r}; known: {', '.join(FEATURE_KINDS)}")
    source = manifest(dataset)
    folder = cache_root() / "matrix-features" / f"{source.parent.name}-{kind}-v{_FEATURE_VERSION}"
    if not (folder / "classes.json").is_file():
        rows = read_manifest(source)
        classes = sorted({label for _, label, _ in rows})
        partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
        partial.mkdir(parents=True, exist_ok=True)
        np.save(partial / "features.npy", _compute(rows, kind))
        np.save(partial / "labels.npy", np.array([classes.index(r[1]) for r in rows]))
        np.save(partial / "splits.npy", np.array([_SPLIT_CODES[r[2]] for r in rows]))
        (partial / "classes.json").write_text(json.dumps(classes))
        try:
            partial.rename(folder)
        except OSError:  # published by another process meanwhile
            shutil.rmtree(partial, ignore_errors=True)
    return Arrays(
        json.loads((folder / "classes.json").read_text()),
        np.load(folder / "features.npy"),
        np.load(folder / "labels.npy").astype(np.int64),
        np.load(folder / "splits.npy"),
    )


def derived_manifest(dataset: str, train_per_class: int = 0, val_per_class: int = 0) -> Path:
    """A manifest of ``dataset`` (absolute paths) keeping the first ``train_per_class``
    training clips and ``val_per_class`` val clips of each class (0: all); val clips left
    out move to test. Written once, atomically."""
    source = manifest(dataset)
    if not train_per_class and not val_per_class:
        return source
    name = f"{source.parent.name}-t{train_per_class}-v{val_per_class}.csv"
    target = cache_root() / "matrix-manifests" / name
    if target.is_file():
        return target
    seen: dict[tuple[str, str], int] = {}
    rows = []
    for path, label, split in read_manifest(source):
        count = seen[(label, split)] = seen.get((label, split), 0) + 1
        if split == "train" and train_per_class and count > train_per_class:
            continue
        if split == "val" and val_per_class and count > val_per_class:
            split = "test"
        rows.append((str(path.resolve()), label, split))
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{name}.partial-{os.getpid()}")
    with partial.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split"])
        writer.writerows(rows)
    partial.replace(target)
    return target
