"""The user's own audio as a clip table with columns ``path`` (absolute), ``label``, ``split``.

Supported layouts: a CSV manifest, a folder per class, and the Speech Commands layout.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mlflow_audiodiag.data.names import bad_name_reason, check_label, is_utf8, printable
from mlflow_audiodiag.data.splits import SPLITS, check_label_coverage, stratified_split
from mlflow_audiodiag.errors import DataError

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
MANIFEST_NAME = "manifest.csv"
SPEECH_COMMANDS_LISTS = {"val": "validation_list.txt", "test": "testing_list.txt"}
BACKGROUND_NOISE_DIR = "_background_noise_"
EXCLUDED_DIRS_ATTR = "excluded_dirs"
"""Key of ``DataFrame.attrs`` listing folders that were found but deliberately left out."""
BAD_NAMES_ATTR = "bad_file_names"
"""Key of ``DataFrame.attrs`` listing ``(printable path, label, reason)`` of audio files left
out of the table because their names are not UTF-8; the ``on_bad_file`` policy decides."""

_COLUMNS = ["path", "label", "split"]


def _absolute(path: Path) -> str:
    return os.path.normpath(path.absolute())


def _table(paths: list[str], labels: list[str], splits: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"path": paths, "label": labels, "split": splits}, columns=_COLUMNS)


@dataclass(frozen=True)
class _ManifestRow:
    line: int
    path: str
    label: str
    split: str


def _manifest_rows(csv_path: Path) -> list[_ManifestRow]:
    """Rows of a manifest with absolute paths; checks header, blanks and duplicates."""
    base_dir = csv_path.absolute().parent
    rows: list[_ManifestRow] = []
    first_line_of_path: dict[str, int] = {}
    with csv_path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [name.strip() for name in (reader.fieldnames or [])]
        missing = [column for column in ("path", "label") if column not in header]
        if missing:
            raise DataError(
                f"{csv_path} line 1: header {header} lacks the column(s) {missing}; the first "
                "line must be 'path,label' or 'path,label,split'"
            )
        reader.fieldnames = header
        for row in reader:
            line = reader.line_num
            _check_field_count(csv_path, line, header, row)
            raw_path = (row.get("path") or "").strip()
            label = (row.get("label") or "").strip()
            if not raw_path:
                raise DataError(
                    f"{csv_path} line {line}: the path is blank; fill it in or remove the row"
                )
            if not label:
                raise DataError(
                    f"{csv_path} line {line}: the label of {raw_path} is empty; fill it in or "
                    "remove the row"
                )
            check_label(label, f"{csv_path} line {line}", "fix the label in the manifest")
            path = _absolute(base_dir / raw_path)
            if path in first_line_of_path:
                raise DataError(
                    f"{csv_path} line {line}: {raw_path} is listed again (first on line "
                    f"{first_line_of_path[path]}); remove the duplicate row"
                )
            first_line_of_path[path] = line
            rows.append(_ManifestRow(line, path, label, (row.get("split") or "").strip()))
    return rows


def _check_field_count(csv_path: Path, line: int, header: list[str], row: dict) -> None:
    """A row with more or fewer fields than the header would put values in the wrong columns
    (a written split ignored, a comma in a path shifting the label): reject it."""
    extra = row.get(None) or []
    missing = sum(1 for key, value in row.items() if key is not None and value is None)
    if not extra and not missing:
        return
    count = len(header) + len(extra) - missing
    if extra and "split" not in header and len(extra) == 1:
        fix = "if the last field is the split, add a split column to the header (path,label,split)"
    elif extra:
        fix = 'quote fields that contain commas ("a,b.wav") or remove the extra fields'
    else:
        fix = "fill in the missing fields (an empty split still needs its comma: a.wav,dog,)"
    raise DataError(
        f"{csv_path} line {line} has {count} fields but the header has {len(header)} "
        f"({','.join(header)}): {fix}"
    )


def read_manifest(
    csv_path: str | Path, val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0
) -> pd.DataFrame:
    """Read a CSV manifest with header ``path,label[,split]``.

    Relative paths are relative to the CSV's folder. Without a split column (or with an
    entirely empty one) the clips are split per class with ``stratified_split``.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataError(f"manifest {csv_path} does not exist: check the path")
    try:
        rows = _manifest_rows(csv_path)
    except (UnicodeDecodeError, csv.Error) as error:
        raise DataError(
            f"manifest {csv_path} is not a readable UTF-8 CSV file ({error}): save it as CSV "
            "with the header path,label[,split]"
        ) from error
    if not rows:
        raise DataError(f"manifest {csv_path} has no clip rows below its header: add clips")

    paths = [row.path for row in rows]
    labels = [row.label for row in rows]
    unsplit = [row.line for row in rows if not row.split]
    if len(unsplit) == len(rows):
        splits = list(stratified_split(labels, val_fraction, test_fraction, seed))
        return _table(paths, labels, splits)
    if unsplit:
        shown = ", ".join(str(line) for line in unsplit[:5])
        raise DataError(
            f"{csv_path}: the split column is empty on {len(unsplit)} row(s) (lines {shown}"
            f"{' ...' if len(unsplit) > 5 else ''}) but filled on others; fill it on every "
            "row (train/val/test) or leave it empty everywhere to split automatically"
        )
    for row in rows:
        if row.split not in SPLITS:
            raise DataError(
                f"{csv_path} line {row.line}: split {row.split!r} of {row.path} is not one of "
                f"{', '.join(SPLITS)}; fix the value or remove the row"
            )
    return _table(paths, labels, [row.split for row in rows])


