"""kitseg.synth: determinism, tissue HU values, geometry, rendering from real masks, tumor/kidney overlap, CLI."""

from __future__ import annotations

import json
from dataclasses import replace

import matplotlib.image as mpimg
import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from conftest import kits19_label, shared_path
from kitseg.cli.main import main
from kitseg.datasets import KITS19, KITS23, open_dataset
from kitseg.io import read_label, read_volume, write_volume
from kitseg.synth import downsample_label, draw_case, make_case, make_dataset, render_from_label, synthesize
from kitseg.synth.dataset import SynthRecord
from kitseg.synth.render import render_with_tissues
from kitseg.synth.tissues import HU_RANGE, N_TISSUES, RENDERER_VERSION, TUMOR_LOOKS
from kitseg.synth.tissues import Tissue as T
from kitseg.volume import Volume


def _seed_with(pred, size="tiny", start=0):
    """The first seed whose drawn case satisfies ``pred`` (drawing is cheap: no voxels)."""
    return next(s for s in range(start, start + 200) if pred(draw_case(s, size)))


# ---------------------------------------------------------------------------------------------
# Determinism and basic content
# ---------------------------------------------------------------------------------------------
def test_same_seed_same_case_other_seed_other_case():
    img1, lab1 = make_case(5, "tiny")
    img2, lab2 = make_case(5, "tiny")
    img3, _ = make_case(6, "tiny")
    assert np.array_equal(img1.array, img2.array) and np.array_equal(lab1.array, lab2.array)
    assert np.allclose(img1.affine, img2.affine)
    assert not np.array_equal(img1.array, img3.array)
    assert img1.shape == (32, 64, 64) and img1.array.dtype == np.int16 and lab1.array.dtype == np.uint8


def test_kits19_and_kits23_label_sets():
    seed = _seed_with(lambda c: c.n_cysts > 0 and c.n_tumors > 0)
    _, lab19 = make_case(seed, "tiny", layout="kits19")
    _, lab23 = make_case(seed, "tiny", layout="kits23")
    assert set(np.unique(lab19.array)) == {0, 1, 2}  # cysts are kidney in KiTS19
    assert set(np.unique(lab23.array)) == {0, 1, 2, 3}
    # Same anatomy: the cyst voxels of KiTS23 are exactly the extra kidney voxels of KiTS19.
    assert np.array_equal(lab19.array > 0, lab23.array > 0)
    assert np.all(lab19.array[lab23.array == 3] == 1)


def test_anatomy_is_in_mm_not_voxels():
    """The same case sampled at twice the in-plane resolution has the same kidney volume."""
    case = draw_case(3, "tiny")
    fine = replace(case, grid=case.grid.refine((1, 2, 2)))
    coarse_ml = (synthesize(case, scanner=False).label > 0).sum() * np.prod(case.grid.spacing) / 1000
    fine_ml = (synthesize(fine, scanner=False).label > 0).sum() * np.prod(fine.grid.spacing) / 1000
    assert 100 < fine_ml < 700  # two adult kidneys (+ lesions)
    assert abs(coarse_ml - fine_ml) / fine_ml < 0.1


def test_paraspinal_muscles_fill_the_back_as_on_a_real_ct():
    """Renderer version 3's back (measured on a real CT slab, docs/SYNTH.md "the layout behind the
    kidneys"): behind the spinal canal each side holds a paraspinal muscle of more than 18 cm² on
    average, reaching more than 60 mm off the midline. Version 2 drew a 48 x 42 mm muscle 3 to 51 mm off the midline
    (at most 16 cm²)."""
    from kitseg.synth.anatomy import Slab, draw_body, paint_body
    from kitseg.synth.procedural import Grid, make_fields

    areas = []
    for seed in range(5):
        body = draw_body(np.random.default_rng([seed, 0]))
        grid = Grid((1, 400, 400), (1.0, 1.0, 1.0), (0.0, -200.0, -200.0))
        z, y, x = grid.axes()
        slab = Slab(z, y, x)
        tissue, tex = np.empty(slab.shape, np.uint8), np.empty(slab.shape, np.float32)
        paint_body(slab, body, make_fields(seed, grid), tissue, tex)
        plane = tissue[0]
        canal_y = y[np.argwhere(plane == T.CANAL)[:, 0]].mean()
        Y, X = np.meshgrid(y, x, indexing="ij")
        inside = ~np.isin(plane, [T.AIR, T.SKIN, T.FAT, T.TABLE])
        back_fat_y = Y[inside & (np.abs(X) < 3)].max()  # the back's fat starts behind this
        for side in (-1, 1):
            # behind the canal and 10 mm past it (the quadratus lumborum lies level with the canal),
            # inside the back's wall muscle layer
            para = ((plane == T.MUSCLE) & (side * X > 0) & (Y > canal_y + 10) & (np.abs(X) < 100)
                    & (Y < back_fat_y - body.wall))
            areas.append(para.sum())
            assert np.abs(X[para]).max() > 60, seed
    assert np.mean(areas) > 1800


