"""`kitseg download` against a local HTTP server on 127.0.0.1 (never the real hub).

The server serves small generated .nii.gz files under images/case_XXXXX.nii.gz, honours Range
requests, and injects faults per path: a connection dropped halfway, 503s, a corrupt gzip, a 404,
a server that ignores Range, a stall, a hub-like redirect carrying X-Linked-Etag / X-Linked-Size.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import json
import re
import socket
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from conftest import kits19_label
from kitseg.cli.main import main
from kitseg.datasets import open_dataset
from kitseg.download import MANIFEST_NAME, download_cases, parse_cases
from kitseg.errors import KitsegError
from kitseg.fetch import part_path, verify_image
from kitseg.io import read_volume, write_volume
from kitseg.volume import Volume

FAST = {"retries": 3, "timeout": 5, "progress": False, "backoff": 0.01}


def _image_bytes(tmp: Path, seed: int) -> bytes:
    arr = np.random.default_rng(seed).integers(-1000, 1000, (8, 40, 40)).astype(np.int16)
    path = tmp / f"src_{seed}.nii.gz"
    write_volume(Volume.from_geometry(arr, spacing=(3.0, 0.8, 0.8), origin=(0.0, 0.0, 0.0)), path)
    return path.read_bytes()


class FakeHub:
    """State shared with the request handler: files, faults per path, and a request log."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.faults: dict[str, str] = {}
        self.linked: dict[str, tuple[str, int]] = {}  # path -> (X-Linked-Etag, X-Linked-Size)
        self.log: list[tuple[str, str | None]] = []
        self.count: Counter = Counter()
        self.lock = threading.Lock()
        self.url = ""

    def add(self, case: int, data: bytes, fault: str | None = None) -> str:
        path = f"/images/case_{case:05d}.nii.gz"
        self.files[path] = data
        if fault:
            self.faults[path] = fault
        return path

    def requests(self, case: int) -> list[str | None]:
        """The Range header of each request for a case (None: no Range)."""
        return [r for p, r in self.log if p.endswith(f"case_{case:05d}.nii.gz")]


def _handler(hub: FakeHub):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

        def _status(self, code: int, headers: dict | None = None) -> None:
            self.send_response(code)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            path = self.path.split("?")[0]
            with hub.lock:
                hub.log.append((path, self.headers.get("Range")))
                hub.count[path] += 1
                n = hub.count[path]
            src = path.replace("/cdn/", "/images/")
            fault = hub.faults.get(src)
            if fault == "redirect" and path.startswith("/images/"):
                sha, size = hub.linked[path]
                return self._status(302, {"Location": path.replace("/images/", "/cdn/"),
                                          "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(size),
                                          "X-Repo-Commit": "0123456789abcdef0123456789abcdef01234567"})
            if src not in hub.files or fault == "404":
                return self._status(404)
            if fault == "503" or (fault == "503x2" and n <= 2):
                return self._status(503)
            if fault == "stall_once" and n == 1:
                time.sleep(1.0)
            data = hub.files[src]
            rng = None if fault == "no_range" else self.headers.get("Range")
            start = int(re.fullmatch(r"bytes=(\d+)-", rng)[1]) if rng else 0
            if start >= len(data) and rng:
                return self._status(416, {"Content-Range": f"bytes */{len(data)}"})
            self.send_response(206 if rng else 200)
            if rng:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            body = data[start:]
            try:
                if fault == "drop_half" and n == 1:
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True  # hang up mid-body
                    return
                self.wfile.write(body)
            except OSError:
                self.close_connection = True

    return Handler


@pytest.fixture
def hub():
    state = FakeHub()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def images(tmp_path_factory) -> list[bytes]:
    tmp = tmp_path_factory.mktemp("src")
    return [_image_bytes(tmp, seed) for seed in range(4)]


def _dest(out: Path, case: int) -> Path:
    return out / f"case_{case:05d}" / "imaging.nii.gz"


