"""Benchmark: how real the renderer's tissue intensities are, organ by organ, against a real CT slab.

The real CT is ../shared/data/real_ct/example_ct_sm.nii.gz (30 slices at 3 mm isotropic), with its
machine-made organ labels example_ct_sm_organs.nii.gz (TotalSegmentator names in the JSON beside it).
The synthetic CTs are rendered the way the accuracy benchmark renders them: KiTS19 label maps of
../shared/data/kits19, in-plane size / 4 (``--downsample``), case seeds ``case_seed(seed, i)``, through
``kitseg.synth.render_with_tissues``, which also returns the tissue every voxel was painted with;
``--procedural`` small procedural cases are added as a second synthetic column.

Per tissue the script compares the median HU and the inter-quartile range (IQR, the 25th to 75th
percentile) and their overlap, |IQR_real ∩ IQR_synth| / |IQR_real ∪ IQR_synth| (1: the same range,
0: disjoint). Synthetic voxels of all cases are pooled (the distribution a model sees in training);
the range of the per-case medians is given too. Which voxels count as which tissue is decided without
looking at their HU, except for fat (see ``GROUPS`` and the fat paragraph of the output).

    .venv/bin/python bench/bench_realism.py                # updates the realism section of docs/SYNTH.md
    .venv/bin/python bench/bench_realism.py --no-update
    .venv/bin/python bench/bench_realism.py --quick        # 2 rendered cases, 1 procedural; no update

Results: a table on stdout, JSON in bench/results/realism.json, and the section between
``<!-- realism:start -->`` and ``<!-- realism:end -->`` of docs/SYNTH.md.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
from scipy import ndimage

import _common

NAME = "realism"
REAL = _common.ROOT.parent / "shared" / "data" / "real_ct"
DOC = _common.ROOT / "docs" / "SYNTH.md"

# tissue row -> (real organ labels: name prefixes in example_ct_sm_organs.json, synthetic Tissue names)
GROUPS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "kidney": (("kidney_",), ("CORTEX", "MEDULLA")),
    "liver": (("liver",), ("LIVER",)),
    "spleen": (("spleen",), ("SPLEEN",)),
    "muscle": (("autochthon_", "iliopsoas_"), ("MUSCLE",)),
    "bone: vertebrae": (("vertebrae_",), ("BONE", "MARROW")),
    "bone: ribs": (("rib_",), ("RIB",)),
    "bowel and stomach": (("stomach", "duodenum", "small_bowel", "colon"), ("GUT_WALL", "GUT_FLUID", "GAS", "STOOL")),
    "aorta (contrast phase)": (("aorta",), ("AORTA",)),
}
FAT = "fat"
# The unlabelled body of a synthetic CT: what the real slab's labels leave unlabelled there.
UNLABELLED = ("FAT", "SKIN", "MUSCLE")
BODY_HU = -500.0  # air vs body: the body outline (any threshold between -900 and -200 gives it)


# ---------------------------------------------------------------------------------------------
# Voxel sets
# ---------------------------------------------------------------------------------------------
def otsu(values: np.ndarray) -> float:
    """The threshold that best splits ``values`` into two classes (Otsu: largest between-class variance)."""
    lo, hi = np.percentile(values, [0.5, 99.5])
    hist, edges = np.histogram(np.clip(values, lo, hi), bins=256, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])


def body_mask(hu: np.ndarray) -> np.ndarray:
    """The body: the largest connected region above ``BODY_HU``, holes filled slice by slice, less its
    outer voxel (skin and the partial volume with air)."""
    comps, n = ndimage.label(hu > BODY_HU)
    if n == 0:
        return np.zeros(hu.shape, bool)
    body = comps == 1 + int(np.argmax(np.bincount(comps.ravel())[1:]))
    body = np.stack([ndimage.binary_fill_holes(s) for s in body])
    return ndimage.binary_erosion(body, structure=np.ones((1, 3, 3), bool))


def fat_voxels(hu: np.ndarray, unlabelled: np.ndarray) -> tuple[np.ndarray, float]:
    """Fat: the lower of the two classes Otsu splits the unlabelled body into (fat vs the unlabelled soft
    tissue: abdominal wall muscle, small vessels, partial volume at organ borders). Returns the voxels'
    HU and the threshold the split chose."""
    values = hu[unlabelled]
    t = otsu(values)
    return values[values < t], t


def noise_sd(hu: np.ndarray, mask: np.ndarray) -> float | None:
    """Voxel-to-voxel noise (HU SD) inside ``mask``: the robust SD of the differences of in-plane neighbours
    (both in the mask less its border) over sqrt(2); slow texture and organ means cancel out."""
    inner = ndimage.binary_erosion(mask, np.ones((1, 3, 3), bool))
    both = inner[:, :, 1:] & inner[:, :, :-1]
    if both.sum() < 100:
        return None
    d = (hu[:, :, 1:] - hu[:, :, :-1])[both].astype(np.float64)
    q1, q3 = np.percentile(d, [25, 75])
    keep = d[(d > q1 - 3 * (q3 - q1)) & (d < q3 + 3 * (q3 - q1))]  # drop edges the erosion missed
    return round(float(keep.std() / np.sqrt(2)), 1)


def real_slab():
    """The real slab: its CT Volume, its organ label Volume and the labels' names (id -> TotalSegmentator name)."""
    from kitseg.io import read_label, read_volume

    ct = read_volume(_common.require(REAL / "example_ct_sm.nii.gz", "the real CT slab in ../shared/data/real_ct"))
    organs = read_label(REAL / "example_ct_sm_organs.nii.gz")
    names = json.loads((REAL / "example_ct_sm_organs.json").read_text(encoding="utf-8"))["labels"]
    return ct, organs, names


