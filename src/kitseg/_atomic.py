"""Write files so that nothing half-written ever stands under a final name.

Every writer in kitseg writes to a temporary file in the target folder and renames it over the
final name only when the data is complete (rename is atomic on POSIX within one file system).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from kitseg.errors import KitsegError


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp makes 0600 files; a finished file gets the mode open() would give it (0644 under umask 022).
FILE_MODE = 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``, else delete it.

    ``suffix`` keeps the file ending that format-sniffing writers need (".nii.gz", ".npz").
    """
    path = Path(path)
    if suffix is None:
        suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".part{suffix}", dir=path.parent)
        os.fchmod(fd, FILE_MODE)
        os.close(fd)
    except OSError as exc:
        raise KitsegError(f"cannot write here: {exc.strerror or exc}", path.parent) from exc
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise KitsegError(f"could not be written: {exc.strerror or exc}", path) from exc
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def remove_partials(folder: str | Path, name: str | None = None) -> int:
    """Delete the temporary files that killed ``atomic_path`` writes left in ``folder`` (of the file
    ``name`` only, when given); returns how many. A missing folder has none."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    stray = list(folder.glob(f".{name}.*.part*" if name else ".*.part*"))
    for p in stray:
        p.unlink(missing_ok=True)
    return len(stray)


def write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically, flushed to disk before the rename."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())


def write_json(path: str | Path, data: object) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")
