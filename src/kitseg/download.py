"""``kitseg download``: the official KiTS19/KiTS23 CT imaging, in the KiTS19 layout, resumable and verified.

Where the files come from (read in the official repositories):

- ``neheller/kits19`` ``starter_code/get_imaging.py`` (current version, also ``get_imaging_v2.py``)
  fetches, for case ids 0-299, ``{HF}/images/case_XXXXX.nii.gz`` with
  ``HF = https://huggingface.co/datasets/neheller/KiTS-Challenge-Imaging/resolve/main`` into
  ``data/case_XXXXX/imaging.nii.gz``. The labels of cases 0-209 are in that git repository
  (``data/case_XXXXX/segmentation.nii.gz``); cases 210-299 are the KiTS19 test set (imaging only).
- ``neheller/kits23`` ``kits23/__init__.py``: ``TRAINING_CASE_NUMBERS`` = 0-299 and 400-588 (489 cases),
  labels in that git repository (``dataset/case_XXXXX/segmentation.nii.gz``). ``kits23/download.py``
  downloads those case numbers only, as ``case_XXXXX`` into ``dataset/case_XXXXX/imaging.nii.gz``; the
  versions we could read still name the old DigitalOcean bucket (``master_XXXXX.nii.gz``), the
  maintained one the hub repository above, whose file names are the same for both.
- Neither official script checks sizes or checksums (kits19 uses Content-Length for its progress bar
  only; kits23's ``urlretrieve`` raises on a body shorter than Content-Length). We verify every file:
  see ``kitseg.fetch``.

Layout: ``OUT/case_XXXXX/imaging.nii.gz``; a ``.imaging.nii.gz.part`` beside it while downloading;
``OUT/kitseg_download.json`` records each verified file (size, mtime, SHA-256, URL, hub commit), so a
rerun skips it without decompressing it again; for KiTS23 a ``dataset.json`` with its labels.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError
from rich.console import Console, Group
from rich.live import Live
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from kitseg._atomic import write_json
from kitseg.datasets import KITS23
from kitseg.errors import KitsegError
from kitseg.fetch import FetchError, fetch_verified, verify_image

HF_IMAGING_URL = "https://huggingface.co/datasets/neheller/KiTS-Challenge-Imaging/resolve/main"
MANIFEST_NAME = "kitseg_download.json"
SCHEMA_VERSION = 1
GIVE_UP_AFTER = 3  # consecutive cases lost to network errors: the network is down, stop trying


@dataclass(frozen=True)
class Challenge:
    """The published cases of one challenge and where its labels live."""

    name: str
    case_ids: tuple[int, ...]
    train_ids: tuple[int, ...]
    label_repo: str
    label_path: str  # inside label_repo


CHALLENGES = {
    "kits19": Challenge("KiTS19", tuple(range(300)), tuple(range(210)),
                        "https://github.com/neheller/kits19", "data/case_XXXXX/segmentation.nii.gz"),
    "kits23": Challenge("KiTS23", tuple(range(300)) + tuple(range(400, 589)),
                        tuple(range(300)) + tuple(range(400, 589)),
                        "https://github.com/neheller/kits23", "dataset/case_XXXXX/segmentation.nii.gz"),
}


def _challenge(name: str) -> Challenge:
    if name not in CHALLENGES:
        raise KitsegError(f"unknown challenge {name!r}; use one of {', '.join(CHALLENGES)}")
    return CHALLENGES[name]


def _spans(ids: tuple[int, ...]) -> str:
    out, start = [], ids[0]
    for a, b in zip(ids, ids[1:] + (None,)):
        if b != a + 1:
            out.append(f"{start}-{a}" if a != start else str(a))
            start = b
    return ", ".join(out)


def parse_cases(spec: str | None, challenge: str = "kits19") -> list[int]:
    """Case ids from ``"3-5"``, ``"0-9,20,case_00042"``, ``"all"``, ``"train"`` or ``"test"`` (KiTS19).

    A range selects the challenge's published ids inside it (KiTS23 has none in 300-399); an item
    that selects no published case is an error, as are malformed items and reversed ranges.
    """
    ch = _challenge(challenge)
    text = (spec or "all").strip().lower()
    if text == "all":
        return list(ch.case_ids)
    if text == "train":
        return list(ch.train_ids)
    if text == "test":
        test = [i for i in ch.case_ids if i not in set(ch.train_ids)]
        if not test:
            raise KitsegError(f"{ch.name} has no published test imaging; its cases are all training cases")
        return test
    chosen: list[int] = []
    for item in text.split(","):
        item = item.strip()
        m = re.fullmatch(r"(?:case_)?(\d+)(?:\s*-\s*(?:case_)?(\d+))?", item)
        if not m:
            raise KitsegError(f"bad --cases item {item!r}: expected N, A-B, a comma list such as '0-9,20', "
                              "'all', 'train' or 'test'")
        lo = int(m[1])
        hi = int(m[2]) if m[2] is not None else lo
        if hi < lo:
            raise KitsegError(f"bad --cases range {item!r}: its end {hi} is below its start {lo}")
        picked = [i for i in ch.case_ids if lo <= i <= hi]
        if not picked:
            raise KitsegError(f"--cases {item!r} selects no published {ch.name} case "
                              f"(published ids: {_spans(ch.case_ids)})")
        chosen += [i for i in picked if i not in chosen]
    return chosen


def case_url(base_url: str, case_id: int) -> str:
    """The file URL of one case under a base URL laid out like the hub repository (``images/``)."""
    return f"{base_url.rstrip('/')}/images/case_{case_id:05d}.nii.gz"


# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------
class ManifestEntry(BaseModel):
    """One verified file; a rerun trusts it while the file's size and mtime are unchanged."""

    model_config = ConfigDict(extra="forbid")
    file: str
    url: str
    size: int
    mtime_ns: int
    sha256: str
    checks: list[str]
    repo_commit: str | None = None