# ---------------------------------------------------------------------------------------------
# HU values
# ---------------------------------------------------------------------------------------------
# Ranges from the issue (late-arterial CT); the test checks each tissue's median over its voxels.
EXPECTED = {T.FAT: (-120, -80), T.MUSCLE: (28, 60), T.LIVER: (60, 100), T.CORTEX: (150, 250),
            T.CYST: (0, 20), T.BONE: (300, 1300), T.AIR: (-1005, -990), T.NECROSIS: (0, 40)}


def test_tissue_hu_values_before_the_scanner():
    seed = _seed_with(lambda c: c.n_cysts > 0 and c.n_tumors > 0, "small")
    case = draw_case(seed, "small")
    syn = synthesize(case, scanner=False, supersample=(1, 1, 1))  # one tissue per voxel
    hu, tissue = syn.hu, syn.tissue
    for t, (lo, hi) in EXPECTED.items():
        values = hu[tissue == t]
        if t in (T.NECROSIS,) and values.size == 0:
            continue
        assert values.size > 20, t.name
        assert lo <= np.median(values) <= hi, (t.name, np.median(values))
    cortex, medulla = np.median(hu[tissue == T.CORTEX]), np.median(hu[tissue == T.MEDULLA])
    assert medulla < cortex - 40
    for t in TUMOR_LOOKS:  # viable tumor: heterogeneous, mean within the drawn range
        v = hu[tissue == t]
        if v.size > 50:
            assert HU_RANGE[t][0] - 15 <= v.mean() <= HU_RANGE[t][1] + 15
            assert v.std() > 5


def test_final_image_hu_and_noise():
    case = draw_case(11, "small")
    syn = synthesize(case)
    hu, tissue = syn.hu, syn.tissue
    # muscle: drawn in 30-58 HU since renderer version 2 (calibrated against a real CT), plus blur and noise
    for t, (lo, hi) in ((T.FAT, (-120, -80)), (T.LIVER, (55, 105)), (T.MUSCLE, (25, 65))):
        interior = ndimage.binary_erosion(tissue == t, iterations=2)
        assert interior.sum() > 100, t.name
        assert lo <= np.median(hu[interior]) <= hi, (t.name, np.median(hu[interior]))
    # Air far from the body: the scanner noise alone, at the case's drawn level (10-30 HU).
    air = ndimage.binary_erosion(tissue == T.AIR, iterations=4)
    assert 10 <= case.noise_sd <= 30
    assert abs(hu[air].std() - case.noise_sd) < 0.15 * case.noise_sd
    assert abs(np.median(hu[air]) + 1000) < 5


def _best_balanced_accuracy(tumor: np.ndarray, kidney: np.ndarray) -> float:
    """Best balanced accuracy of "tumor if HU > t" or "tumor if HU < t" over all thresholds t."""
    values = np.concatenate([tumor, kidney])
    best = 0.0
    for t in np.unique(np.quantile(values, np.linspace(0, 1, 501))):
        ba = ((tumor > t).mean() + (kidney <= t).mean()) / 2
        best = max(best, ba, 1 - ba)
    return best


def test_no_single_threshold_separates_tumor_from_kidney():
    """Tumor and kidney HU histograms overlap: pooled over 6 cases with tumors, the best single
    HU threshold (either direction) classifies tumor vs kidney voxels with balanced accuracy < 0.8
    (1.0 would be perfect separation, 0.5 chance); no case reaches 0.95."""
    tumor, kidney, per_case = [], [], []
    for seed in range(6):
        syn = synthesize(draw_case(seed, "tiny", n_tumors=2))
        tumor.append(syn.hu[syn.label == 2])
        kidney.append(syn.hu[syn.label == 1])
        per_case.append(_best_balanced_accuracy(tumor[-1], kidney[-1]))
    pooled = _best_balanced_accuracy(np.concatenate(tumor), np.concatenate(kidney))
    assert pooled < 0.8, pooled
    assert max(per_case) < 0.95, per_case
    # The distributions really overlap: a large share of tumor voxels lies inside the kidney's
    # central 80% range.
    k_lo, k_hi = np.percentile(np.concatenate(kidney), [10, 90])
    t_all = np.concatenate(tumor)
    assert ((t_all > k_lo) & (t_all < k_hi)).mean() > 0.4