# ---------------------------------------------------------------------------------------------
# Case ranges
# ---------------------------------------------------------------------------------------------
def test_parse_cases():
    assert parse_cases("3-5") == [3, 4, 5]
    assert parse_cases("0-2, 7,case_00009,2") == [0, 1, 2, 7, 9]
    assert parse_cases("all") == list(range(300))
    assert parse_cases(None, "kits23") == list(range(300)) + list(range(400, 589))
    assert parse_cases("train") == list(range(210))
    assert parse_cases("test") == list(range(210, 300))
    assert parse_cases("298-405", "kits23") == [298, 299] + list(range(400, 406))  # 300-399 do not exist
    with pytest.raises(KitsegError, match="end 3 is below its start 5"):
        parse_cases("5-3")
    with pytest.raises(KitsegError, match="bad --cases item 'a-b'"):
        parse_cases("a-b")
    with pytest.raises(KitsegError, match="selects no published KiTS19 case"):
        parse_cases("300")
    with pytest.raises(KitsegError, match="0-299, 400-588"):
        parse_cases("350", "kits23")
    with pytest.raises(KitsegError, match="no published test imaging"):
        parse_cases("test", "kits23")


# ---------------------------------------------------------------------------------------------
# Downloads
# ---------------------------------------------------------------------------------------------
def test_download_layout_manifest_and_rerun_skips(hub, images, tmp_path):
    for i in range(3):
        hub.add(i, images[i])
    out = tmp_path / "kits19"
    report = download_cases("kits19", [0, 1, 2], out, base_url=hub.url, **FAST)
    assert [c.status for c in report.cases] == ["downloaded"] * 3
    for i in range(3):
        assert _dest(out, i).read_bytes() == images[i]
        assert not part_path(_dest(out, i)).exists()
    assert report.cases[0].checks == ["size", "gzip", "nifti"]
    manifest = json.loads((out / MANIFEST_NAME).read_text(encoding="utf-8"))
    assert manifest["cases"]["case_00001"]["sha256"] == hashlib.sha256(images[1]).hexdigest()
    assert sum(hub.count.values()) == 3
    ds = open_dataset(out)
    assert [c.case_id for c in ds.cases] == ["case_00000", "case_00001", "case_00002"]
    assert read_volume(ds.cases[0].image).shape == (8, 40, 40)

    again = download_cases("kits19", [0, 1, 2], out, base_url=hub.url, **FAST)
    assert [c.status for c in again.cases] == ["skipped"] * 3
    assert sum(hub.count.values()) == 3  # no request at all for complete files
    assert "0 downloaded" in again.summary() and "3 already complete" in again.summary()

    (out / MANIFEST_NAME).unlink()  # files from elsewhere: verified locally, still no request
    third = download_cases("kits19", [0, 1, 2], out, base_url=hub.url, **FAST)
    assert [c.status for c in third.cases] == ["skipped"] * 3 and third.cases[0].checks == ["gzip", "nifti"]
    assert sum(hub.count.values()) == 3
    assert (out / MANIFEST_NAME).exists()


def test_dropped_connection_is_resumed_byte_identical(hub, images, tmp_path):
    hub.add(3, images[3], "drop_half")
    report = download_cases("kits19", [3], tmp_path, base_url=hub.url, **FAST)
    assert report.cases[0].status == "downloaded"
    assert _dest(tmp_path, 3).read_bytes() == images[3]
    ranges = hub.requests(3)
    assert ranges[0] is None and len(ranges) == 2
    assert ranges[1] == f"bytes={len(images[3]) // 2}-"  # continued, not restarted


def test_partial_file_of_an_earlier_run_is_continued(hub, images, tmp_path):
    hub.add(0, images[0])
    part = part_path(_dest(tmp_path, 0))
    part.parent.mkdir(parents=True)
    part.write_bytes(images[0][:1000])
    report = download_cases("kits19", [0], tmp_path, base_url=hub.url, **FAST)
    assert report.cases[0].status == "downloaded"
    assert hub.requests(0) == ["bytes=1000-"]
    assert _dest(tmp_path, 0).read_bytes() == images[0]


def test_server_ignoring_range_restarts_from_scratch(hub, images, tmp_path):
    hub.add(0, images[0], "no_range")
    part = part_path(_dest(tmp_path, 0))
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\x00garbage" * 100)  # kept only if the client wrongly appended
    report = download_cases("kits19", [0], tmp_path, base_url=hub.url, **FAST)
    assert report.cases[0].status == "downloaded"
    assert hub.requests(0) == ["bytes=800-"]  # asked to resume, got a 200 with the whole file
    assert _dest(tmp_path, 0).read_bytes() == images[0]