class DownloadManifest(BaseModel):
    """``OUT/kitseg_download.json``: what was downloaded from where, and its SHA-256."""

    model_config = ConfigDict(extra="forbid")
    schema_version: int = SCHEMA_VERSION
    cases: dict[str, ManifestEntry] = {}


class CaseResult(BaseModel):
    """One case: downloaded, skipped (already complete and verified) or failed (with the reason)."""

    model_config = ConfigDict(extra="forbid")
    case_id: str
    status: Literal["downloaded", "skipped", "failed"]
    path: str | None = None
    size: int = 0
    checks: list[str] = []
    reason: str | None = None


class DownloadReport(BaseModel):
    """Per-case outcome of ``download_cases``."""

    model_config = ConfigDict(extra="forbid")
    schema_version: int = SCHEMA_VERSION
    challenge: str
    base_url: str
    out_dir: str
    cases: list[CaseResult] = []

    def _with(self, status: str) -> list[CaseResult]:
        return [c for c in self.cases if c.status == status]

    @property
    def downloaded(self) -> list[CaseResult]:
        return self._with("downloaded")

    @property
    def skipped(self) -> list[CaseResult]:
        return self._with("skipped")

    @property
    def failed(self) -> list[CaseResult]:
        return self._with("failed")

    def summary(self) -> str:
        ch = CHALLENGES[self.challenge]
        nbytes = sum(c.size for c in self.downloaded)
        lines = [f"{self.out_dir}: {len(self.downloaded)} downloaded ({_human(nbytes)}), "
                 f"{len(self.skipped)} already complete, {len(self.failed)} failed, of {len(self.cases)} cases"]
        lines += [f"  FAILED {c.case_id}: {c.reason}" for c in self.failed]
        lines.append(f"Imaging only: the {ch.name} labels are in {ch.label_repo} ({ch.label_path}).")
        return "\n".join(lines)


def _human(nbytes: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} bytes"


def _read_manifest(path: Path) -> DownloadManifest:
    try:
        return DownloadManifest.model_validate_json(path.read_bytes())
    except (OSError, ValidationError, ValueError):
        return DownloadManifest()  # absent or unreadable: every existing file is verified afresh


# ---------------------------------------------------------------------------------------------
# Progress
# ---------------------------------------------------------------------------------------------
class _Bars:
    """Two rich bars in one live display: cases done, and bytes of the current file."""

    def __init__(self, n_cases: int, enabled: bool):
        self.enabled = enabled
        self.cases = Progress(TextColumn("{task.description:<18}"), BarColumn(), MofNCompleteColumn(),
                              TimeElapsedColumn())
        self.bytes = Progress(TextColumn("{task.description:<18}"), BarColumn(), DownloadColumn(),
                              TransferSpeedColumn(), TimeRemainingColumn())
        self.cases_task = self.cases.add_task("cases", total=n_cases)
        self.file_task = self.bytes.add_task("", total=None)
        self.console = Console(stderr=True)
        self.live = Live(Group(self.cases, self.bytes), console=self.console, refresh_per_second=8)

    def __enter__(self) -> _Bars:
        if self.enabled:
            self.live.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.live.stop()

    def case(self, name: str) -> None:
        self.bytes.reset(self.file_task, description=name, completed=0)
        self.bytes.tasks[0].total = None  # unknown until the server answers (reset keeps the old total)

    def file(self, total: int | None, completed: int) -> None:
        self.bytes.update(self.file_task, total=total, completed=completed)

    def advance(self, n: int) -> None:
        self.bytes.advance(self.file_task, n)

    def done(self) -> None:
        self.cases.advance(self.cases_task, 1)

    def log(self, text: str) -> None:
        if self.enabled:
            self.console.print(text, markup=False, highlight=False)


