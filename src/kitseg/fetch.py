"""Fetch one file over HTTP(S): resumable, retried, verified, and only then given its final name.

``fetch_verified(url, dest)`` downloads to ``dest``'s sibling ``.NAME.part``, continues an existing
``.part`` with an HTTP Range request (restarting from byte 0 when the server ignores Range with a 200,
resumes at the wrong byte, or the file changed on the server), retries with exponential backoff on
connection errors, timeouts, HTTP 408/425/429/5xx and bodies shorter than announced, and renames the
``.part`` over ``dest`` only once ``verify_image`` passes. A 404 (or any other 4xx) is final at once.

Checksums: the Hugging Face hub answers a ``resolve`` URL of a Git LFS/Xet file with a redirect that
carries ``X-Linked-Etag`` (the file's SHA-256) and ``X-Linked-Size``; ``huggingface_hub``'s
``get_hf_file_metadata`` (huggingface_hub/file_download.py) reads the same two headers, falling back to
``ETag``. We keep the headers of every redirect and take as the expected SHA-256 an ``X-Linked-Etag``,
or an ``ETag`` on a response that also carries ``X-Repo-Commit`` (a hub response), whose value is
exactly 64 hex digits; weak ETags are ignored. Standard library only (urllib).
"""

from __future__ import annotations

import email.utils
import hashlib
import http.client
import os
import re
import struct
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kitseg import __version__
from kitseg.errors import KitsegError
from kitseg.io import MAX_AXIS, MAX_VOXELS

CHUNK = 1 << 20
OUT_LIMIT = 1 << 24  # most decompressed bytes held at once while verifying
MAX_DELAY = 60.0


