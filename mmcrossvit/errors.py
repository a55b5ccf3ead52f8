"""The one error type for bad input: it names the file, the line and what was expected."""
from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    def __init__(self, path: str | Path | None, message: str, line: int | None = None):
        self.path = None if path is None else Path(path)
        self.line = line
        self.reason = message
        where = "" if path is None else f"{path}" + (f", line {line}" if line is not None else "")
        super().__init__(f"{where}: {message}" if where else message)