def real_sets() -> tuple[dict[str, np.ndarray], dict]:
    """HU of each tissue row in the real slab, and a description of what was used."""
    ct, organs, names = real_slab()
    hu, lab = ct.array.astype(np.float32), organs.array
    out, used = {}, {}
    for row, (prefixes, _) in GROUPS.items():
        ids = [int(k) for k, v in names.items() if v.startswith(prefixes)]
        used[row] = sorted(names[str(i)] for i in ids)
        out[row] = hu[np.isin(lab, ids)]
    unlabelled = body_mask(hu) & (lab == 0) & (hu > BODY_HU)  # no gas or unlabelled lung
    out[FAT], t = fat_voxels(hu, unlabelled)
    used[FAT] = f"unlabelled body below its Otsu threshold {t:.0f} HU"
    info = {"ct": "example_ct_sm.nii.gz", "shape": list(hu.shape), "spacing_mm": [round(s, 3) for s in ct.spacing],
            "labels": used, "fat_threshold_hu": round(t, 1),
            "liver_noise_sd_hu": noise_sd(hu, np.isin(lab, [int(k) for k, v in names.items() if v == "liver"]))}
    return out, info


def synthetic_sets(hu: np.ndarray, tissue: np.ndarray) -> tuple[dict[str, np.ndarray], float]:
    """HU of each tissue row in one synthetic CT (by its tissue map), and its fat threshold."""
    from kitseg.synth.tissues import Tissue

    def of(names):
        return np.isin(tissue, [int(Tissue[n]) for n in names])

    out = {row: hu[of(tissues)] for row, (_, tissues) in GROUPS.items()}
    out[FAT], t = fat_voxels(hu, body_mask(hu) & of(UNLABELLED) & (hu > BODY_HU))
    return out, t


def rendered_cases(n: int, seed: int, downsample: int, phase: str = "arterial"):
    """(case id, HU, tissue map) of ``n`` KiTS19 label maps spread over the dataset, rendered as
    ``kitseg synth --from-masks --downsample`` renders case i with ``seed``."""
    from kitseg.datasets import open_dataset
    from kitseg.io import read_label
    from kitseg.synth import case_seed, downsample_label
    from kitseg.synth.render import render_with_tissues

    _common.require(_common.SHARED_KITS19)
    cases = [c for c in open_dataset(_common.SHARED_KITS19).cases if c.label is not None]
    for i in np.linspace(0, len(cases) - 1, n).round().astype(int):
        small = downsample_label(read_label(cases[i].label, {0, 1, 2}), downsample)
        image, tissue = render_with_tissues(small, case_seed(seed, int(i)), phase=phase)
        yield cases[i].case_id, image.array.astype(np.float32), tissue.array, image.spacing


