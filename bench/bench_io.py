"""Benchmark: reading and writing .nii.gz, kitseg.io now vs kitseg.io at an earlier revision.

The earlier revision's ``src/kitseg/io.py`` (default cfee0c5: ITK's reader after a zlib pass that
checks the stream, ITK's writer at zlib's level and a zlib pass that checks the written file) is
loaded from git beside today's (one decompression straight into the array, ISA-L's gzip; see
docs/PREPROCESSING.md, "Reading and writing"). Per case: the CT (rendered from the real KiTS19
label, as in bench_inference.py, int16) and the label map (uint8), read and written again, each
method in a fresh process, runs interleaved (old, new, old, new, ...); the table gives the fastest
and slowest run of each.

    .venv/bin/python bench/bench_io.py                       # case_00018 (median) and case_00005 (largest)
    .venv/bin/python bench/bench_io.py --cases case_00018 --repeats 1 --no-update
    .venv/bin/python bench/bench_io.py --quick               # the same

Results: a table on stdout, JSON in bench/results/, and the section between ``<!-- io:start -->``
and ``<!-- io:end -->`` of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
import time

import _common
from _common import RESULTS

NAME = "io"
TITLE = "Reading and writing NIfTI: kitseg.io now vs before"
CASES = {"case_00018": "median", "case_00005": "largest"}
WORK = RESULTS / "io_work"


def _io_module(method: str, baseline: str):
    if method == "new":
        from kitseg import io

        return io
    src = WORK / f"kitseg_io_{baseline}.py"
    if not src.exists():
        WORK.mkdir(parents=True, exist_ok=True)
        text = subprocess.run(["git", "show", f"{baseline}:src/kitseg/io.py"], cwd=_common.ROOT, check=True,
                              capture_output=True, text=True).stdout
        src.write_text(text, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(f"kitseg_io_{baseline}", src)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def worker(method: str, case: str, baseline: str) -> dict:
    from bench_inference import fake_ct

    io = _io_module(method, baseline)
    out: dict = {"method": method, "case": case}
    files = {"ct": fake_ct(case), "labels": _common.require(_common.SHARED_KITS19 / case / "segmentation.nii.gz")}
    folder = WORK / f"{method}-{case}"
    folder.mkdir(parents=True, exist_ok=True)
    for what, path in files.items():
        t0 = time.perf_counter()
        vol = io.read_label(path) if what == "labels" else io.read_volume(path)
        t1 = time.perf_counter()
        written = io.write_volume(vol, folder / path.name)
        t2 = time.perf_counter()
        out.update({f"read_{what}_s": round(t1 - t0, 2), f"write_{what}_s": round(t2 - t1, 2),
                    f"{what}_shape": list(vol.shape), f"{what}_mb": round(written.stat().st_size / 1e6, 1)})
    shutil.rmtree(folder, ignore_errors=True)
    return out


def _span(rows: list[dict], key: str) -> str:
    vals = sorted(r[key] for r in rows)
    return f"{vals[0]:.2f}" if vals[0] == vals[-1] else f"{vals[0]:.2f}-{vals[-1]:.2f}"


def table(rows: list[dict], baseline: str) -> str:
    lines = ["| case | io.py | read CT s | write CT s | read labels s | write labels s | CT file MB | labels file MB |",
             "|---|---|---|---|---|---|---|---|"]
    for case in dict.fromkeys(r["case"] for r in rows):
        for method in ("old", "new"):
            rs = [r for r in rows if r["case"] == case and r["method"] == method]
            if not rs:
                continue
            shape = "x".join(map(str, rs[0]["ct_shape"]))
            lines.append(f"| {case} ({CASES.get(case, '')}, {shape}) | {baseline if method == 'old' else 'now'} | "
                         + " | ".join(_span(rs, k) for k in ("read_ct_s", "write_ct_s", "read_labels_s",
                                                              "write_labels_s"))
                         + f" | {rs[0]['ct_mb']} | {rs[0]['labels_mb']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=list(CASES), help="KiTS19 cases (default case_00018 case_00005)")
    ap.add_argument("--baseline", default="cfee0c5", help="the git revision whose io.py is 'before' (cfee0c5)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each method per case, interleaved (3)")
    ap.add_argument("--threads", type=int, default=2, help="OpenMP threads of the workers (2)")
    ap.add_argument("--no-update", action="store_true", help="do not rewrite the section of BENCHMARKS.md")
    ap.add_argument("--quick", action="store_true", help="case_00018 once; implies --no-update")
    _common.add_force_flag(ap)
    ap.add_argument("--worker", choices=("old", "new"), help=argparse.SUPPRESS)
    ap.add_argument("--case", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        _common.worker_exit(worker(args.worker, args.case, args.baseline))
    if args.quick:
        args.cases, args.repeats, args.no_update = ["case_00018"], 1, True
    info, when = _common.machine(), _common.now()
    rows = []
    for case in args.cases:
        for i in range(args.repeats):
            for method in ("old", "new"):
                r = _common.spawn(__file__, ["--worker", method, "--case", case, "--baseline", args.baseline],
                                  args.threads, f"{method} {case}")
                rows.append(r)
                print(f"{case} {method} run {i + 1}: read CT {r['read_ct_s']} s, write CT {r['write_ct_s']} s, "
                      f"read labels {r['read_labels_s']} s, write labels {r['write_labels_s']} s", file=sys.stderr)
    load_end = _common.load_1min()
    lines = _common.header(TITLE, when, info, _common.command("bench_io.py"), args.threads, load_end)
    lines += [f"Each method read the case's CT (rendered from its KiTS19 label, int16) and label map (uint8) with "
              f"`read_volume` / `read_label` and wrote them back as .nii.gz with `write_volume`, in a fresh process; "
              f"{args.repeats} runs per method, interleaved (old, new, old, new, ...), fastest-slowest run shown. "
              f"'{args.baseline}' is kitseg.io at that revision (ITK's reader and writer plus zlib check passes).",
              "", table(rows, args.baseline), ""]
    md = "\n".join(lines)
    print(md)
    _common.write_json(NAME, {"machine": info, "load_end": load_end, "args": vars(args), "rows": rows}, stamped=True)
    if not args.no_update:
        heads = []
        for case in args.cases:
            best = {m: min(r["read_ct_s"] + r["write_labels_s"] for r in rows if r["case"] == case
                           and r["method"] == m) for m in ("old", "new")}
            heads.append((f"read the CT and write the label map of {case} (.nii.gz)",
                          f"{best['new']:.1f} s, was {best['old']:.1f} s"))
        _common.update_markdown(NAME, md, heads, force=args.force)


if __name__ == "__main__":
    main()