# ---------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------
def test_kits19_file_geometry(tmp_path):
    img, lab = make_case(2, "tiny", geometry="kits19")
    write_volume(img, tmp_path / "imaging.nii.gz")
    write_volume(lab, tmp_path / "segmentation.nii.gz")
    for name in ("imaging.nii.gz", "segmentation.nii.gz"):
        nimg = nib.load(tmp_path / name)
        assert nib.aff2axcodes(nimg.affine) == ("I", "P", "L")
        assert nimg.shape == (32, 64, 64)  # (slices, rows, columns) like KiTS19
        assert np.allclose(nimg.affine[:3, 3], 0, atol=1e-3)  # KiTS19 files have no translation
    back = read_volume(tmp_path / "imaging.nii.gz")
    assert back.same_geometry(img) and np.array_equal(back.array, img.array)
    assert np.array_equal(read_label(tmp_path / "segmentation.nii.gz").array, lab.array)


def test_ras_file_geometry(tmp_path):
    img, _ = make_case(2, "tiny", geometry="ras")
    write_volume(img, tmp_path / "ct.nii.gz")
    nimg = nib.load(tmp_path / "ct.nii.gz")
    assert nib.aff2axcodes(nimg.affine) == ("R", "A", "S")
    assert nimg.shape == (64, 64, 32)
    back = read_volume(tmp_path / "ct.nii.gz")
    assert back.same_geometry(img) and np.array_equal(back.array, img.array)


# ---------------------------------------------------------------------------------------------
# Rendering from real label maps
# ---------------------------------------------------------------------------------------------
def _one_case_folder(tmp_path, case: int):
    src = kits19_label(case)
    d = tmp_path / "masks" / f"case_{case:05d}"
    d.mkdir(parents=True)
    (d / "segmentation.nii.gz").symlink_to(src)
    return tmp_path / "masks", src


def test_render_from_real_mask_reproduces_it_exactly(tmp_path):
    masks, src = _one_case_folder(tmp_path, 61)  # 29 slices of 512 x 512
    out = tmp_path / "out"
    make_dataset(out, from_masks=masks, seed=1, progress=False, workers=1)
    written = out / "case_00061" / "segmentation.nii.gz"
    assert written.read_bytes() == src.read_bytes()
    ds = open_dataset(out)
    image, label = ds.case("case_00061").load(ds.spec)  # validates labels and matching grids
    original = read_label(src)
    assert np.array_equal(label.array, original.array) and label.same_geometry(original)
    assert image.same_geometry(original)
    assert nib.aff2axcodes(nib.load(out / "case_00061" / "imaging.nii.gz").affine) == ("I", "P", "L")
    # The image follows the labels: kidney bright, the shell of fat around it dark.
    hu, lab = image.array, label.array
    shell = ndimage.binary_dilation(lab > 0, iterations=4) & (lab == 0)
    assert 100 < np.median(hu[lab == 1]) < 260
    assert np.median(hu[shell]) < np.median(hu[lab == 1]) - 100


def test_render_downsampled_mask(tmp_path):
    label = read_label(kits19_label(61))
    small = downsample_label(label, 4)
    assert small.shape == (29, 128, 128)
    assert np.allclose(small.spacing, (label.spacing[0], 4 * label.spacing[1], 4 * label.spacing[2]))
    # The block centre of voxel (z, 0, 0) is where the centre of the original 4x4 block lies.
    assert np.allclose(small.index_to_world((3, 0, 0)), label.index_to_world((3, 1.5, 1.5)))
    for v in (1, 2):  # majority vote keeps label volumes (in ml) within a few percent
        ml_full = (label.array == v).sum() * label.voxel_volume_ml
        ml_small = (small.array == v).sum() * small.voxel_volume_ml
        assert abs(ml_small - ml_full) < 0.05 * ml_full + 1
    a = render_from_label(small, seed=4)
    b = render_from_label(small, seed=4)
    assert a.same_geometry(small) and np.array_equal(a.array, b.array)
    write_volume(small, tmp_path / "s.nii.gz")
    assert nib.load(tmp_path / "s.nii.gz").shape == (29, 128, 128)