def procedural_cases(n: int, seed: int, phase: str = "arterial"):
    from kitseg.synth import case_seed, draw_case, synthesize

    for i in range(n):
        syn = synthesize(draw_case(case_seed(seed, i), "small", phase=phase))
        yield f"small_{i}", syn.hu, syn.tissue


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------
def quartiles(values: np.ndarray) -> list[float] | None:
    return [round(float(v), 1) for v in np.percentile(values, [25, 50, 75])] if values.size else None


def iqr_overlap(a: list[float], b: list[float]) -> float:
    """|IQR_a ∩ IQR_b| / |IQR_a ∪ IQR_b| of two (q25, median, q75) triples."""
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    union = max(a[2], b[2]) - min(a[0], b[0])
    return round(inter / union, 2) if union > 0 else 1.0


def pooled(cases, limit_per_case: int = 200_000, seed: int = 0) -> dict:
    """Per row: quartiles of the pooled voxels (each case subsampled to ``limit_per_case``), per-case medians."""
    rng = np.random.default_rng(seed)
    pool: dict[str, list[np.ndarray]] = {}
    medians: dict[str, list[float]] = {}
    thresholds, ids, noise = [], [], []
    from kitseg.synth.tissues import Tissue

    for case_id, hu, tissue, *_ in cases:
        sets, t = synthetic_sets(hu, tissue)
        thresholds.append(round(t, 1))
        noise.append(noise_sd(hu, tissue == Tissue.LIVER))
        ids.append(case_id)
        for row, v in sets.items():
            if v.size == 0:
                continue
            medians.setdefault(row, []).append(round(float(np.median(v)), 1))
            pool.setdefault(row, []).append(v if v.size <= limit_per_case else rng.choice(v, limit_per_case, False))
        print(f"  {case_id}: {hu.shape}", flush=True)
    rows = {row: {"quartiles": quartiles(np.concatenate(pool[row])), "case_medians": medians[row]} for row in pool}
    return {"cases": ids, "fat_thresholds_hu": thresholds, "liver_noise_sd_hu": noise, "rows": rows}


def compare(real: dict[str, np.ndarray], synth: dict) -> dict:
    out = {}
    for row, values in real.items():
        q = quartiles(values)
        s = synth["rows"].get(row)
        out[row] = {"real": q, "real_voxels": int(values.size)}
        if s and q:
            out[row].update(synth=s["quartiles"], case_medians=[min(s["case_medians"]), max(s["case_medians"])],
                            median_difference=round(s["quartiles"][1] - q[1], 1),
                            iqr_overlap=iqr_overlap(q, s["quartiles"]))
    return out


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def _q(q) -> str:
    return f"{q[1]:.0f} [{q[0]:.0f}, {q[2]:.0f}]" if q else "-"


def table(result: dict) -> list[str]:
    kinds = [k for k in ("rendered", "procedural") if k in result]
    head = "| tissue | real: median [IQR] |"
    rule = "|---|---|"
    for k in kinds:
        head += f" {k}: median [IQR] | per-case medians | median diff | IQR overlap |"
        rule += "---|---|---|---|"
    lines = [head, rule]
    for row in [*GROUPS, FAT]:
        line = f"| {row} | {_q(result[kinds[0]]['compare'][row]['real'])} |"
        for k in kinds:
            c = result[k]["compare"][row]
            if "synth" not in c:
                line += " - | - | - | - |"
                continue
            lo, hi = c["case_medians"]
            line += (f" {_q(c['synth'])} | {lo:.0f} to {hi:.0f} | {c['median_difference']:+.0f} | "
                     f"{c['iqr_overlap']:.2f} |")
        lines.append(line)
    return lines


def _span(values) -> str:
    v = [x for x in values if x is not None]
    return f"{min(v):.0f} to {max(v):.0f}" if v else "-"