# ---------------------------------------------------------------------------------------------
# The download
# ---------------------------------------------------------------------------------------------
def _check_base_url(base_url: str) -> str:
    parts = urllib.parse.urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise KitsegError(f"--base-url must be an http:// or https:// URL, got {base_url!r}")
    return base_url.rstrip("/")


def _existing(dest: Path, name: str, manifest: DownloadManifest, url: str, bars: _Bars) -> CaseResult | None:
    """A skip result when ``dest`` is a verified file (per the manifest, or checked now), else None."""
    if not dest.exists():
        return None
    st = dest.stat()
    entry = manifest.cases.get(name)
    if entry is not None and (entry.size, entry.mtime_ns) == (st.st_size, st.st_mtime_ns):
        return CaseResult(case_id=name, status="skipped", path=str(dest), size=st.st_size, checks=entry.checks)
    try:
        check = verify_image(dest)
    except KitsegError as exc:
        bars.log(f"{name}: the existing imaging.nii.gz fails verification ({exc.message}); downloading it again")
        return None
    manifest.cases[name] = ManifestEntry(file=f"{name}/{dest.name}", url=url, size=st.st_size,
                                         mtime_ns=st.st_mtime_ns, sha256=check.sha256, checks=list(check.checks))
    return CaseResult(case_id=name, status="skipped", path=str(dest), size=st.st_size, checks=list(check.checks))


def _fetch_case(url: str, dest: Path, name: str, manifest: DownloadManifest, bars: _Bars, retries: int,
                timeout: float, backoff: float) -> tuple[CaseResult, bool]:
    """Fetch one case; (its result, whether it failed for network reasons)."""
    try:
        check, remote = fetch_verified(url, dest, retries=retries, timeout=timeout, backoff=backoff,
                                       on_start=bars.file, on_bytes=bars.advance, log=bars.log)
    except FetchError as exc:
        return CaseResult(case_id=name, status="failed", reason=exc.reason), exc.transient
    st = dest.stat()
    manifest.cases[name] = ManifestEntry(file=f"{name}/{dest.name}", url=url, size=st.st_size,
                                         mtime_ns=st.st_mtime_ns, sha256=check.sha256, checks=list(check.checks),
                                         repo_commit=remote.commit)
    return CaseResult(case_id=name, status="downloaded", path=str(dest), size=check.size,
                      checks=list(check.checks)), False


def download_cases(challenge: str, case_ids: Iterable[int], out_dir: str | Path, base_url: str | None = None,
                   retries: int = 5, timeout: float = 60, progress: bool = True, *,
                   backoff: float = 1.0) -> DownloadReport:
    """Download the CT imaging of ``case_ids`` to ``out_dir/case_XXXXX/imaging.nii.gz``.

    ``base_url`` (default: the hub repository ``neheller/KiTS-Challenge-Imaging`` at ``main``; pin a
    revision with ``.../resolve/<commit>``) must hold ``images/case_XXXXX.nii.gz``. A case whose file is
    already there and verified is skipped; a failed case (404, integrity, retries spent) is reported and
    the others go on. Imaging only: the labels are in the challenge's git repository.
    """
    ch = _challenge(challenge)
    base = _check_base_url(base_url or HF_IMAGING_URL)
    if retries < 0 or timeout <= 0:
        raise KitsegError(f"need retries >= 0 and timeout > 0 seconds, got {retries} and {timeout}")
    ids = list(dict.fromkeys(int(i) for i in case_ids))
    unknown = [i for i in ids if i not in set(ch.case_ids)]
    if unknown:
        raise KitsegError(f"{ch.name} has no published case {unknown[0]} (published ids: {_spans(ch.case_ids)})")
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KitsegError(f"cannot create the output folder ({exc.strerror or exc})", out) from None
    if challenge == "kits23" and not (out / "dataset.json").exists():
        write_json(out / "dataset.json", KITS23.model_dump(mode="json"))  # so open_dataset reads labels 0-3
    manifest_path = out / MANIFEST_NAME
    manifest = _read_manifest(manifest_path)
    report = DownloadReport(challenge=challenge, base_url=base, out_dir=str(out))
    lost = 0  # consecutive cases lost to network errors
    with _Bars(len(ids), progress) as bars:
        for i in ids:
            name, url = f"case_{i:05d}", case_url(base, i)
            dest = out / name / "imaging.nii.gz"
            bars.case(name)
            if lost >= GIVE_UP_AFTER:
                result = CaseResult(case_id=name, status="failed", reason=f"not attempted: the previous "
                                    f"{GIVE_UP_AFTER} cases failed with network errors (rerun to resume)")
            else:
                known = manifest.cases.get(name)
                result = _existing(dest, name, manifest, url, bars)
                if result is None:
                    result, transient = _fetch_case(url, dest, name, manifest, bars, retries, timeout, backoff)
                    lost = lost + 1 if transient else 0
                if manifest.cases.get(name) is not known:
                    write_json(manifest_path, manifest.model_dump(mode="json"))
            report.cases.append(result)
            bars.done()
    return report
