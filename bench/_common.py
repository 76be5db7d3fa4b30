"""What every benchmark script shares: paths, the machine description, results JSON, the sections of
BENCHMARKS.md (and its summary table), and worker processes (fresh processes for time and peak RSS).

The scripts run as ``python bench/NAME.py`` (this folder is on ``sys.path`` then) and import it as
``import _common``. Nothing here imports torch at module level.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import resource
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"  # JSON and caches (ignored by git)
FIGURES = ROOT / "bench" / "figures"  # plots that BENCHMARKS.md links (committed)
MD = ROOT / "BENCHMARKS.md"
SHARED_KITS19 = ROOT.parent / "shared" / "data" / "kits19"
HEADER = "# Benchmarks\n\nFigures measured by the scripts in bench/ (`make bench` runs them all).\n"
SUMMARY = "summary"


# ---------------------------------------------------------------------------------------------
# The machine
# ---------------------------------------------------------------------------------------------
def now() -> str:
    return datetime.datetime.now().strftime("%Y-%m-%d %H:%M")


def git_commit() -> str | None:
    """The repository's HEAD commit (with "+dirty" when the tree has changes), None outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def stamp() -> str:
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def load_1min() -> float:
    return round(os.getloadavg()[0], 2)


# The load when the script imported this module, i.e. at its start: a start load above the core count means
# other work shares the CPUs, and update_markdown then refuses to rewrite BENCHMARKS.md unless forced.
START_LOAD = load_1min()
FORCE_ENV = "KITSEG_BENCH_FORCE"


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def add_force_flag(ap) -> None:
    """The ``--force`` option of a script that updates BENCHMARKS.md."""
    ap.add_argument("--force", action="store_true",
                    help="rewrite BENCHMARKS.md even when the 1-minute load average at the start exceeded the "
                         f"core count (the section then says so; or set {FORCE_ENV}=1)")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


# The CPU flags that decide what the networks run in: bf16 matrix units (kitseg.precision), AVX-512, AVX2.
CPU_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2")


