"""Fault injection helpers for tests/test_faults.py and tests/test_faults_input.py.

- ``Launcher``: runs `kitseg ARGV` in fresh processes (forked from one warm interpreter), to its end,
  under a file-size or memory limit, or SIGKILLed at a given moment after its work has begun;
- ``kill_moments``: seeded random kill moments; ``run_cli``: a plain `python -m kitseg.cli.main`;
- ``check_tree``: every file under a final name opens as kitseg reads it; ``temporaries``,
  ``tree_bytes``: what a killed or failed run left behind;
- ``read_only_setup``: a folder that refuses writes, for root too.

Every injected fault and fuzzed case is counted in ``TALLY`` (``report`` prints one line per fault,
``print_totals`` a module's totals); docs/RELIABILITY.md quotes them.
"""

from __future__ import annotations

import csv
import ctypes
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from kitseg.io import read_volume
from kitseg.stages.checkpoint import load_checkpoint

SRC = Path(__file__).resolve().parents[1] / "src"
ENV = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TALLY: Counter = Counter()  # "kills", "resource", "hostile", "fuzz", "kept": over one test module
TALLY_WORDS = {"kills": "SIGKILLs", "resource": "resource faults", "hostile": "hostile inputs", "fuzz": "fuzzed cases"}


def report(test: str, text: str) -> None:
    """One ``[faults]`` line: what a test injected and what came of it."""
    print(f"[faults] {test}: {text}")


def print_totals(failed: int) -> None:
    """The module's totals of injected faults and fuzzed cases (``TALLY``), and whether anything was lost."""
    counts = ", ".join(f"{TALLY[k]} {w}" for k, w in TALLY_WORDS.items() if TALLY[k])
    kept = (f"; {TALLY['kept']} results finished before a kill were kept (not redone) by the rerun"
            if TALLY["kills"] else "")
    print(f"\n[faults] total: {counts or 'nothing injected'}{kept}; "
          + (f"{failed} TESTS FAILED" if failed else "nothing lost or corrupted"))


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "kitseg.cli.main", *map(str, args)]