class FetchError(KitsegError):
    """The file could not be fetched; ``transient`` says whether a network problem was the cause."""

    def __init__(self, reason: str, transient: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.transient = transient


@dataclass
class Remote:
    """What the server said about the file, merged over all requests for it."""

    size: int | None = None
    sha256: str | None = None
    commit: str | None = None


def _noop(*_args) -> None:
    return None


@dataclass(frozen=True)
class ImageCheck:
    """What ``verify_image`` established about a file."""

    size: int
    sha256: str
    shape: tuple[int, ...]  # the NIfTI header's dims, in file order (i, j, k)
    checks: tuple[str, ...]


def _sha256_tag(value: str | None) -> str | None:
    """A strong ETag-style value that is exactly a hex SHA-256 digest, else None."""
    if not value or value.strip().startswith("W/"):
        return None
    v = value.strip().strip('"').lower()
    return v if re.fullmatch(r"[0-9a-f]{64}", v) else None


def _nifti_need(head: bytes, path: Path) -> tuple[tuple[int, ...], int]:
    """(shape, bytes the whole .nii must have) from a single-file NIfTI-1/2 header."""
    for e in "<>":
        if len(head) >= 348 and struct.unpack(e + "i", head[:4])[0] == 348:
            if head[344:348] != b"n+1\0":
                raise KitsegError("not a single-file NIfTI-1 image (magic is not 'n+1')", path)
            dims = struct.unpack(e + "8h", head[40:56])
            bitpix = struct.unpack(e + "h", head[72:74])[0]
            offset, hdr = int(struct.unpack(e + "f", head[108:112])[0]), 348
            break
        if len(head) >= 540 and struct.unpack(e + "i", head[:4])[0] == 540:
            if head[4:8] != b"n+2\0":
                raise KitsegError("not a single-file NIfTI-2 image (magic is not 'n+2')", path)
            bitpix = struct.unpack(e + "h", head[14:16])[0]
            dims = struct.unpack(e + "8q", head[16:80])
            offset, hdr = struct.unpack(e + "q", head[168:176])[0], 540
            break
    else:
        raise KitsegError("the decompressed data does not start with a NIfTI header", path)
    ndim = dims[0]
    shape = tuple(int(d) for d in dims[1:1 + ndim]) if 1 <= ndim <= 7 else ()
    if len(shape) < 3 or any(d != 1 for d in shape[3:]):
        raise KitsegError(f"expected a 3D NIfTI image, the header gives dims {dims}", path)
    shape = shape[:3]
    if min(shape) < 1 or max(shape) > MAX_AXIS or int(np.prod(shape, dtype=np.int64)) > MAX_VOXELS:
        raise KitsegError(f"NIfTI header claims absurd dimensions {shape}", path)
    if bitpix not in (8, 16, 32, 64, 128) or offset < hdr:
        raise KitsegError(f"NIfTI header has an invalid bitpix {bitpix} or data offset {offset}", path)
    return shape, offset + int(np.prod(shape, dtype=np.int64)) * bitpix // 8


def verify_image(path: str | Path, expected_size: int | None = None,
                 expected_sha256: str | None = None) -> ImageCheck:
    """Check a downloaded ``.nii.gz`` in one streaming pass (constant memory); raise KitsegError if bad.

    Always: a gzip stream that decompresses to its end (zlib checks each member's CRC-32 and length),
    holding a single-file NIfTI-1/2 header of a 3D image whose decompressed length covers
    ``vox_offset + voxels * bitpix / 8``. When given: the byte size and the SHA-256 of the file.
    """
    path = Path(path)
    size = path.stat().st_size
    checks = ["gzip", "nifti"]
    if expected_size is not None:
        if size != expected_size:
            raise KitsegError(f"file has {size} bytes, the server announced {expected_size}", path)
        checks.insert(0, "size")
    digest, head, out_len = hashlib.sha256(), bytearray(), 0
    d = zlib.decompressobj(31)
    with open(path, "rb") as fh:
        if fh.read(2) != b"\x1f\x8b":
            raise KitsegError("not a gzip file (a .nii.gz must start with bytes 1f 8b)", path)
        fh.seek(0)
        try:
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
                data = chunk
                while True:
                    out = d.decompress(data, OUT_LIMIT)  # bounded output: constant memory
                    if len(head) < 540:
                        head += out[:540 - len(head)]
                    out_len += len(out)
                    if d.eof:  # end of one gzip member; a following one starts a new stream
                        data = d.unused_data
                        if not data:
                            break
                        d = zlib.decompressobj(31)
                    else:
                        data = d.unconsumed_tail
                        if not data and len(out) < OUT_LIMIT:
                            break  # all input used and no output left pending
        except zlib.error as exc:
            raise KitsegError(f"corrupt gzip stream ({exc})", path) from None
    if not d.eof:
        raise KitsegError("truncated gzip stream (it ends before its end-of-stream marker)", path)
    shape, need = _nifti_need(bytes(head), path)
    if out_len < need:
        raise KitsegError(f"decompressed image has {out_len} bytes, its NIfTI header needs {need}", path)
    sha = digest.hexdigest()
    if expected_sha256 is not None:
        if sha != expected_sha256.lower():
            raise KitsegError(f"SHA-256 {sha} differs from the server's {expected_sha256}", path)
        checks.insert(0, "sha256")
    return ImageCheck(size, sha, shape, tuple(checks))


# ---------------------------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------------------------
class _Retry(Exception):
    def __init__(self, reason: str, after: float | None = None):
        super().__init__(reason)
        self.after = after


class _Final(Exception):
    pass


class _RecordRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects (keeping the Range header) and keep each redirect's headers."""

    def __init__(self) -> None:
        super().__init__()
        self.headers: list = []

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.headers.append(headers)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _learn(remote: Remote, chain: list, part: Path) -> None:
    """Merge the checksum/size headers of a response chain; restart if the file changed on the server."""
    for h in chain:
        sha = _sha256_tag(h.get("X-Linked-Etag")) or (_sha256_tag(h.get("ETag")) if h.get("X-Repo-Commit") else None)
        size = h.get("X-Linked-Size")
        size = int(size) if size and size.isdigit() else None
        if (sha and remote.sha256 and sha != remote.sha256) or (size and remote.size and size != remote.size):
            part.unlink(missing_ok=True)
            remote.sha256, remote.size = sha, size
            raise _Retry("the file changed on the server; restarting it")
        remote.sha256 = sha or remote.sha256
        remote.size = size or remote.size
        remote.commit = h.get("X-Repo-Commit") or remote.commit


def _transfer(url: str, part: Path, remote: Remote, timeout: float,
              on_start: Callable[[int | None, int], None], on_bytes: Callable[[int], None]) -> int:
    """One HTTP request writing into ``part``; return the byte it started at (0: the whole file).

    Raises _Retry when another request may succeed, _Final when none will.
    """
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": f"kitseg/{__version__}", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    rec = _RecordRedirects()
    try:
        resp = urllib.request.build_opener(rec).open(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        hdrs = exc.headers if exc.headers is not None else {}
        _learn(remote, rec.headers + [hdrs], part)
        if exc.code == 416 and offset:
            m = re.match(r"bytes \*/(\d+)", hdrs.get("Content-Range", ""))
            if m and int(m[1]) == offset and remote.size in (None, offset):
                remote.size = offset
                return offset  # the partial file is already complete
            part.unlink(missing_ok=True)
            raise _Retry("the server refused to resume the partial file; restarting it") from None
        if exc.code in (408, 425, 429) or exc.code >= 500:
            raise _Retry(f"HTTP {exc.code} {exc.reason}", _retry_after(hdrs.get("Retry-After"))) from None
        what = "not found on the server" if exc.code == 404 else "refused by the server"
        raise _Final(f"{what} (HTTP {exc.code} {exc.reason}): {url}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise _Retry(f"connection failed ({getattr(exc, 'reason', None) or exc})") from None
    with resp:
        _learn(remote, rec.headers + [resp.headers], part)
        if resp.status == 206:
            m = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", resp.headers.get("Content-Range", ""))
            if not m or int(m[1]) != offset:
                part.unlink(missing_ok=True)
                raise _Retry("the server resumed at a different byte; restarting")
            total = int(m[3]) if m[3] != "*" else None
        else:  # 200: the whole file (a server that ignores Range starts again from byte 0)
            offset = 0
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        if total is not None and remote.size is not None and total != remote.size:
            part.unlink(missing_ok=True)
            remote.size = total
            raise _Retry("the file size changed on the server; restarting it")
        remote.size = total if total is not None else remote.size
        on_start(remote.size, offset)
        got = 0
        with open(part, "ab" if offset else "wb") as fh:
            while True:
                try:
                    chunk = resp.read(CHUNK)
                except (OSError, http.client.HTTPException) as exc:
                    raise _Retry(f"connection lost after {offset + got} bytes ({exc})") from None
                if not chunk:
                    break
                try:
                    fh.write(chunk)
                except OSError as exc:
                    raise KitsegError(f"cannot write ({exc.strerror or exc}); free space and rerun to resume",
                                      part) from None
                got += len(chunk)
                on_bytes(len(chunk))
    if total is not None and offset + got < total:
        raise _Retry(f"connection closed after {offset + got} of {total} bytes")
    return offset


def part_path(dest: str | Path) -> Path:
    """Where ``fetch_verified`` keeps the bytes received so far: ``DIR/.NAME.part``."""
    dest = Path(dest)
    return dest.parent / f".{dest.name}.part"


def fetch_verified(url: str, dest: str | Path, *, retries: int = 5, timeout: float = 60.0,
                   backoff: float = 1.0, on_start: Callable[[int | None, int], None] = _noop,
                   on_bytes: Callable[[int], None] = _noop, log: Callable[[str], None] = _noop,
                   sleep: Callable[[float], None] = time.sleep) -> tuple[ImageCheck, Remote]:
    """Download ``url`` to ``dest`` resumably and verified (see the module docstring).

    ``retries`` counts the retries after the first request; it starts again whenever a request
    extended the partial file past its longest length so far, so a slow, flaky connection still
    finishes. Waits ``backoff * 2**k`` seconds (or the server's Retry-After), at most 60 s.
    A file assembled from several responses that fails verification is fetched once more whole.
    Raises FetchError (the ``.part`` is kept when a resume may help), KitsegError for local problems.
    """
    dest = Path(dest)
    part = part_path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KitsegError(f"cannot create the folder ({exc.strerror or exc})", dest.parent) from None
    remote = Remote()
    failures, longest, whole_retry_used = 0, (part.stat().st_size if part.exists() else 0), False
    while True:
        try:
            start = _transfer(url, part, remote, timeout, on_start, on_bytes)
        except _Final as exc:
            part.unlink(missing_ok=True)
            raise FetchError(str(exc)) from None
        except _Retry as exc:
            size = part.stat().st_size if part.exists() else 0
            if size > longest:
                longest, failures = size, 0
            failures += 1
            if failures > retries:
                raise FetchError(f"gave up after {retries} retries: {exc}", transient=True) from None
            delay = min(MAX_DELAY, exc.after if exc.after is not None else backoff * 2 ** (failures - 1))
            log(f"{dest.parent.name}/{dest.name}: {exc}; retry {failures} of {retries} in {delay:.1f} s")
            sleep(delay)
            continue
        try:
            check = verify_image(part, remote.size, remote.sha256)
        except KitsegError as exc:
            part.unlink(missing_ok=True)
            if start > 0 and not whole_retry_used:
                whole_retry_used = True
                log(f"{dest.parent.name}/{dest.name}: resumed file failed verification ({exc.message}); "
                    "fetching it whole")
                continue
            raise FetchError(f"integrity check failed: {exc.message}") from None
        with open(part, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(part, dest)
        return check, remote


