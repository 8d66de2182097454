"""Reading and writing maxp's JSON files with errors that name the file, the line and the fault.

Every reader of the project goes through :func:`read_text` and :func:`parse_json`, every
writer through :func:`write_text`, so a file that is missing, a folder, not UTF-8, not
JSON, nested too deeply or holding an integer too long to convert raises
:class:`~maxp_core.errors.MaxPError` saying which, never a raw ``OSError``,
``UnicodeDecodeError``, ``RecursionError`` or ``ValueError``.

Examples:
  >>> import os, tempfile
  >>> path = os.path.join(tempfile.mkdtemp(), "bad.json")
  >>> _ = open(path, "wb").write(b'{"a": \\xff}')
  >>> read_text(path, "alignment table")  # doctest: +ELLIPSIS
  Traceback (most recent call last):
  ...
  maxp_core.errors.MaxPError: .../bad.json is not UTF-8 text (byte 6: invalid start byte); ...
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any, TextIO

from maxp_core.errors import MaxPError


def read_text(path: str | Path, what: str) -> str:
    """The UTF-8 text of the file ``path`` (a ``what``: "metrics file", "alignment table")."""
    path = Path(path)
    try:
        if not stat.S_ISREG(path.stat().st_mode) and not stat.S_ISFIFO(path.stat().st_mode):
            kind = "a folder" if path.is_dir() else "a device or special file"
            raise MaxPError(f"cannot read the {what} {path}: it is {kind}, not a file")
        data = path.read_bytes()
    except OSError as err:
        raise MaxPError(f"cannot read the {what} {path}: {err.strerror or err}") from None
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as err:
        raise MaxPError(
            f"{path} is not UTF-8 text (byte {err.start}: {err.reason}); a {what} is the UTF-8 JSON "
            "maxp writes"
        ) from None


def parse_json(text: str, where: str) -> Any:
    """``json.loads(text)``; ``where`` names the file (and line) in the message.

    ``NaN`` and ``Infinity`` tokens are read as Python's ``json`` reads them, so that the
    check of the value they land in names its key or node.
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise MaxPError(
            f"{where} is not valid JSON: {err.msg} (line {err.lineno}, column {err.colno})"
        ) from None
    except RecursionError:
        raise MaxPError(f"{where} is nested too deeply to be a file maxp wrote") from None
    except ValueError as err:  # an integer with more digits than Python converts
        raise MaxPError(f"{where} holds a value that cannot be read: {err}") from None


def write_text(path: str | Path, text: str, what: str) -> Path:
    """Write ``text`` to ``path`` (its folders created); a failure names the file and why."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as err:
        raise MaxPError(f"cannot write the {what} {path}: {err.strerror or err}") from None
    return path


def open_for_writing(path: str | Path, what: str) -> TextIO:
    """``path`` opened for writing text (its folders created); a failure names the file and why."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.open("w", encoding="utf-8")
    except OSError as err:
        raise MaxPError(f"cannot write the {what} {path}: {err.strerror or err}") from None


def append_line(handle: TextIO, line: str, path: Path, what: str) -> None:
    """Write one line and flush it; fail loudly when the file is gone or cannot take it.

    A file deleted while open keeps accepting writes that nobody can read back, so the
    link count is checked after each flush.
    """
    try:
        handle.write(line + "\n")
        handle.flush()
        deleted = os.fstat(handle.fileno()).st_nlink == 0
    except OSError as err:
        raise MaxPError(f"cannot write to the {what} {path}: {err.strerror or err}") from None
    if deleted:
        raise MaxPError(
            f"the {what} {path} was deleted while it was being written; the records since are lost "
            "(start a new log, or keep the file in place)"
        )
