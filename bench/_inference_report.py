"""The tables, the reading and the summary lines of bench_inference.py's BENCHMARKS.md section,
made from its results JSON (bench/results/inference.json)."""

from __future__ import annotations

import _common


def table_sw(rows) -> str:
    lines = ["| network | input (C, z, y, x) | patch | windows | ours s | MONAI s | ratio | max abs diff |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        o, m = min(r["ours_s"]), min(r["monai_s"])
        lines.append(f"| resunet_ds_zhang {r['net']} | (2, {', '.join(map(str, r['shape']))}) | "
                     f"{'x'.join(map(str, r['patch']))} | {r['windows']} | {o:.2f} | {m:.2f} | {o / m:.3f} | "
                     f"{r['max_abs_diff']:.1e} |")
    return "\n".join(lines)


def table_cascade(rows) -> str:
    lines = ["| case | shape | cascade s (windows) | RSS MB | single stage, ours s (windows) | RSS MB | "
             "single stage, MONAI s | RSS MB | cascade / single | ours / MONAI |",
             "|---|---|---|---|---|---|---|---|---|---|"]

    def mb(r, key):
        return str(r[key]) if r.get(key) is not None else "-"

    for r in rows:
        w = ", ".join(f"{k} {v}" for k, v in r["cascade_windows"].items())
        how = "" if r["single_measured"] else f"; extrapolated: {r['single_windows']} x {r['window_s']:.2f} s"
        monai = f"{r['monai_s']:.1f}" if r.get("monai_s") else "-"
        vs = f"{r['single_s'] / r['monai_s']:.3f}" if r.get("monai_s") else "-"
        lines.append(f"| {r['which']} {r['case']} | {'x'.join(map(str, r['shape']))} | {r['cascade_s']:.1f} ({w}) | "
                     f"{mb(r, 'cascade_rss_mb')} | {r['single_s']:.1f} ({r['single_windows']}{how}) | "
                     f"{mb(r, 'single_rss_mb')} | {monai} | {mb(r, 'monai_rss_mb')} | {r['ratio']:.3f} | {vs} |")
    return "\n".join(lines)


def table_cases(rows) -> str:
    lines = ["| case | shape | networks | precision | total s | read s | predict s (per stage) | write s | "
             "peak RSS MB | predict x fp32 |", "|---|---|---|---|---|---|---|---|---|---|"]
    fp32 = {(r["which"], r["tiny"]): r["predict_s"] for r in rows if r.get("precision", "fp32") == "fp32"}
    for r in rows:
        st = ", ".join(f"{k} {v:.1f}" for k, v in r["stages_s"].items())
        ref = fp32.get((r["which"], r["tiny"]))
        ratio = f"{ref / r['predict_s']:.2f}" if ref else "-"
        lines.append(f"| {r['which']} {r['case']} | {'x'.join(map(str, r['shape']))} | "
                     f"{'tiny' if r['tiny'] else 'paper-size'} | {r.get('precision', 'fp32')} | {r['total_s']:.1f} | "
                     f"{r['read_s']:.1f} | {r['predict_s']:.1f} ({st}) | {r['write_s']:.1f} | {r['peak_rss_mb']} | "
                     f"{ratio} |")
    return "\n".join(lines)


TITLE = "Inference: sliding window, cascade, seconds and memory per case"


def markdown(res: dict) -> str:
    out = _common.header(TITLE, res["date"], res["machine"], res["command"], res["threads"], res.get("load_end"))
    out[2] += " Times are upper bounds. Networks have random weights (timing only)."
    used = {r.get("run") for part in ("sw", "cascade", "cases") for r in res.get(part, [])} - {None}
    runs = [r for r in res.get("runs", []) if r["date"] in used]
    if len(runs) > 1:  # rows from several runs: say which
        out.insert(4, "The rows come from several runs on this machine: " + "; ".join(
            f"{r['date']} `{r['command']}` measured {', '.join(_measured(res, r['date']))}" for r in runs) + ".")
        out.insert(5, "")
    if res.get("sw"):
        out += ["**(a) Sliding window, ours vs MONAI** (same network, input, patch, overlap 0.5, Gaussian sigma "
                "0.125; minimum of interleaved runs):", "", table_sw(res["sw"]), ""]
    if res.get("cascade"):
        out += ["**(b) Cascade vs single stage, per case** (`kitseg_cascade`, paper-size networks; single stage = "
                "the same stage-2 network, one input channel, Gaussian sliding window over the whole CT at 3.22 x "
                "1.62 x 1.62 mm, with ours and with MONAI's `sliding_window_inference`; cascade = 4 mm localizer "
                "+ one box per kidney; predict seconds, read/write excluded; peak RSS of the whole process, each "
                "run in a fresh process):", "",
                table_cascade(res["cascade"]), ""]
    reading = inference_reading(res)
    if reading:
        out += [reading, ""]
    if res.get("cases"):
        out += ["**(c) Seconds and peak RSS per case** (`kitseg_cascade`, read + predict + write in a fresh process; "
                "tiny = the recipe's `--tiny` networks):", "", table_cases(res["cases"]), ""]
        med = next((r for r in res["cases"] if r["which"] == "median" and not r["tiny"]), None)
        if med:
            out.append(f"Default recipe, paper-size networks, median KiTS19 geometry: **{med['total_s']:.0f} s** "
                       f"per case on {res['machine']['cores']} cores (goal: under 120 s).")
    return "\n".join(out).rstrip()


def _measured(res: dict, date: str) -> list[str]:
    """What the run of ``date`` measured, e.g. ["(a)", "(b) smallest"]."""
    out = []
    for part, label in (("sw", "(a)"), ("cascade", "(b)"), ("cases", "(c)")):
        rows = [r for r in res.get(part, []) if r.get("run") == date]
        if rows and part != "sw" and len(rows) < len(res[part]):
            label += " " + ", ".join(dict.fromkeys(r["which"] for r in rows))
        if rows:
            out.append(label)
    return out


def inference_reading(res: dict) -> str:
    """What (a) and (b) say together, from the figures."""
    vs = [min(r["ours_s"]) / min(r["monai_s"]) for r in res.get("sw", [])]
    vs += [r["single_s"] / r["monai_s"] for r in res.get("cascade", []) if r.get("monai_s")]
    ratios = [r["ratio"] for r in res.get("cascade", [])]
    parts = []
    if vs:
        lo, hi = min(vs), max(vs)
        same = "the same speed within a few per cent" if 0.85 <= lo and hi <= 1.15 else (
            "ours faster" if hi < 1 else "MONAI faster" if lo > 1 else "neither consistently faster")
        differ = [r["labels_differ"] for r in res.get("cascade", []) if r.get("labels_differ") is not None]
        diffs = [r["max_abs_diff"] for r in res.get("sw", [])]
        same_out = (("identical results (" if not any(differ) and max(diffs, default=0) <= 1e-4 else "results: (")
                    + ", ".join(
            ([f"probabilities differ by at most {max(diffs):.1e} in (a)"] if diffs else [])
            + ([f"label maps differ in {sum(differ)} voxels in (b)"] if differ else [])) + ")")
        parts.append(f"ours / MONAI sliding window: {lo:.2f}-{hi:.2f} over {len(vs)} comparisons, {same_out}, "
                     f"{same} (single runs on a shared machine vary by about that much); kitseg keeps its "
                     "own because the papers' variants need it (majority voting, explicit strides, keep-the-centre "
                     "z-windows) and it falls back to CPU accumulation when CUDA runs out of memory")
    if ratios:
        parts.append(f"cascade / single stage: {min(ratios):.3f}-{max(ratios):.3f} (goal: at most 0.25)")
    return ("Reading: " + "; ".join(parts) + ".") if parts else ""


def headlines(res: dict) -> list[tuple[str, str]]:
    out = []
    meds = {r.get("precision", "fp32"): r for r in res.get("cases", []) if r["which"] == "median" and not r["tiny"]}
    if meds:
        out.append(("predict the median KiTS19 geometry (121x512x512), default recipe, paper-size networks, "
                    f"{res['machine']['cores']} CPU cores", ", ".join(
                        f"{p} {m['total_s']:.1f} s (read + predict + write), peak RSS {m['peak_rss_mb']} MB"
                        for p, m in sorted(meds.items()))))
    cas = next((r for r in res.get("cascade", []) if r["which"] == "median"), None)
    if cas:
        out.append(("cascade vs single-stage sliding window, same network, median geometry",
                    f"{cas['cascade_s']:.1f} s vs {cas['single_s']:.1f} s ({1 / cas['ratio']:.0f}x faster)"))
    return out