def section(result: dict, cmd: str) -> str:
    info = result["real_info"]
    r = result["rendered"]
    labels = "; ".join(f"{row}: {', '.join(v) if isinstance(v, list) else v}" for row, v in info["labels"].items())
    phase = result.get("phase", "arterial")
    lines = [f"### Measured against a real CT: {phase} phantoms", "",
             f"{result['date']}, renderer version {result['renderer_version']}; command: `{cmd}`", "",
             f"Real: `{info['ct']}` ({' x '.join(map(str, info['shape']))} voxels at "
             f"{' x '.join(f'{s:g}' for s in info['spacing_mm'])} mm) with its machine-made organ labels "
             f"(TotalSegmentator). Rendered: {len(r['cases'])} KiTS19 label maps spread over the dataset "
             f"({', '.join(r['cases'])}), in-plane size / {result['downsample']} as in the accuracy benchmark, "
             f"seed {result['seed']}"
             + (f"; procedural: {len(result['procedural']['cases'])} small cases" if "procedural" in result else "")
             + ". Synthetic voxels are chosen by the tissue the renderer painted; real ones by the organ labels. "
             "HU: median [25th, 75th percentile] of the pooled voxels; *per-case medians*: their range over the "
             "synthetic cases; *IQR overlap*: |IQR_real ∩ IQR_synth| / |IQR_real ∪ IQR_synth|.", "",
             *table(result), "",
             f"Real labels used: {labels}. Synthetic tissues: "
             + "; ".join(f"{row}: {', '.join(t.lower() for t in ts)}" for row, (_, ts) in GROUPS.items())
             + " (synthetic bone and marrow include the iliac wings, below the real slab).", "",
             "Fat has no label in either image, so it is defined the same way in both, from the body's "
             "outline and the labels, and one data-driven split: the body is the largest region above "
             f"{BODY_HU:.0f} HU with its holes filled, less its outer voxel; its *unlabelled* part above "
             f"{BODY_HU:.0f} HU (real: no organ label; synthetic: painted "
             f"{', '.join(t.lower() for t in UNLABELLED)}) holds fat and the soft tissue "
             "no label covers (abdominal wall muscle, small vessels, partial volume at organ borders); Otsu's "
             "threshold on that part's histogram splits it and the lower class is fat (threshold: real "
             f"{info['fat_threshold_hu']:.0f} HU, synthetic {min(r['fat_thresholds_hu']):.0f} to "
             f"{max(r['fat_thresholds_hu']):.0f} HU). The split cuts the fat's upper tail in both images alike.",
             "", f"Noise (voxel-to-voxel SD in the liver, from in-plane neighbour differences): real "
             f"{info['liver_noise_sd_hu']} HU, rendered {_span(r['liver_noise_sd_hu'])} HU"
             + (f", procedural {_span(result['procedural']['liver_noise_sd_hu'])} HU" if "procedural" in result
                else "") + "."]
    return "\n".join(lines)


def layout(args) -> None:
    """``--layout``: where the kidneys, the spine and the back's muscles lie, real slab vs rendered phantoms."""
    import _realism_layout as lay
    from kitseg.synth.tissues import RENDERER_VERSION

    ct, organs, names = real_slab()
    hu = ct.array.astype(np.float32)
    real = lay.real_layout(hu, organs.array, names, body_mask(hu), ct.spacing)
    cases, ids = [], []
    for case_id, chu, tissue, spacing in rendered_cases(args.cases, args.seed, args.downsample, args.phase):
        cases.append(lay.synthetic_layout(chu, tissue, body_mask(chu), spacing))
        ids.append(case_id)
        print(f"  {case_id}: {cases[-1]}", flush=True)
    result = {"date": _common.now(), "machine": _common.machine(), "renderer_version": RENDERER_VERSION,
              "downsample": args.downsample, "seed": args.seed, "real": real, "cases": ids, "rendered_cases": cases,
              "rendered": lay.summary(cases)}
    _common.write_json(NAME + "_layout" + (f"-{args.tag}" if args.tag else "") + ("-check" if args.no_update else ""),
                       result)
    text = "\n".join([
        "### Measured against a real CT: the layout behind the kidneys", "",
        f"{result['date']}, renderer version {RENDERER_VERSION}; command: `{_common.command('bench_realism.py')}`",
        "", f"Real: example_ct_sm.nii.gz ({real['slices']} kidney slice-sides). Rendered: {len(ids)} KiTS19 label "
        f"maps ({', '.join(ids)}), in-plane size / {args.downsample}, seed {args.seed}. Measured the same way in "
        "both (bench/_realism_layout.py): the spinal canal, vertebral bodies and kidneys from labels (the real "
        "slab's TotalSegmentator labels, the renderer's tissue map), soft tissue (-30 to 150 HU) and the body "
        "outline from HU; each value is a case's median over its slices through a kidney, one side at a time.", "",
        *lay.table(real, result["rendered"]), "",
        f"The real slab's paraspinal muscles alone (TotalSegmentator \"autochthon\", one side): median "
        f"{real['autochthon_mm2_median']:.0f} mm² a slice."])
    print(text)
    if not args.no_update:
        update_doc(text, NAME + "_layout")