def _two_kidneys(shape=(40, 80, 96), spacing=(1.0, 3.5, 3.5)) -> Volume:
    """A label map with two ellipsoid kidneys (1), a tumor (2) on the left one, on thin slices."""
    z, y, x = (np.arange(n) * s for n, s in zip(shape, spacing))
    Z, Y, X = np.meshgrid(z - z.mean(), y - y.mean() - 20, x - x.mean(), indexing="ij")
    lab = np.zeros(shape, np.uint8)
    for side in (-1, 1):
        lab[((Z / 18) ** 2 + (Y / 25) ** 2 + ((X - side * 75) / 25) ** 2) < 1] = 1
    lab[((Z / 10) ** 2 + (Y / 12) ** 2 + ((X - 95) / 12) ** 2) < 1] = 2
    return Volume.from_geometry(lab, spacing=spacing)


def test_render_with_tissues_gives_the_same_ct_and_the_painted_tissues():
    label = _two_kidneys()
    image, tissue = render_with_tissues(label, seed=5)
    assert np.array_equal(image.array, render_from_label(label, seed=5).array)
    assert tissue.same_geometry(label) and tissue.array.dtype == np.uint8
    t, lab = tissue.array, label.array
    assert t.max() < N_TISSUES  # every voxel painted, also on the interpolated thin slices
    assert set(np.unique(t[lab == 1])) <= {T.CORTEX, T.MEDULLA} and (t[lab == 1] == T.MEDULLA).any()
    assert set(np.unique(t[lab == 2])) <= {*TUMOR_LOOKS, T.NECROSIS}
    assert not np.isin(t[lab == 0], [T.CORTEX, T.MEDULLA, *TUMOR_LOOKS]).any()
    hu = image.array
    for tis in (T.FAT, T.MUSCLE, T.CORTEX):  # the CT shows the tissues where the map says
        inner = ndimage.binary_erosion(t == tis, iterations=2)
        lo, hi = HU_RANGE[tis]
        assert lo - 40 < np.median(hu[inner]) < hi + 40, tis


def test_unenhanced_phase_darkens_what_enhances_and_nothing_else(tmp_path):
    label = _two_kidneys()
    art, t_art = render_with_tissues(label, seed=5)
    une, t_une = render_with_tissues(label, seed=5, phase="unenhanced")
    assert np.array_equal(t_art.array, t_une.array)  # the same anatomy
    kid = label.array == 1
    assert np.median(art.array[kid]) > 100 and 0 < np.median(une.array[kid]) < 60
    for tis in (T.AORTA, T.LIVER):
        inner = ndimage.binary_erosion(t_une.array == tis, iterations=2)
        if inner.sum() > 50:
            assert np.median(une.array[inner]) < 80 < np.median(art.array[inner]) + 30, tis
    fat = ndimage.binary_erosion(t_une.array == T.FAT, iterations=2)
    assert abs(float(np.median(une.array[fat])) - float(np.median(art.array[fat]))) < 30
    # A dataset with every case unenhanced records it per case; arterial cases are as before.
    make_dataset(tmp_path / "u", cases=2, seed=3, size="tiny", unenhanced=1.0, progress=False)
    make_dataset(tmp_path / "a", cases=2, seed=3, size="tiny", progress=False)
    rec = SynthRecord.model_validate_json((tmp_path / "u" / "synth.json").read_text(encoding="utf-8"))
    assert rec.unenhanced == 1.0 and [c.phase for c in rec.cases] == ["unenhanced", "unenhanced"]
    a = read_volume(tmp_path / "a" / "case_00000" / "imaging.nii.gz").array
    assert np.array_equal(a, make_case(rec.cases[0].seed, "tiny")[0].array)
    assert not np.array_equal(a, read_volume(tmp_path / "u" / "case_00000" / "imaging.nii.gz").array)


def test_render_kits23_mask_with_cysts(tmp_path, capsys):
    src = shared_path("data", "kits23", "case_00427", "segmentation.nii.gz")  # has cysts (label 3)
    small = downsample_label(read_label(src, {0, 1, 2, 3}), 4)
    hu, lab = render_from_label(small, seed=2).array, small.array
    assert (lab == 3).sum() > 20
    assert -20 < np.median(hu[lab == 3]) < 50  # water density
    assert np.median(hu[lab == 1]) > np.median(hu[lab == 3]) + 60
    # The KiTS19 layout has no cyst label: refused with a hint, no traceback.
    d = tmp_path / "m" / "case_00427"
    d.mkdir(parents=True)
    (d / "segmentation.nii.gz").symlink_to(src)
    assert main(["synth", str(tmp_path / "o"), "--from-masks", str(tmp_path / "m"), "--no-progress"]) == 2
    assert "--layout kits23" in capsys.readouterr().err