def test_spliced_partial_that_fails_verification_is_fetched_whole(hub, images, tmp_path):
    hub.add(0, images[0])
    part = part_path(_dest(tmp_path, 0))
    part.parent.mkdir(parents=True)
    part.write_bytes(images[1][:1000])  # a different file's bytes: the splice cannot verify
    report = download_cases("kits19", [0], tmp_path, base_url=hub.url, **FAST)
    assert report.cases[0].status == "downloaded"
    assert hub.requests(0) == ["bytes=1000-", None]
    assert _dest(tmp_path, 0).read_bytes() == images[0]


def test_503_twice_then_success(hub, images, tmp_path):
    hub.add(0, images[0], "503x2")
    report = download_cases("kits19", [0], tmp_path, base_url=hub.url, **FAST)
    assert report.cases[0].status == "downloaded"
    assert hub.count["/images/case_00000.nii.gz"] == 3


def test_retries_run_out(hub, images, tmp_path):
    hub.add(0, images[0], "503")
    report = download_cases("kits19", [0], tmp_path, base_url=hub.url, **{**FAST, "retries": 2})
    assert report.cases[0].status == "failed"
    assert "gave up after 2 retries" in report.cases[0].reason and "503" in report.cases[0].reason
    assert hub.count["/images/case_00000.nii.gz"] == 3
    assert not _dest(tmp_path, 0).exists()


def test_timeout_is_retried(hub, images, tmp_path):
    hub.add(0, images[0], "stall_once")
    report = download_cases("kits19", [0], tmp_path, base_url=hub.url, **{**FAST, "timeout": 0.3})
    assert report.cases[0].status == "downloaded"
    assert len(hub.requests(0)) == 2
    assert _dest(tmp_path, 0).read_bytes() == images[0]


def test_corrupt_gzip_fails_and_leaves_no_file(hub, images, tmp_path):
    bad = bytearray(images[1])
    mid = len(bad) // 2
    bad[mid:mid + 8] = bytes(b ^ 0xFF for b in bad[mid:mid + 8])
    hub.add(0, images[0])
    hub.add(1, bytes(bad))
    report = download_cases("kits19", [0, 1], tmp_path, base_url=hub.url, **FAST)
    assert [c.status for c in report.cases] == ["downloaded", "failed"]
    assert "integrity check failed" in report.cases[1].reason
    assert not _dest(tmp_path, 1).exists() and not part_path(_dest(tmp_path, 1)).exists()
    assert hub.count["/images/case_00001.nii.gz"] == 1  # the same bytes again would not help


def test_404_is_final_and_others_continue(hub, images, tmp_path):
    hub.add(0, images[0])
    hub.add(2, images[2])
    report = download_cases("kits19", [0, 1, 2], tmp_path, base_url=hub.url, **FAST)
    assert [c.status for c in report.cases] == ["downloaded", "failed", "downloaded"]
    assert "HTTP 404" in report.cases[1].reason and "case_00001.nii.gz" in report.cases[1].reason
    assert hub.count["/images/case_00001.nii.gz"] == 1
    assert "FAILED case_00001" in report.summary()


def test_hub_redirect_headers_give_size_and_sha256(hub, images, tmp_path):
    p0 = hub.add(0, images[0], "redirect")
    p1 = hub.add(1, images[1], "redirect")
    hub.linked[p0] = (hashlib.sha256(images[0]).hexdigest(), len(images[0]))
    hub.linked[p1] = ("ab" * 32, len(images[1]))  # a wrong checksum
    report = download_cases("kits19", [0, 1], tmp_path, base_url=hub.url, **FAST)
    assert report.cases[0].status == "downloaded"
    assert report.cases[0].checks == ["sha256", "size", "gzip", "nifti"]
    assert _dest(tmp_path, 0).read_bytes() == images[0]
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text(encoding="utf-8"))
    assert manifest["cases"]["case_00000"]["repo_commit"].startswith("0123456789")
    assert report.cases[1].status == "failed" and "SHA-256" in report.cases[1].reason
    assert not _dest(tmp_path, 1).exists()