def _audio_files(
    folder: Path, extensions: tuple[str, ...], recursive: bool, bad_names: list | None = None
) -> list[Path]:
    """Audio files under ``folder``; those whose names are not UTF-8 go to ``bad_names`` as
    ``(printable path, label, reason)``."""
    candidates = folder.rglob("*") if recursive else folder.glob("*")
    files = sorted(
        path for path in candidates if path.is_file() and path.suffix.lower() in extensions
    )
    if bad_names is not None:
        for path in files:
            if not is_utf8(path):
                bad_names.append((printable(_absolute(path)), folder.name, bad_name_reason(path)))
    return [path for path in files if is_utf8(path)]


def _class_folders(root: Path) -> tuple[list[Path], list[str]]:
    """Class folders under ``root`` and the names of excluded folders."""
    folders, excluded = [], []
    for child in sorted(root.iterdir()):
        if not child.is_dir() or child.name.startswith("."):
            continue
        if child.name == BACKGROUND_NOISE_DIR:
            excluded.append(child.name)
            logger.info("%s: folder %s holds background noise, not a class; left out", root, child)
            continue
        check_label(child.name, f"class folder {printable(child)}", "rename the folder")
        folders.append(child)
    return folders, excluded


def scan_class_folders(
    root: str | Path,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    extensions: tuple[str, ...] = AUDIO_EXTENSIONS,
) -> pd.DataFrame:
    """Clip table of a folder-per-class layout: ``root/LABEL/**/*.wav|flac|ogg``."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist: check the path")
    folders, excluded = _class_folders(root)
    if not folders:
        raise DataError(
            f"{root} has no class folders: put each class's clips in a subfolder named after "
            "the label (root/LABEL/clip.wav), or pass a manifest CSV"
        )
    paths: list[str] = []
    labels: list[str] = []
    bad_names: list[tuple[str, str, str]] = []
    for folder in folders:
        files = _audio_files(folder, extensions, recursive=True, bad_names=bad_names)
        if not files:
            raise DataError(
                f"class folder {folder} has no audio files ({', '.join(extensions)}"
                f"{'' if not bad_names else '; some names are not UTF-8 text'}): add clips, "
                "rename them, or remove the folder"
            )
        paths.extend(_absolute(path) for path in files)
        labels.extend([folder.name] * len(files))
    splits = stratified_split(labels, val_fraction, test_fraction, seed)
    table = _table(paths, labels, list(splits))
    table.attrs[EXCLUDED_DIRS_ATTR] = excluded
    table.attrs[BAD_NAMES_ATTR] = bad_names
    return table


def _read_speech_commands_list(root: Path, list_name: str) -> list[tuple[int, str]]:
    """``(line number, relative path)`` entries of a Speech Commands split list."""
    list_path = root / list_name
    if not list_path.is_file():
        return []
    entries = []
    with list_path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            relative = line.strip()
            if relative:
                entries.append((line_number, relative))
    return entries


def scan_speech_commands(root: str | Path) -> pd.DataFrame:
    """Clip table of the Speech Commands layout: ``WORD/*.wav`` plus split lists.

    Files named in ``validation_list.txt`` go to ``val``, those in ``testing_list.txt`` to
    ``test``, the rest to ``train``. The ``_background_noise_`` folder is not a class; it is
    left out and listed in ``table.attrs[EXCLUDED_DIRS_ATTR]``.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist: check the path")
    folders, excluded = _class_folders(root)
    split_of: dict[str, str] = {}
    bad_names: list[tuple[str, str, str]] = []
    for folder in folders:
        for path in _audio_files(folder, (".wav",), recursive=False, bad_names=bad_names):
            split_of[path.relative_to(root).as_posix()] = "train"
    if not split_of:
        raise DataError(f"{root} has no WORD/*.wav clips: check the Speech Commands folder")

    listed_in: dict[str, str] = {}
    for split, list_name in SPEECH_COMMANDS_LISTS.items():
        for line_number, relative in _read_speech_commands_list(root, list_name):
            where = f"{root / list_name} line {line_number}"
            relative = Path(relative).as_posix()
            if not (root / relative).is_file():
                raise DataError(
                    f"{where}: {relative} does not exist under {root}; restore the file or "
                    "remove the line"
                )
            if relative not in split_of:
                raise DataError(
                    f"{where}: {relative} is not a clip in a word folder (WORD/*.wav); remove "
                    "the line"
                )
            if relative in listed_in and listed_in[relative] != where:
                raise DataError(
                    f"{where}: {relative} is also listed at {listed_in[relative]}; a clip can "
                    "be in only one split, remove one of the lines"
                )
            listed_in[relative] = where
            split_of[relative] = split

    relatives = sorted(split_of)
    table = _table(
        [_absolute(root / relative) for relative in relatives],
        [relative.split("/", 1)[0] for relative in relatives],
        [split_of[relative] for relative in relatives],
    )
    table.attrs[EXCLUDED_DIRS_ATTR] = excluded
    table.attrs[BAD_NAMES_ATTR] = bad_names
    return table


def load_clip_table(
    source: str | Path, val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0
) -> pd.DataFrame:
    """Detect the layout of ``source`` and return its validated clip table.

    A ``.csv`` file or a folder holding ``manifest.csv`` is read as a manifest; a folder
    with ``validation_list.txt`` or ``testing_list.txt`` as Speech Commands; any other
    folder as one subfolder per class.
    """
    source = Path(source)
    if not source.exists():
        raise DataError(
            f"data source {source} does not exist: pass a manifest CSV or a dataset folder"
        )
    if source.is_file():
        if source.suffix.lower() != ".csv":
            raise DataError(
                f"data source {source} is a file but not a .csv manifest: pass a manifest CSV "
                "(path,label[,split]) or a dataset folder"
            )
        table = read_manifest(source, val_fraction, test_fraction, seed)
    elif (source / MANIFEST_NAME).is_file():
        table = read_manifest(source / MANIFEST_NAME, val_fraction, test_fraction, seed)
    elif any((source / name).is_file() for name in SPEECH_COMMANDS_LISTS.values()):
        table = scan_speech_commands(source)
    else:
        table = scan_class_folders(source, val_fraction, test_fraction, seed)
    check_label_coverage(table)
    return table