def test_downsample_nested_majority():
    arr = np.zeros((1, 2, 10), np.uint8)
    arr[0, :, 0:2] = [[1, 1], [1, 0]]  # kidney majority
    arr[0, :, 2:4] = [[2, 2], [1, 1]]  # tumor is half of the labelled part: tumor
    arr[0, :, 4:6] = [[1, 0], [0, 0]]  # mostly background
    arr[0, :, 6:8] = [[1, 3], [0, 0]]  # half labelled: foreground; cyst vs kidney tie: cyst
    arr[0, :, 8:10] = [[2, 1], [3, 0]]  # labelled, tumor is a third of it: not tumor; cyst ties kidney
    small = downsample_label(Volume.from_geometry(arr, spacing=(2.0, 1.0, 1.0)), 2)
    assert small.array[0].tolist() == [[1, 2, 0, 3, 3]]
    # KiTS19 view of the same blocks (cysts are kidney): same foreground and same tumor.
    arr19 = np.where(arr == 3, 1, arr).astype(np.uint8)
    small19 = downsample_label(Volume.from_geometry(arr19, spacing=(2.0, 1.0, 1.0)), 2)
    assert small19.array[0].tolist() == [[1, 2, 0, 1, 1]]


# ---------------------------------------------------------------------------------------------
# Datasets, CLI, preview
# ---------------------------------------------------------------------------------------------
def test_dataset_kits23_layout_is_readable(tmp_path):
    paths = make_dataset(tmp_path / "d", cases=2, seed=3, size="tiny", layout="kits23", progress=False)
    assert [p.name for p in paths] == ["case_00000", "case_00001"]
    ds = open_dataset(tmp_path / "d")
    assert ds.spec.labels == KITS23.labels and ds.spec.regions == KITS23.regions
    for case in ds.cases:
        image, label = case.load(ds.spec)
        assert image.shape == label.shape == (32, 64, 64)
    rec = SynthRecord.model_validate_json((tmp_path / "d" / "synth.json").read_text(encoding="utf-8"))
    assert rec.layout == "kits23" and len(rec.cases) == 2 and rec.cases[0].noise_sd_hu is not None
    assert rec.renderer_version == RENDERER_VERSION
    # Case i does not depend on how many cases are made.
    make_dataset(tmp_path / "e", cases=1, seed=3, size="tiny", layout="kits23", progress=False)
    a = read_volume(tmp_path / "d" / "case_00000" / "imaging.nii.gz").array
    assert np.array_equal(a, read_volume(tmp_path / "e" / "case_00000" / "imaging.nii.gz").array)


def test_cli_synth_with_preview(tmp_path):
    out = tmp_path / "ds"
    assert main(["synth", str(out), "--cases", "2", "--size", "tiny", "--seed", "7", "--preview",
                 "--no-progress"]) == 0
    for c in ("case_00000", "case_00001"):
        assert (out / c / "imaging.nii.gz").is_file() and (out / c / "segmentation.nii.gz").is_file()
    assert json.loads((out / "dataset.json").read_text(encoding="utf-8"))["labels"] == KITS19.labels
    png = (out / "preview.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


@pytest.mark.parametrize("args", [["--size", "huge"], ["--cases", "0"], ["--layout", "kits99"],
                                  ["--from-masks", "/no/such/folder"], ["--downsample", "0"],
                                  ["--unenhanced", "1.5"]])
def test_cli_synth_bad_arguments(tmp_path, args):
    assert main(["synth", str(tmp_path / "x"), "--no-progress", *args]) == 2


def test_cli_synth_out_dir_is_a_file(tmp_path, capsys):
    f = tmp_path / "file.txt"
    f.write_text("x")
    assert main(["synth", str(f), "--cases", "1", "--size", "tiny", "--no-progress"]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_cli_preview_with_a_real_reference_ct_adds_a_row(tmp_path):
    ref = shared_path("data", "real_ct", "example_ct_sm.nii.gz")
    out = tmp_path / "ds"
    assert main(["synth", str(out), "--cases", "1", "--size", "tiny", "--preview", "--no-progress"]) == 0
    plain = mpimg.imread(out / "preview.png")
    assert main(["synth", str(out), "--cases", "1", "--size", "tiny", "--preview", "--reference", str(ref),
                 "--no-progress"]) == 0
    with_ref = mpimg.imread(out / "preview.png")
    assert with_ref.shape[0] > plain.shape[0] * 1.5  # one more row of slices
