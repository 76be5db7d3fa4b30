"""The leaderboard's report: tables, paired tests, box plot and BENCHMARKS.md section, built from the
per-entry JSON files in bench/results/leaderboard/ (bench_accuracy.py writes them, one per entry)."""

from __future__ import annotations

import json
import math
import os
import statistics
from pathlib import Path

import _common

TITLE = "Accuracy on rendered phantoms: the leaderboard"
DEFAULT, BASELINE = "kitseg_cascade", "nnunet_3d_fullres"
SCORES = {"kits19_kidney_dice": "kidney Dice", "kits19_tumor_dice": "tumor Dice", "kits19_composite": "composite",
          "kidney_surface_dice": "kidney SD", "tumor_surface_dice": "tumor SD", "kidney_hd95_mm": "kidney HD95 mm",
          "tumor_hd95_mm": "tumor HD95 mm", "tumor_detection_false_positive_tumors": "FP tumors / case"}
# Each paper's headline ablation: entry -> (the entry it is compared with, what the entry leaves out). TuNet's pair is
# two rows of its Table 1 that differ only in the SE blocks: "TuNet + median" against "TuNet + SEB + median", the
# latter scored with the `tunet` entry's networks (it differs from the recipe as written only in the final step).
ABLATIONS = {"zhang2019_cascade:ds_res": ("zhang2019_cascade", "Zhang et al. without the spatial prior"),
             "tunet:median": ("tunet:seb_median", "TuNet without SE blocks")}


def fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"


def setting(r: dict) -> tuple[int, int]:
    """(renderer version, in-plane downsampling) of the phantoms an entry was run on (results written before
    renderer versions were recorded: version 1)."""
    return int(r.get("render", {}).get("renderer_version") or 1), int(r["downsample"])


def load(folder: Path, at: tuple[int, int] | None = None) -> dict[str, dict]:
    """entry -> result, from every ``<entry>.json`` (trial files ``<entry>@<tag>.json`` are left out); with
    ``at``, only the entries run at that setting (``setting``). The default first, then by composite."""
    out = {}
    for p in sorted(Path(folder).glob("*.json")):
        if "@" in p.stem:
            continue
        r = json.loads(p.read_text(encoding="utf-8"))
        if at is None or setting(r) == tuple(at):
            out[r["entry"]] = r
    order = {e: i for i, e in enumerate([DEFAULT])}
    return dict(sorted(out.items(), key=lambda kv: (order.get(kv[0], 1), -(kv[1]["test"]["mean"]
                                                                          ["kits19_composite"] or 0))))


def table_earlier(earlier: dict) -> str:
    """The entries not yet re-run at the leaderboard's setting: their test means at the setting they were run at."""
    lines = ["| entry | phantoms (renderer version, in-plane resolution) | run | kidney Dice | tumor Dice | "
             "composite | FP tumors / case | kidney < 0.6 |", "|---|---|---|---|---|---|---|---|"]
    for e, r in earlier.items():
        m = r["test"]["mean"]
        version, ds = setting(r)
        lines.append(f"| {label(e)} | {version}, 1/{ds} | {r['date']} | {fmt(m['kits19_kidney_dice'])} | "
                     f"{fmt(m['kits19_tumor_dice'])} | {fmt(m['kits19_composite'])} | "
                     f"{fmt(m['tumor_detection_false_positive_tumors'])} | {failures(r)} / {len(r['test']['rows'])} |")
    return "\n".join(lines)


def _by_case(r: dict, key: str, part: str = "test") -> dict:
    return {row["case_id"]: row.get(key) for row in r[part]["rows"]}


def paired(a: dict, b: dict, key: str) -> dict:
    """a minus b per test case: mean difference, cases better / worse, Wilcoxon signed-rank p (two-sided)."""
    from scipy.stats import wilcoxon

    x, y = _by_case(a, key), _by_case(b, key)
    d = [x[k] - y[k] for k in x if k in y and x[k] is not None and y[k] is not None]
    p = float(wilcoxon(d).pvalue) if len(d) > 5 and any(d) else float("nan")
    return {"mean": statistics.fmean(d) if d else float("nan"), "better": sum(v > 0 for v in d),
            "worse": sum(v < 0 for v in d), "n": len(d), "p": p}


def failures(r: dict, part: str = "test") -> int:
    return sum(v is not None and v < 0.6 for v in _by_case(r, "kits19_kidney_dice", part).values())


def fp_median(r: dict, part: str = "test") -> float:
    vals = [v for v in _by_case(r, "tumor_detection_false_positive_tumors", part).values() if v is not None]
    return statistics.median(vals) if vals else float("nan")


