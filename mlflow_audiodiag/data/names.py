"""Checks of class labels and file names, done before anything is trained.

A label is ordinary text: ``<``, ``>``, ``/``, ``..`` or ``$`` stay as they are (nothing here
turns a label into a path, a metric key or math; plots draw it literally), so distinct labels
stay distinct classes. A label is unusable when it is empty, has leading or trailing
whitespace, holds a control character or line break, is longer than
:data:`MAX_LABEL_CHARS`, or comes from a folder name that is not UTF-8. A file whose name is
not UTF-8 cannot be stored in a clip table or logged, so it is a bad file.
"""

from __future__ import annotations

import os
import unicodedata

from mlflow_audiodiag.errors import DataError

MAX_LABEL_CHARS = 100
_SHOWN_CHARS = 60
_UNPRINTABLE = {"Cc", "Cs", "Zl", "Zp"}  # controls, undecodable bytes, line/paragraph breaks
_LABEL_RULE = f"a label is 1 to {MAX_LABEL_CHARS} printable characters"


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str | os.PathLike) -> str:
    """``text`` as one line of valid UTF-8: bytes that were not UTF-8 (as Python decodes file
    names) become ``\\xNN``, control characters and line breaks are escaped."""
    text = os.fspath(text)
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "backslashreplace")
    decoded = raw.decode("utf-8", "backslashreplace")
    return "".join(
        _escape(char) if unicodedata.category(char) in _UNPRINTABLE else char for char in decoded
    )


def shown(label: str) -> str:
    """A label for a message: printable, quoted, shortened when long."""
    text = printable(label)
    if len(text) > _SHOWN_CHARS:
        text = text[:_SHOWN_CHARS] + "..."
    return f"'{text}'"


def is_utf8(name: str | os.PathLike) -> bool:
    """Whether a (file) name is valid UTF-8 text."""
    try:
        os.fspath(name).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def label_problem(label: str) -> str | None:
    """What makes ``label`` unusable as a class name, or ``None``."""
    if not label.strip():
        return "is empty"
    if not is_utf8(label):
        return "is not UTF-8 text (the folder name holds other bytes)"
    if any(unicodedata.category(char) in _UNPRINTABLE for char in label):
        return "contains a control character or line break"
    if len(label) > MAX_LABEL_CHARS:
        return f"has {len(label)} characters, more than {MAX_LABEL_CHARS}"
    if label != label.strip():
        return "starts or ends with whitespace"
    return None


def check_label(label: str, where: str, fix: str) -> None:
    """Raises :class:`DataError` naming ``where`` (a line, a folder) if ``label`` is unusable."""
    problem = label_problem(label)
    if problem is not None:
        raise DataError(f"{where}: the label {shown(label)} {problem}; {fix} ({_LABEL_RULE})")


def bad_name_reason(path: str | os.PathLike) -> str:
    """Why a file with a name that is not UTF-8 is left out, naming it printably."""
    return (
        f"the name of audio file {printable(path)} is not UTF-8 text: rename it (e.g. with "
        "`convmv -f latin1 -t utf8`)"
    )