def _cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = set(next(line.split(":", 1)[1].split() for line in f if line.startswith("flags")))
    except (OSError, StopIteration):
        return []
    return [f for f in CPU_FLAGS if f in flags]


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine(gpu: bool = False) -> dict:
    """CPU model, cores this process may use, RAM, Python and torch versions, the 1-minute load
    average now; ``gpu``: also the CUDA device's name (imports torch)."""
    import psutil

    out = {"cpu": _cpu_model(), "cpu_flags": _cpu_flags(), "cores": cores(),
           "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
           "python": platform.python_version(), "torch": _version("torch"), "load_avg_1min": load_1min()}
    if gpu:
        import torch

        out["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return out


def machine_line(m: dict, threads: int | None = None, load_end: float | None = None) -> str:
    """One sentence for a BENCHMARKS.md section: the machine a figure came from."""
    flags = m.get("cpu_flags")
    flags = f" (flags: {' '.join(flags) or 'none of ' + ', '.join(CPU_FLAGS)})" if flags is not None else ""
    parts = [f"{m['cpu']}{flags}, {m['cores']} cores, {m['ram_gb']} GB RAM"]
    if m.get("gpu"):
        parts.append(m["gpu"])
    parts.append(f"Python {m['python']}" + (f", torch {m['torch']}" if m.get("torch") else ""))
    if threads:
        parts.append(f"{threads} threads")
    load = f"1-minute load average {m['load_avg_1min']} at the start"
    if load_end is not None:
        load += f", {load_end} at the end"
    return f"machine: {', '.join(parts)}; {load} (a shared machine: other jobs may have run beside this one)."


def command(script: str, argv: list[str] | None = None) -> str:
    """The command line that produced a result, as a user would type it."""
    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python", f"bench/{script}", *args])


def header(title: str, when: str, m: dict, cmd: str, threads: int | None = None,
           load_end: float | None = None) -> list[str]:
    """The first lines of a section: title, date and machine, command."""
    return [f"## {title}", "", f"{when}; {machine_line(m, threads, load_end)}", f"Command: `{cmd}`", ""]


# ---------------------------------------------------------------------------------------------
# Results and BENCHMARKS.md
# ---------------------------------------------------------------------------------------------
def require(path: Path, what: str = "the KiTS19 label maps in ../shared/data/kits19") -> Path:
    """Exit with a clear message (not a traceback) when a benchmark's input is absent."""
    if not Path(path).exists():
        raise SystemExit(f"{path} is absent: this benchmark needs {what}")
    return Path(path)


def write_json(name: str, data: dict, stamped: bool = False) -> Path:
    """``bench/results/<name>.json`` (``<name>-<stamp>.json`` when ``stamped``), written atomically."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / (f"{name}-{stamp()}.json" if stamped else f"{name}.json")
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_json(name: str) -> dict:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lstrip("#").strip().lower())
    return "#" + text.replace(" ", "-")


def _write_md(text: str) -> None:
    tmp = MD.with_name(".BENCHMARKS.md.part")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, MD)


def _replace(doc: str, name: str, body: str, top: bool = False) -> str:
    start, end = markers(name)
    section = f"{start}\n{body.strip()}\n{end}"
    if start in doc and end in doc:
        return doc[: doc.index(start)] + section + doc[doc.index(end) + len(end):]
    if top:  # after the document's title paragraph
        head, sep, rest = doc.partition("\n\n")
        para, sep2, rest2 = rest.partition("\n\n")
        return f"{head}{sep}{para}\n\n{section}\n\n{rest2}" if sep2 else f"{doc.rstrip()}\n\n{section}\n"
    return doc.rstrip("\n") + "\n\n" + section + "\n"


def busy(load_start: float | None = None) -> bool:
    """Whether the 1-minute load average at the start (default: this script's) exceeded the core count."""
    return (START_LOAD if load_start is None else load_start) > cores()


def update_markdown(name: str, body: str, headlines: list[tuple[str, str]] | None = None, *,
                    force: bool = False, load_start: float | None = None) -> bool:
    """Replace the section between ``<!-- name:start -->`` and ``<!-- name:end -->`` of BENCHMARKS.md
    (append it when absent). ``headlines``: rows (what, figure) for the summary table at the top,
    linked to this section; they replace this section's earlier rows and keep the other sections'.

    The load guard: when the 1-minute load average at the start (``load_start``, default the script's
    start) exceeded the core count, BENCHMARKS.md is left alone and the section goes to
    bench/results/<name>-refused.md instead (False returned), unless ``force`` (or KITSEG_BENCH_FORCE=1):
    then the section and its summary rows say that they were measured under load."""
    load = START_LOAD if load_start is None else load_start
    if busy(load):
        if not (force or os.environ.get(FORCE_ENV) == "1"):
            RESULTS.mkdir(parents=True, exist_ok=True)
            kept = RESULTS / f"{name}-refused.md"
            kept.write_text(body.strip() + "\n", encoding="utf-8")
            print(f"BENCHMARKS.md not rewritten: the 1-minute load average was {load} at the start, above this "
                  f"machine's {cores()} cores, so other work shared the CPUs. Rerun on a quiet machine, or pass "
                  f"--force ({FORCE_ENV}=1) to write the figures with a note saying so. The section is in {kept}.",
                  file=sys.stderr)
            return False
        note = (f"**Forced under load:** the 1-minute load average was {load} at the start, above the {cores()} "
                "cores; other work shared the CPUs, so these figures are to be re-measured on a quiet machine.")
        lines = body.strip().splitlines()
        at = next((i + 1 for i, line in enumerate(lines) if re.match(r"#{2,6} ", line)), 0)
        body = "\n".join([*lines[:at], "", note, *lines[at:]])
        headlines = [(what, f"{figure} (under load)") for what, figure in headlines] if headlines else headlines
    doc = MD.read_text(encoding="utf-8") if MD.exists() else HEADER
    doc = _replace(doc, name, body)
    if headlines is not None:
        title = next((line for line in body.splitlines() if re.match(r"#{2,6} ", line)), f"## {name}")
        link = anchor(title)
        label = title.lstrip("#").strip().split(":")[0]
        start, end = markers(SUMMARY)
        rows = []
        if start in doc and end in doc:
            old = doc[doc.index(start) + len(start): doc.index(end)]
            rows = [line for line in old.splitlines() if line.startswith("| ") and not line.startswith("| what")
                    and f"]({link})" not in line]
        rows += [f"| {what} | {figure} | [{label}]({link}) |" for what, figure in headlines]
        rows.sort(key=_rank)  # stable: a section's rows keep their order
        table = ["## Summary", "", "The headline figures of the sections below (each row links its section, which "
                 "gives the date, the machine and the command).", "", "| what | figure | section |",
                 "|---|---|---|", *rows]
        doc = _replace(doc, SUMMARY, "\n".join(table), top=True)
    _write_md(doc)
    return True


def _rank(row: str) -> int:
    found = re.search(r"\]\((#[^)]+)\) \|$", row)
    return _ORDER.index(found.group(1)) if found and found.group(1) in _ORDER else len(_ORDER)


# the order of the summary rows: that of the sections' anchors
_ORDER = ["#inference-sliding-window-cascade-seconds-and-memory-per-case",
          "#preprocessing-resampling-and-normalization", "#reading-and-writing-nifti-kitsegio-now-vs-before",
          "#accuracy-on-rendered-phantoms-cascade-vs-single-stage",
          "#training-throughput-of-every-recipes-paper-size-networks", "#training-throughput-on-a-gpu",
          "#training-data-loading-vs-the-model",
          "#evaluation-surface-metrics-per-case"]


# ---------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------
def peak_rss_mb() -> float:
    """This process's peak resident set size in MB (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process: on a shared machine a steadier figure than wall time."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def env(threads: int) -> dict:
    """The environment of a worker: ``threads`` OpenMP threads, kitseg's sources importable."""
    return dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT / "src"))


def spawn(script: str | Path, args: list[str], threads: int, what: str | None = None) -> dict:
    """Run ``python SCRIPT ARGS --threads N`` in a fresh process; return the JSON object it printed last.

    Peak RSS and time measured inside such a worker belong to the measured thing alone."""
    proc = subprocess.run([sys.executable, str(script), *args, "--threads", str(threads)], capture_output=True,
                          text=True, env=env(threads))
    if proc.returncode != 0:
        raise SystemExit(f"worker {what or ' '.join(args)} failed (exit status {proc.returncode}):\n"
                         f"{proc.stderr[-4000:]}")
    lines = proc.stdout.strip().splitlines()
    if not lines:
        raise SystemExit(f"worker {what or ' '.join(args)} printed nothing:\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1])


def worker_exit(result: dict) -> None:
    """End a worker: print its result as the last line and leave without interpreter teardown
    (native libraries' exit handlers can hang or crash after heavy use)."""
    print(json.dumps(result))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