def stalled(r: dict) -> float | None:
    """Seconds of the entry's training lost to stalls (``_accuracy_data.stalled_seconds``; None: not recorded)."""
    values = [s.get("stalled_s") for s in r.get("stages", [])]
    return None if not values or any(v is None for v in values) else float(sum(values))


def disturbed(r: dict) -> bool:
    """Whether stalls cost the entry more than 5 % of its training budget."""
    lost = stalled(r)
    return lost is not None and lost > 0.05 * r.get("budget_min", 0.0) * 60


def label(entry: str) -> str:
    return f"{entry} ({ABLATIONS[entry][1]})" if entry in ABLATIONS else entry


def table_ablations(results: dict) -> str:
    """Each headline ablation against the entry it leaves something out of: test means and paired differences."""
    lines = ["| with | without | what is left out | kidney Dice | tumor Dice | composite (with minus without, "
             "better / worse, p) |", "|---|---|---|---|---|---|"]
    for entry, (full, what) in ABLATIONS.items():
        a, b = results.get(full), results.get(entry)
        if not (a and b):
            continue
        cells = []
        for key in ("kits19_kidney_dice", "kits19_tumor_dice"):
            cells.append(f"{fmt(a['test']['mean'][key])} vs {fmt(b['test']['mean'][key])}")
        c = paired(a, b, "kits19_composite")
        cells.append(f"{fmt(a['test']['mean']['kits19_composite'])} vs {fmt(b['test']['mean']['kits19_composite'])} "
                     f"({c['mean']:+.3f}, {c['better']} / {c['worse']}, p = {c['p']:.2g})")
        if disturbed(a) or disturbed(b):
            what += " (**one side's training was disturbed: not a fair comparison until it is re-run**)"
        lines.append(f"| {full} | {entry} | {what} | " + " | ".join(cells) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def table_scores(results: dict, part: str = "test") -> str:
    head = ["entry", *SCORES.values(), "kidney < 0.6", f"vs {DEFAULT}: composite (p)", "tumor (p)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ref = results.get(DEFAULT)
    for e, r in results.items():
        cells = [f"{fmt(r[part]['mean'][k])} ({fmt(r[part]['median'][k])})" for k in SCORES]
        cells.append(f"{failures(r, part)} / {len(r[part]['rows'])}")
        if ref is not None and e != DEFAULT and part == "test":
            for k in ("kits19_composite", "kits19_tumor_dice"):
                d = paired(ref, r, k)
                cells.append(f"{d['mean']:+.3f} ({d['better']}/{d['worse']}, p = {d['p']:.2g})")
        else:
            cells += ["-", "-"]
        mark = " (training disturbed, see the notes)" if disturbed(r) else ""
        if ref is not None and r.get("precision") != ref.get("precision"):
            mark += f" (trained in {r.get('precision')}, {DEFAULT} in {ref.get('precision')}: not equal conditions)"
        lines.append(f"| {label(e)}{mark} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _seconds(value: float | None) -> str:
    """Whole seconds, or "-" where a run did not record them (an entry scored with --score-trained)."""
    return "-" if value is None else f"{value:.0f}"


def table_time(results: dict) -> str:
    lines = ["| entry | precision | stage | spacing mm | epochs done / cap | patches seen | training s (stop) | "
             "model / data / validation s | best epoch (smoothed val Dice) |", "|---|---|---|---|---|---|---|---|---|"]
    for e, r in results.items():
        for s in r["stages"]:
            stop = "time limit" if s["time_limited"] else ("finished" if s["finished"] else "stopped")
            lines.append(f"| {label(e)} | {r['precision']} | {s['stage']} | {_spacing(r['spacing'].get(s['stage']))} | "
                         f"{s['epochs_done']} / {s['epochs_planned']} | {s['patches']} | {s['seconds']:.0f} ({stop}) | "
                         f"{s['model_s']:.0f} / {s['data_s']:.0f} / {s['val_s']:.0f} | "
                         f"{s['best_epoch']} ({s['best_ema_dice']:.3f}) |")
    lines += ["", "| entry | measured | preprocessing s | training s (CPU s) | prediction s per case (median) | "
              "peak RSS MB: training / whole run |", "|---|---|---|---|---|---|"]
    for e, r in results.items():
        m = r["machine"]
        lines.append(f"| {label(e)} | {r['date']}, {m['cpu']} ({' '.join(m.get('cpu_flags', [])) or 'no bf16'}), "
                     f"load {r.get('start_load', '?')} -> {r.get('load_end', '?')} | {_seconds(r['preprocess_s'])} | "
                     f"{_seconds(r['train_s'])} ({_seconds(r['train_cpu_s'])}) | "
                     f"{statistics.median(r['test']['predict_case_s']):.1f} | {r.get('train_peak_rss_mb', '?')} / "
                     f"{r['peak_rss_mb']} |")
    return "\n".join(lines)


def _spacing(sp) -> str:
    if isinstance(sp, str) or not sp:
        return str(sp or "the data's")
    return " x ".join(f"{round(s, 2):g}" for s in sp)


def _renderer(results: dict) -> str:
    """The renderer version(s) of the entries' phantoms (results written before versions were recorded: 1)."""
    versions = sorted({int(r.get("render", {}).get("renderer_version") or 1) for r in results.values()})
    return " and ".join(map(str, versions))


def _ids(ids: list[str]) -> str:
    return f"{int(ids[0][5:])}-{int(ids[-1][5:])}"


def plot(results: dict, path: Path) -> Path:
    """One box per entry for kidney, tumor and composite Dice on the test cases, with the cases as dots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    keys = [("kits19_kidney_dice", "kidney Dice"), ("kits19_tumor_dice", "tumor Dice"),
            ("kits19_composite", "composite Dice")]
    entries = list(results)
    fig, axes = plt.subplots(1, 3, figsize=(max(11.0, 4 + 1.1 * len(entries) * 3 / 2), 4.6), sharey=True)
    rng = np.random.default_rng(0)
    cmap = plt.get_cmap("tab10")
    for ax, (key, title) in zip(axes, keys):
        for i, e in enumerate(entries):
            vals = [v for v in _by_case(results[e], key).values() if v is not None]
            ax.boxplot([vals], positions=[i], widths=0.65, patch_artist=True, showfliers=False,
                       boxprops={"facecolor": cmap(i % 10), "alpha": 0.35}, medianprops={"color": "black"})
            ax.scatter(i + rng.uniform(-0.18, 0.18, len(vals)), vals, s=7, color=cmap(i % 10), zorder=3)
        ax.set_xticks(range(len(entries)))
        ax.set_xticklabels([e.replace(":", ":\n") for e in entries], rotation=60, ha="right", fontsize=8)
        ax.set_title(title)
        ax.set_ylim(-0.03, 1.03)
        ax.grid(axis="y", alpha=0.3)
    r0 = next(iter(results.values()))
    fig.suptitle(f"{len(r0['test']['rows'])} held-out rendered KiTS19 phantoms (renderer version {_renderer(results)}, "
                 f"1/{r0['downsample']} in-plane resolution), {r0['budget_min']:g} min of CPU training per entry "
                 f"(cpu profiles)\ntrained on {short_cpu(r0)}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def short_cpu(r: dict) -> str:
    """The CPU a result was trained on, briefly: model, AMX or not, threads."""
    m = r["machine"]
    return f"{m['cpu']} ({'AMX-BF16' if 'amx_bf16' in m.get('cpu_flags', []) else 'no AMX'}, {r['threads']} threads)"


def boards(root: Path, at: tuple[int, int]) -> dict[str, tuple[dict, dict]]:
    """CPU kind -> (entries run at the setting ``at``, entries run at an earlier one), from each sub-folder of
    ``root`` (``_accuracy_data.cpu_kind``); the board with the most entries at the setting first."""
    out = {}
    for folder in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        every = load(folder)  # each file read once, then split by setting (``load``'s order kept)
        now = {e: r for e, r in every.items() if setting(r) == tuple(at)}
        earlier = {e: r for e, r in every.items() if e not in now}
        if now or earlier:
            out[folder.name] = (now, earlier)
    return dict(sorted(out.items(), key=lambda kv: -len(kv[1][0])))


def markdown(by_kind: dict[str, tuple[dict, dict]], figures: dict[str, Path | None]) -> str:
    """The section: what the leaderboard is, then one block per CPU kind (``boards``)."""
    runs = [r for now, _ in by_kind.values() for r in now.values()]
    r0 = next((r for r in runs if r["entry"] == DEFAULT), runs[0])
    budgets = sorted({r["budget_min"] for r in runs})
    lines = [f"## {TITLE}", "",
             "Command: `python bench/bench_accuracy.py` (each entry in its own process; `--entries` runs some, "
             "`--report` rebuilds this section from the committed per-entry results in "
             "bench/results/leaderboard/<CPU kind>/, which give each entry's date, machine, CPU flags and load; the "
             "tables below repeat them).", "",
             f"Data: synthetic CTs rendered by `kitseg synth --from-masks ../shared/data/kits19 --downsample "
             f"{r0['downsample']}` for the real KiTS19 label maps (in-plane 512 / {r0['downsample']} voxels, slices "
             f"kept), by renderer version {_renderer({r['entry']: r for r in runs})} "
             "(`kitseg.synth.RENDERER_VERSION`). This setting "
             "(`LEADERBOARD_RENDERER`, `LEADERBOARD_DOWNSAMPLE` in bench/_accuracy_data.py) is the leaderboard's; "
             "entries run at an earlier one are listed apart below until they are re-run. "
             f"Training: cases {_ids(r0['train_ids'])} ({r0['n_splits']} splits, fold 0; the "
             f"{len(r0['val_ids'])} validation cases are also predicted and scored below: settings were chosen on "
             f"them); test: cases {_ids(r0['test_ids'])} ({len(r0['test']['rows'])}).",
             f"Budget: **{' / '.join(f'{b:g}' for b in budgets)} min of training wall time per entry** on "
             f"{r0['threads']} threads, every recipe at its `cpu` profile (docs/METHODS.md) and `--precision auto`; "
             "the budget is shared by a recipe's stages in proportion to their `budget_weight` (equal unless the "
             "profile says otherwise), each stopping after the epoch in which its share ran out; a poly schedule "
             "follows the clock and ends with the budget, a multistep one gets its iterations per epoch fitted to "
             "it from a measured step. "
             "Preprocessing, prediction and evaluation are outside the budget.", "",
             "One board per kind of CPU: wall-clock minutes buy different amounts of training on different CPUs (the "
             "same training step takes 1.4-2.1x longer on an AMD EPYC without AMX than on a Xeon with AMX-BF16: "
             "\"Why one board per CPU\" in the analysis below), so entries are ranked and paired only with entries "
             "trained on the same kind of CPU, and the default is run on each. A run lands on the board of the "
             "machine it runs on (`_accuracy_data.cpu_kind`).", ""]
    for kind, (results, earlier) in by_kind.items():
        if results:
            lines += board_markdown(kind, results, figures.get(kind), earlier)
    lines += ["What this does and does not show: the CTs are synthetic, rendered from real KiTS19 masks (real "
              "kidney and tumor shapes and scan geometries, simplified textures and contrast), at reduced in-plane "
              "resolution; the networks are CPU-sized and trained for minutes instead of days. It compares the "
              "methods under equal conditions on one kind of CPU; the figures are not comparable with the papers' "
              "GPU results on real CT (REFERENCE.md), nor do they predict any method's accuracy there."]
    return "\n".join(lines)


def board_markdown(kind: str, results: dict, figure: Path | None, earlier: dict | None = None) -> list[str]:
    """One CPU kind's board: scores, box plot, ablations, validation, time, notes, reading, earlier entries."""
    r0 = results.get(DEFAULT) or next(iter(results.values()))
    lines = [f"### Trained on {short_cpu(r0)}", "",
             f"{len(results)} entries at the leaderboard's setting (bench/results/leaderboard/{kind}/). "
             "Test cases, mean (median); SD = Surface Dice at the KiTS23 tolerances; HD95 over the cases where both "
             "masks are non-empty; FP tumors = predicted tumor components touching no true tumor; the last columns "
             f"compare {DEFAULT} (trained on this kind of CPU) with each entry per case (mean difference, cases "
             "better / worse, paired Wilcoxon p):", "", table_scores(results), ""]
    if figure is not None:
        lines += [f"![Dice per test case and entry, {kind}]({figure.relative_to(_common.ROOT).as_posix()})", ""]
    ablations = table_ablations(results)
    if ablations:
        lines += ["The papers' headline ablations, each against the entry it leaves something out of (test cases):",
                  "", ablations, ""]
    lines += ["Validation cases (what settings were chosen on), mean (median):", "",
              table_scores(results, "val"), "", "Training and time:", "", table_time(results), ""]
    lines += rescored_notes(results)
    read = reading(results)
    if read:
        lines += [read, ""]
    if earlier:
        lines += [f"Not yet re-run at this setting on this kind of CPU ({len(earlier)} entries): their test means on "
                  "the phantoms they were run on, which are other renderings of the same test masks, so not "
                  "comparable with the tables above nor paired with them (the full rows: the JSON files' git "
                  "history):", "", table_earlier(earlier), ""]
    return lines


def rescored_notes(results: dict) -> list[str]:
    """One line per entry whose trained run was predicted and scored again (``--rescore``), that is scored
    with another entry's networks (``--reuse``), or whose JSON carries a ``note`` (e.g. trained under load)."""
    out = []
    for entry, r in results.items():
        rescored = r.get("rescored", [])
        for i, x in enumerate(rescored):
            before = x["before"]["test"]
            after = rescored[i + 1]["before"]["test"] if i + 1 < len(rescored) else r["test"]["mean"]
            out.append(f"- `{entry}` (trained {r['date']}) rescored on {x['date']} (commit {x.get('commit')}) with the "
                       f"same networks{' (' + x['reason'] + ')' if x.get('reason') else ''}: test kidney Dice "
                       f"{before['kits19_kidney_dice']:.3f} -> {after['kits19_kidney_dice']:.3f}, tumor "
                       f"{before['kits19_tumor_dice']:.3f} -> {after['kits19_tumor_dice']:.3f}.")
    for entry, r in results.items():
        if r.get("reused_run"):
            out.append(f"- `{entry}` was not trained: it is scored with `{r['reused_run']['entry']}`'s trained "
                       "networks (it differs only in post-processing, final step or inference), so the two form a "
                       "paired comparison of the same networks; its training rows are that entry's.")
    notes: dict[str, list[str]] = {}  # one line per note, naming every entry that carries it
    for entry, r in results.items():
        if r.get("note"):
            notes.setdefault(r["note"], []).append(f"`{entry}`")
    out += [f"- {', '.join(entries)}: {note}" for note, entries in notes.items()]
    for entry, r in results.items():
        if disturbed(r):
            out.append(f"- `{entry}`: **training disturbed**: epochs that took more than twice their stage's "
                       f"median lost about {stalled(r):.0f} s of the {r['budget_min'] * 60:.0f} s budget (other work "
                       "shared the CPUs), so it trained on less than the others; to be re-run on a quiet machine.")
    return (["Notes on the entries:", "", *out, ""]) if out else []


def reading(results: dict) -> str:
    d, b = results.get(DEFAULT), results.get(BASELINE)
    if not (d and b):
        return ""
    comp, tum = paired(d, b, "kits19_composite"), paired(d, b, "kits19_tumor_dice")
    m = d["test"]["mean"]
    return (f"Reading: the default cascade ({DEFAULT}, cpu profile) reaches kidney Dice {m['kits19_kidney_dice']:.3f} "
            f"and tumor Dice {m['kits19_tumor_dice']:.3f} on the test cases, with {failures(d)} of "
            f"{len(d['test']['rows'])} cases below 0.6 kidney Dice and a median of {fp_median(d):g} false-positive "
            f"tumor components per case. Against the single-stage baseline ({BASELINE}) with the same budget: "
            f"composite {m['kits19_composite']:.3f} vs {b['test']['mean']['kits19_composite']:.3f} (better in "
            f"{comp['better']}, worse in {comp['worse']}, p = {comp['p']:.2g}), tumor {m['kits19_tumor_dice']:.3f} vs "
            f"{b['test']['mean']['kits19_tumor_dice']:.3f} (better in {tum['better']}, worse in {tum['worse']}, "
            f"p = {tum['p']:.2g}).{best_other(results)}")


def best_other(results: dict) -> str:
    """A sentence naming the entry with the highest mean composite when it is not the default."""
    best = max(results, key=lambda e: results[e]["test"]["mean"]["kits19_composite"] or 0.0)
    if best == DEFAULT:
        return ""
    c = paired(results[DEFAULT], results[best], "kits19_composite")
    return (f" The highest mean composite is {best}'s, {results[best]['test']['mean']['kits19_composite']:.3f} (the "
            f"default against it: better in {c['better']}, worse in {c['worse']}, p = {c['p']:.2g}).")


def headlines(by_kind: dict[str, tuple[dict, dict]]) -> list[tuple[str, str]]:
    """One summary row per CPU kind whose board holds the default."""
    out = []
    for results, _ in by_kind.values():
        d, b = results.get(DEFAULT), results.get(BASELINE)
        if not d:
            continue
        m = d["test"]["mean"]
        fig = (f"{DEFAULT}: kidney {m['kits19_kidney_dice']:.3f}, tumor {m['kits19_tumor_dice']:.3f}, composite "
               f"{m['kits19_composite']:.3f}")
        if b:
            fig += (f"; {BASELINE}: composite {b['test']['mean']['kits19_composite']:.3f} (paired Wilcoxon p = "
                    f"{paired(d, b, 'kits19_composite')['p']:.2g})")
        out.append((f"accuracy on {len(d['test']['rows'])} rendered KiTS19 phantoms (renderer version "
                     f"{_renderer(results)}, 1/{d['downsample']} in-plane resolution), {d['budget_min']:g} min of "
                     f"training per recipe on {short_cpu(d)} (cpu profiles; {len(results)} entries; not comparable "
                     "with the papers)",
                     fig))
    return out
