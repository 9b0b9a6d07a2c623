"""Reads every clip once, screens it, and caches its unaugmented features on disk.

The cache is a folder of ``.npy`` files opened as memory maps, keyed by a hash of the clip
table (paths, sizes, modification times, labels, splits), the feature settings and the bad-file
policy, so a second run (and every epoch after the first) reuses them instead of recomputing.
Training waveforms are cached too when waveform augmentation needs them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from mlflow_audiodiag.data.audio_io import clip_levels, read_audio
from mlflow_audiodiag.data.locks import exclusive_lock
from mlflow_audiodiag.data.sources import BAD_NAMES_ATTR
from mlflow_audiodiag.data.splits import SPLITS, check_label_coverage
from mlflow_audiodiag.errors import DataError
from mlflow_audiodiag.features.config import FeatureConfig
from mlflow_audiodiag.features.extractor import FeatureExtractor
from mlflow_audiodiag.features.waveform import fix_length

logger = logging.getLogger(__name__)

_CACHE_FORMAT = 2
_BATCH = 64
_SKIP_HINT = (
    "(or set on_bad_file=skip to leave bad files out; the run then lists each one with its reason)"
)


@dataclass(frozen=True)
class SkippedFile:
    """A clip left out under ``on_bad_file=skip``, and why."""

    path: str
    label: str
    split: str
    reason: str


@dataclass
class SplitFeatures:
    """Unaugmented features (and optionally fixed-length waveforms) of one split."""

    name: str
    paths: list[str]
    labels: np.ndarray
    features: np.ndarray
    levels: np.ndarray
    """Per clip as decoded: ``[rms_dbfs, peak_dbfs, full_scale_share]``."""
    waveforms: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class FeatureStore:
    """All splits of a dataset as cached features, plus what screening left out."""

    classes: list[str]
    splits: dict[str, SplitFeatures]
    skipped: list[SkippedFile]
    cropped_clips: int
    cache_dir: Path

    def split(self, name: str) -> SplitFeatures | None:
        return self.splits.get(name)


def build_feature_store(
    table: pd.DataFrame,
    config: FeatureConfig,
    cache_root: Path,
    on_bad_file: str = "error",
    waveform_splits: Iterable[str] = (),
    progress: bool = True,
) -> FeatureStore:
    """Returns the cached store for ``table``, computing what is missing.

    Raises :class:`DataError` for the first bad clip under ``on_bad_file="error"``; under
    ``"skip"`` bad clips are listed in :attr:`FeatureStore.skipped`, and the label checks are
    repeated on what remains so a class cannot silently lose all its training clips.
    """
    check_label_coverage(table)
    bad_names = [
        SkippedFile(path, label, "", reason)
        for path, label, reason in table.attrs.get(BAD_NAMES_ATTR, [])
    ]
    if bad_names and on_bad_file != "skip":
        raise DataError(f"{bad_names[0].reason} {_SKIP_HINT}")
    waveform_splits = tuple(sorted(set(waveform_splits)))
    key = _cache_key(table, config, on_bad_file, waveform_splits, bad_names)
    cache_dir = Path(cache_root) / f"features-{key}"
    index_path = cache_dir / "index.json"
    if not index_path.exists():
        # Trainings starting together compute it once: the others wait, then load it.
        with exclusive_lock(Path(cache_root) / f".features-{key}.lock"):
            if not index_path.exists():
                _compute(
                    table, config, cache_dir, on_bad_file, waveform_splits, progress, bad_names
                )
    return _load(cache_dir)


def _cache_key(
    table: pd.DataFrame,
    config: FeatureConfig,
    on_bad_file: str,
    waveform_splits: tuple,
    bad_names: list[SkippedFile],
) -> str:
    digest = hashlib.sha256()
    digest.update(
        json.dumps([_CACHE_FORMAT, asdict(config), on_bad_file, waveform_splits]).encode()
    )
    for skipped in bad_names:
        digest.update(f"bad name\0{skipped.path}\n".encode())
    for path, label, split in table[["path", "label", "split"]].itertuples(index=False):
        try:
            stat = os.stat(path)
            signature = f"{stat.st_size}:{stat.st_mtime_ns}"
        except OSError:
            signature = "missing"
        digest.update(f"{path}\0{label}\0{split}\0{signature}\n".encode())
    return digest.hexdigest()[:16]


def _compute(
    table: pd.DataFrame,
    config: FeatureConfig,
    cache_dir: Path,
    on_bad_file: str,
    waveform_splits: tuple[str, ...],
    progress: bool,
    bad_names: list[SkippedFile],
) -> None:
    cache_dir.mkdir(parents=True, exist_ok=True)
    extractor = FeatureExtractor(config)
    skipped: list[SkippedFile] = list(bad_names)
    kept_rows: list[tuple[str, str, str]] = []
    levels: list[tuple[float, float, float]] = []
    cropped = 0
    bar = tqdm(total=len(table), desc="Extracting features", unit="clip", disable=not progress)
    for split in SPLITS:
        rows = table[table["split"] == split]
        if rows.empty:
            continue
        features = np.lib.format.open_memmap(
            cache_dir / f"{split}_features.npy",
            mode="w+",
            dtype=np.float32,
            shape=(len(rows), config.n_bins, config.n_frames),
        )
        waves = None
        if split in waveform_splits:
            waves = np.lib.format.open_memmap(
                cache_dir / f"{split}_waveforms.npy",
                mode="w+",
                dtype=np.float32,
                shape=(len(rows), config.num_samples),
            )
        kept = 0
        pending: list[np.ndarray] = []
        for path, label in rows[["path", "label"]].itertuples(index=False):
            bar.update(1)
            try:
                wave = read_audio(path, config.sample_rate)
            except DataError as error:
                if on_bad_file != "skip":
                    raise DataError(f"{error} {_SKIP_HINT}") from error
                skipped.append(SkippedFile(path, label, split, str(error)))
                continue
            levels.append(clip_levels(wave))
            if len(wave) > config.num_samples:
                cropped += 1
            wave = fix_length(wave, config.num_samples)
            if waves is not None:
                waves[kept] = wave
            pending.append(wave)
            kept_rows.append((path, label, split))
            kept += 1
            if len(pending) == _BATCH:
                _extract_into(extractor, pending, features, kept - len(pending))
                pending = []
        if pending:
            _extract_into(extractor, pending, features, kept - len(pending))
        features.flush()
        if waves is not None:
            waves.flush()
    bar.close()

    if skipped:
        logger.warning(
            "Skipped %d bad file(s) (on_bad_file=skip); they are listed with their reasons "
            "in the run's skipped-files artifact. First: %s",
            len(skipped),
            skipped[0].reason,
        )
        remaining = pd.DataFrame(kept_rows, columns=["path", "label", "split"])
        try:
            check_label_coverage(remaining)
        except DataError as error:
            raise DataError(
                f"after skipping {len(skipped)} bad file(s) the dataset is unusable: {error}"
            ) from error
    classes = check_label_coverage(pd.DataFrame(kept_rows, columns=["path", "label", "split"]))
    index = {
        "format": _CACHE_FORMAT,
        "classes": classes,
        "rows": kept_rows,
        "levels": levels,
        "skipped": [asdict(s) for s in skipped],
        "cropped_clips": cropped,
        "waveform_splits": list(waveform_splits),
    }
    # Written last: a crash before this point leaves no index, so the cache is rebuilt.
    _write_json(cache_dir / "index.json", index)


def _extract_into(
    extractor: FeatureExtractor, waves: list[np.ndarray], out: np.ndarray, start: int
) -> None:
    batch = extractor(torch.from_numpy(np.stack(waves)))
    out[start : start + len(waves)] = batch.numpy()


def _load(cache_dir: Path) -> FeatureStore:
    index = json.loads((cache_dir / "index.json").read_text())
    classes = index["classes"]
    class_index = {name: i for i, name in enumerate(classes)}
    rows = pd.DataFrame(index["rows"], columns=["path", "label", "split"])
    levels = np.asarray(index["levels"], dtype=np.float64).reshape(-1, 3)
    splits: dict[str, SplitFeatures] = {}
    for split in SPLITS:
        part = rows[rows["split"] == split]
        if part.empty:
            continue
        count = len(part)
        features = np.load(cache_dir / f"{split}_features.npy", mmap_mode="r")[:count]
        waves_path = cache_dir / f"{split}_waveforms.npy"
        waves = np.load(waves_path, mmap_mode="r")[:count] if waves_path.exists() else None
        labels = np.array([class_index[label] for label in part["label"]], dtype=np.int64)
        splits[split] = SplitFeatures(
            split, part["path"].tolist(), labels, features, levels[part.index], waves
        )
    skipped = [SkippedFile(**s) for s in index["skipped"]]
    return FeatureStore(classes, splits, skipped, index["cropped_clips"], cache_dir)


def _write_json(path: Path, payload: object) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload))
    tmp.replace(path)