def test_corrupt_existing_file_is_downloaded_again(hub, images, tmp_path):
    hub.add(0, images[0])
    _dest(tmp_path, 0).parent.mkdir(parents=True)
    _dest(tmp_path, 0).write_bytes(images[0][:-20])  # truncated by an earlier, naive downloader
    report = download_cases("kits19", [0], tmp_path, base_url=hub.url, **FAST)
    assert report.cases[0].status == "downloaded"
    assert _dest(tmp_path, 0).read_bytes() == images[0]


def test_network_down_stops_after_three_cases(tmp_path):
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    report = download_cases("kits19", range(5), tmp_path, base_url=f"http://127.0.0.1:{port}",
                            **{**FAST, "retries": 0})
    reasons = [c.reason for c in report.cases]
    assert all("connection failed" in r for r in reasons[:3])
    assert all(r.startswith("not attempted") for r in reasons[3:])


def test_kits23_writes_its_labels_into_dataset_json(hub, images, tmp_path):
    hub.add(400, images[0])
    report = download_cases("kits23", [400], tmp_path, base_url=hub.url, **FAST)
    assert report.cases[0].status == "downloaded"
    assert open_dataset(tmp_path).spec.labels["cyst"] == 3
    assert "github.com/neheller/kits23" in report.summary()


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(KitsegError, match="http:// or https://"):
        download_cases("kits19", [0], tmp_path, base_url="ftp://example.org", progress=False)
    with pytest.raises(KitsegError, match="no published case 350"):
        download_cases("kits19", [350], tmp_path, base_url="http://127.0.0.1:9", progress=False)


# ---------------------------------------------------------------------------------------------
# Integrity check alone
# ---------------------------------------------------------------------------------------------
def test_verify_image_catches_truncation_and_wrong_content(images, tmp_path):
    good = tmp_path / "good.nii.gz"
    good.write_bytes(images[0])
    check = verify_image(good, len(images[0]), hashlib.sha256(images[0]).hexdigest())
    assert check.shape == (40, 40, 8)  # the NIfTI dims, in file order (i, j, k)
    assert check.checks == ("sha256", "size", "gzip", "nifti")
    cases = {
        "truncated gzip stream": images[0][:-20],
        "not a gzip file": b"<html>rate limited</html>",
        "does not start with a NIfTI header": gzip.compress(b"hello" * 200),
        "NIfTI header needs": gzip.compress(gzip.decompress(images[0])[:-100]),  # data shorter than dims say
    }
    for message, data in cases.items():
        bad = tmp_path / "bad.nii.gz"
        bad.write_bytes(data)
        with pytest.raises(KitsegError, match=message):
            verify_image(bad)
    with pytest.raises(KitsegError, match="the server announced"):
        verify_image(good, expected_size=len(images[0]) + 1)


def test_verify_image_on_a_real_kits19_file():
    check = verify_image(kits19_label(0))
    assert check.shape == (611, 512, 512)  # (x, y, z) of the NIfTI header: 611 slices of 512 x 512


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def test_cli_download(hub, images, tmp_path, capsys):
    hub.add(3, images[0])
    hub.add(4, images[1])
    out = tmp_path / "data"
    assert main(["download", "--cases", "3-4", "-o", str(out), "--base-url", hub.url]) == 0
    assert _dest(out, 4).read_bytes() == images[1]
    text = capsys.readouterr().out
    assert "2 downloaded" in text and "github.com/neheller/kits19" in text

    assert main(["download", "--cases", "3-5", "-o", str(out), "--base-url", hub.url, "--no-progress",
                 "--retries", "0"]) == 2
    text = capsys.readouterr().out
    assert "2 already complete, 1 failed" in text and "FAILED case_00005" in text


def test_cli_bad_cases_exit_2(tmp_path, capsys):
    assert main(["download", "--cases", "5-3", "-o", str(tmp_path)]) == 2
    assert "end 3 is below its start 5" in capsys.readouterr().err
    assert main(["download", "--challenge", "kits23", "--cases", "320-330", "-o", str(tmp_path)]) == 2
    assert "selects no published KiTS23 case" in capsys.readouterr().err