def run_cli(*args, preexec_fn: Callable[[], None] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m kitseg.cli.main ARGS` in a fresh interpreter; stdout and stderr as text."""
    return subprocess.run(cli(*args), env=ENV, capture_output=True, text=True, timeout=timeout, preexec_fn=preexec_fn)


def kill_moments(seed: int, n: int, span: float) -> list[float]:
    """``n`` seeded random moments (seconds) in a run of ``span`` seconds, one in each n-th of [5 %, 90 %] of it:
    early, middle and late, never all in the same phase. The seed fixes the fractions; what the run has done
    by then depends on the machine's speed."""
    rng = random.Random(seed)
    edges = [0.05 + 0.85 * i / n for i in range(n + 1)]
    return [round(span * rng.uniform(lo, hi), 3) for lo, hi in zip(edges, edges[1:])]


# A warm `kitseg` launcher. Importing the CLI (torch, MONAI) takes 4-7 s on a shared 2-core machine, longer than
# the tiny runs that are killed; so one interpreter imports it once and forks a fresh process for every run. That
# child detaches (setsid), applies the run's limits and calls `kitseg.cli.main.main(argv)`: what
# `python -m kitseg.cli.main ARGV` does after its imports. Its stdout and stderr are pipes (a file-size limit
# must not hit them) that the launcher copies to files. Limits: ``fsize`` bytes per file (RLIMIT_FSIZE),
# ``memory`` bytes of address space above what the loaded CLI uses (RLIMIT_AS; an absolute limit would depend
# on the torch build).
_SERVER = r"""
import json, os, resource, sys, threading, traceback
import kitseg.cli.main, kitseg.inference, kitseg.preprocessing.cache, kitseg.training.train_recipe  # noqa: F401


def copy(fd, path):
    with open(path, "wb") as fh:
        while data := os.read(fd, 1 << 16):
            fh.write(data)
    os.close(fd)


def child(req, ready):
    os.setsid()
    os.write(ready, b"x")
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    rc = 1
    try:
        if req.get("fsize"):
            resource.setrlimit(resource.RLIMIT_FSIZE, (req["fsize"], req["fsize"]))
        if req.get("memory"):
            vm = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
            resource.setrlimit(resource.RLIMIT_AS, (vm + req["memory"], resource.RLIM_INFINITY))
        rc = kitseg.cli.main.main(req["argv"])
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)


copiers = {}
print("ready", flush=True)
for line in sys.stdin:
    req = json.loads(line)
    if req["op"] == "run":
        ready_r, ready_w = os.pipe()
        pipes = [os.pipe(), os.pipe()]
        pid = os.fork()
        if pid == 0:
            for fd, (r, w) in zip((1, 2), pipes):
                os.dup2(w, fd)
                os.close(r)
                os.close(w)
            child(req, ready_w)
        os.close(ready_w)
        os.read(ready_r, 1)  # the child has its own process group now
        os.close(ready_r)
        copiers[pid] = []
        for (r, w), name in zip(pipes, ("out", "err")):
            os.close(w)
            copiers[pid].append(threading.Thread(target=copy, args=(r, req[name]), daemon=True))
            copiers[pid][-1].start()
        reply = {"pid": pid}
    else:
        done, status = os.waitpid(req["pid"], 0 if req["op"] == "wait" else os.WNOHANG)
        reply = {"rc": None}
        if done:
            for t in copiers.pop(req["pid"]):
                t.join()
            reply["rc"] = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    print(json.dumps(reply), flush=True)
"""


class Launcher:
    """Runs `kitseg ARGV` in fresh processes forked from one warm interpreter (see ``_SERVER``)."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.count = 0
        self.server = subprocess.Popen([sys.executable, "-c", _SERVER], env=ENV, stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, text=True, start_new_session=True)
        self._ready = False

    def _ask(self, **req) -> dict:
        if not self._ready:
            line = self.server.stdout.readline()
            assert line.strip() == "ready", f"the kitseg launcher did not start ({line!r})"
            self._ready = True
        self.server.stdin.write(json.dumps(req) + "\n")
        self.server.stdin.flush()
        return json.loads(self.server.stdout.readline())

    def start(self, argv: list, fsize: int | None = None, memory: int | None = None) -> tuple[int, Path, Path]:
        """Start `kitseg ARGV`; return (pid = process group, stdout file, stderr file)."""
        self.count += 1
        out, err = self.workdir / f"run{self.count}.out", self.workdir / f"run{self.count}.err"
        pid = self._ask(op="run", argv=[str(a) for a in argv], out=str(out), err=str(err), fsize=fsize,
                        memory=memory)["pid"]
        return pid, out, err

    def poll(self, pid: int) -> int | None:
        return self._ask(op="poll", pid=pid)["rc"]

    def wait(self, pid: int) -> int:
        return self._ask(op="wait", pid=pid)["rc"]

    def run(self, argv: list, fsize: int | None = None, memory: int | None = None) -> subprocess.CompletedProcess:
        """Run `kitseg ARGV` to its end: a CompletedProcess with its exit code, stdout and stderr."""
        pid, out, err = self.start(argv, fsize, memory)
        rc = self.wait(pid)
        return subprocess.CompletedProcess(argv, rc, out.read_text(), err.read_text())

    def time_after(self, argv: list, started: Callable[[], bool], timeout: float = 300) -> float:
        """Run `kitseg ARGV` to its end (exit code 0); return the seconds from ``started()`` to its end."""
        pid, _, err = self.start(argv)
        t0, deadline = None, time.monotonic() + timeout
        while (rc := self.poll(pid)) is None:
            if t0 is None and started():
                t0 = time.monotonic()
            if time.monotonic() > deadline:
                os.killpg(pid, signal.SIGKILL)
                self.wait(pid)
                raise TimeoutError(f"kitseg {argv[0]} took over {timeout} s")
            time.sleep(0.005)
        assert rc == 0, err.read_text()[-3000:]
        return time.monotonic() - (t0 or time.monotonic())

    def run_and_kill(self, argv: list, started: Callable[[], bool], delay: float, timeout: float = 180) -> bool:
        """Run `kitseg ARGV`, wait until ``started()`` (its work has begun), then ``delay`` s, then SIGKILL its
        process group (as a batch scheduler does). True when the kill hit a running process."""
        pid, _, _ = self.start(argv)
        rc = None
        try:
            deadline = time.monotonic() + timeout
            while not started() and (rc := self.poll(pid)) is None:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"kitseg {argv[0]} did not start its work within {timeout} s")
                time.sleep(0.005)
            end = time.monotonic() + delay
            while rc is None and time.monotonic() < end:
                time.sleep(0.002)
                rc = self.poll(pid)
        except BaseException:
            if rc is None:
                os.killpg(pid, signal.SIGKILL)
                self.wait(pid)
            raise
        if rc is not None:  # it finished first
            assert rc == 0, f"kitseg {argv[0]} failed before it could be killed (exit code {rc})"
            return False
        os.killpg(pid, signal.SIGKILL)
        rc = self.wait(pid)
        if rc == 0:  # it ended in the instant before the kill
            return False
        assert rc == -signal.SIGKILL, f"kitseg {argv[0]} ended with exit code {rc}"
        TALLY["kills"] += 1
        return True

    def kill_sooner_if_missed(self, argv: list, started: Callable[[], bool], delay: float, out: Path,
                              tries: int = 3) -> tuple[bool, float]:
        """``run_and_kill``; when the run finished before the kill (the reference run that set ``delay`` was
        slowed by other work on the machine), ``out`` is removed and the run is killed again at half the
        delay, up to ``tries`` times. Returns (hit, the delay used)."""
        for _ in range(tries):
            if self.run_and_kill(argv, started, delay):
                return True, delay
            shutil.rmtree(out, ignore_errors=True)
            delay = round(delay / 2, 3)
        return self.run_and_kill(argv, started, delay), delay

    def close(self) -> None:
        self.server.stdin.close()
        self.server.wait(30)


def temporaries(root: Path) -> list[Path]:
    """The hidden temporary files of ``kitseg._atomic`` (``.NAME.XXXX.part.EXT``) under ``root``."""
    return sorted(p for p in Path(root).rglob(".*") if p.is_file() and ".part" in p.name)


def check_tree(root: Path) -> Counter:
    """Open every file under a final name below ``root`` the way kitseg reads it; fail on any incomplete one.

    TensorBoard event files are skipped: they are append-only logs that TensorBoard reads up to a
    torn last record (docs/RELIABILITY.md). Returns the count of files checked per kind.
    """
    seen: Counter = Counter()
    for p in sorted(Path(root).rglob("*")):
        if not p.is_file() or (p.name.startswith(".") and ".part" in p.name) or "tensorboard" in p.parts:
            continue
        name = p.name
        try:
            if name.endswith(".pt"):
                kind = "checkpoint"
                load_checkpoint(p)
            elif name.endswith((".nii.gz", ".nii")):
                kind = "nifti"
                read_volume(p)
            elif name.endswith(".npz"):
                kind = "npz"
                with np.load(p) as z:
                    for k in z.files:  # decompresses every member: its CRC is checked
                        z[k]
            elif name.endswith(".json"):
                kind = "json"
                json.loads(p.read_text(encoding="utf-8"))
            elif name.endswith(".csv"):
                kind = "csv"
                assert list(csv.DictReader(p.read_text(encoding="utf-8").splitlines())), "no rows"
            elif name.endswith(".png"):
                kind = "png"
                data = p.read_bytes()
                assert data.startswith(b"\x89PNG\r\n\x1a\n") and data.endswith(b"IEND\xaeB`\x82"), "torn PNG"
            else:
                raise AssertionError("a file of a kind this check does not know")
        except Exception as exc:
            raise AssertionError(f"{p} is under a final name but incomplete: {type(exc).__name__}: {exc}") from exc
        seen[kind] += 1
    return seen


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file below ``root`` (relative path -> content), to show that a failed run changed none of them."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------
# A read-only folder, for root too (subprocess preexec_fn)
# ---------------------------------------------------------------------------------------------
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH, _PR_CAPBSET_DROP = 1, 2, 24


def _drop_dac_capabilities() -> None:
    """Child setup: without CAP_DAC_OVERRIDE even root obeys a folder's permission bits after exec."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def read_only_setup(folder: Path) -> tuple[Callable[[], None] | None, str]:
    """chmod ``folder`` 0555 and return (child setup that makes the mode bind, how), or (None, why not).

    As an ordinary user the mode alone stops writes. As root (these tests in a container) it does
    not, so the child drops the capabilities that let root ignore permission bits.
    """
    folder.chmod(0o555)
    probe = folder / ".kitseg-probe"
    try:
        probe.write_bytes(b"")
    except PermissionError:
        return (lambda: None), "permission bits"
    probe.unlink()
    try:
        check = subprocess.run([sys.executable, "-c", f"open({str(folder / 'x')!r}, 'w')"],
                               preexec_fn=_drop_dac_capabilities, capture_output=True, text=True, timeout=60)
        why = check.stderr.strip().splitlines()[-1:] or ["the write succeeded"]
    except (OSError, subprocess.SubprocessError) as exc:
        why = [str(exc)]
    if "PermissionError" in why[0]:
        return _drop_dac_capabilities, "root without CAP_DAC_OVERRIDE"
    (folder / "x").unlink(missing_ok=True)
    return None, f"cannot make a folder read-only for root here (dropping CAP_DAC_OVERRIDE: {why[0]})"
