"""The one exception type users see: a clear, one-line message naming the file and the problem."""

from __future__ import annotations

from pathlib import Path


class KitsegError(Exception):
    """Bad input or a failed step, explained in one line. The CLI prints it and exits with code 2."""

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = None if path is None else str(path)
        self.message = message
        super().__init__(f"{self.path}: {message}" if self.path else message)