def update_doc(body: str, name: str = NAME) -> None:
    doc = DOC.read_text(encoding="utf-8")
    start, end = _common.markers(name)
    if start not in doc:
        raise SystemExit(f"{DOC} has no {start} ... {end} section to rewrite")
    text = doc[: doc.index(start)] + f"{start}\n{body.strip()}\n{end}" + doc[doc.index(end) + len(end):]
    tmp = DOC.with_name(f".{DOC.name}.part")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, DOC)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=6, help="KiTS19 label maps to render, spread over the dataset (6)")
    ap.add_argument("--procedural", type=int, default=3, help="small procedural cases (3; 0: none)")
    ap.add_argument("--downsample", type=int, default=4, help="in-plane downsampling of the rendered CTs (4, as "
                    "bench_accuracy.py)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the rendering (0, as bench_accuracy.py)")
    ap.add_argument("--phase", choices=("arterial", "unenhanced"), default="arterial", help="contrast phase of "
                    "every synthetic case (arterial: the default of kitseg synth; unenhanced: as kitseg synth "
                    "--unenhanced 1); the docs/SYNTH.md section is for arterial, unenhanced goes to its own")
    ap.add_argument("--no-update", action="store_true", help="do not rewrite docs/SYNTH.md")
    ap.add_argument("--tag", default="", help="results go to bench/results/realism[-TAG].json")
    ap.add_argument("--quick", action="store_true", help="--cases 2 --procedural 1; implies --no-update")
    ap.add_argument("--layout", action="store_true", help="measure where the kidneys, the spine and the back's "
                    "muscles lie instead of the HU (bench/_realism_layout.py; its own docs/SYNTH.md section)")
    args = ap.parse_args()
    if args.quick:
        args.cases, args.procedural, args.no_update = 2, 1, True
    if args.layout:
        layout(args)
        return
    from kitseg.synth.tissues import RENDERER_VERSION

    when = _common.now()
    real, real_info = real_sets()
    result = {"date": when, "machine": _common.machine(), "renderer_version": RENDERER_VERSION,
              "downsample": args.downsample, "seed": args.seed, "real_info": real_info}
    print(f"rendering {args.cases} KiTS19 label maps at downsample {args.downsample}", flush=True)
    result["phase"] = args.phase
    result["rendered"] = pooled(rendered_cases(args.cases, args.seed, args.downsample, args.phase))
    result["rendered"]["compare"] = compare(real, result["rendered"])
    if args.procedural:
        print(f"synthesizing {args.procedural} small procedural cases", flush=True)
        result["procedural"] = pooled(procedural_cases(args.procedural, args.seed, args.phase))
        result["procedural"]["compare"] = compare(real, result["procedural"])
    name = NAME + ("" if args.phase == "arterial" else f"_{args.phase}")
    _common.write_json(name + (f"-{args.tag}" if args.tag else "") + ("-check" if args.no_update else ""), result)
    cmd = _common.command("bench_realism.py")
    text = section(result, cmd)
    print(text)
    if not args.no_update:
        update_doc(text, name)


if __name__ == "__main__":
    main()
