"""Fingerprint, preset geometry, the resumable case cache and the `fingerprint`/`preprocess` commands."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from kitseg.cli.main import main
from kitseg.datasets import open_dataset
from kitseg.errors import KitsegError
from kitseg.io import read_label, write_volume
from kitseg.preprocessing.cache import list_entries, load_case, preprocess_dataset
from kitseg.preprocessing.fingerprint import compute_fingerprint, median_target_spacing, read_fingerprint
from kitseg.preprocessing.pipeline import preprocess_case, target_grid
from kitseg.preprocessing.records import CaseRecord, Fingerprint
from kitseg.preprocessing.spec import PRESETS, PreprocessSpec
from kitseg.stages.grid import paste, restore
from kitseg.volume import Volume
from preprocessing_data import make_case, write_dataset

SRC = Path(__file__).resolve().parents[1] / "src"


# ---------------------------------------------------------------------------------------------
# Fingerprint on volumes with known statistics
# ---------------------------------------------------------------------------------------------
def _known_case(root: Path, name: str, shape, spacing, fg_values: np.ndarray, hole_value: int) -> dict:
    """Background -1000 HU; a box of kidney (label 1) minus one corner voxel, 4 tumor voxels (label 2)."""
    img = np.full(shape, -1000, np.int16)
    lab = np.zeros(shape, np.uint8)
    box = (slice(1, 3), slice(1, 4), slice(2, 6))
    lab[box] = 1
    lab[1, 1, 2] = 0  # a hole: inside the kidney box (ROI) but not foreground
    lab[2, 2:4, 3:5] = 2
    fg = lab > 0
    img[fg] = fg_values
    img[1, 1, 2] = hole_value
    d = root / name
    d.mkdir(parents=True)
    write_volume(Volume.from_geometry(img, spacing=spacing), d / "imaging.nii.gz")
    write_volume(Volume.from_geometry(lab, spacing=spacing), d / "segmentation.nii.gz")
    return {"img": img, "lab": lab, "fg": img[fg], "roi": img[box].ravel()}


def test_fingerprint_of_known_volumes(tmp_path):
    a = _known_case(tmp_path, "case_00000", (4, 6, 8), (2.0, 1.0, 1.0), np.arange(23), 500)
    b = _known_case(tmp_path, "case_00001", (6, 6, 8), (3.0, 0.5, 1.0), 100 + 2 * np.arange(23), -40)
    fp = compute_fingerprint(open_dataset(tmp_path), workers=1, progress=False)
    assert fp.n_cases == 2 and [c.case_id for c in fp.cases] == ["case_00000", "case_00001"]
    assert fp.cases[1].shape == (6, 6, 8) and np.allclose(fp.cases[1].spacing, (3.0, 0.5, 1.0))
    assert np.allclose(fp.median_spacing, (2.5, 0.75, 1.0)) and np.allclose(fp.median_shape, (5, 6, 8))
    assert np.allclose(fp.max_extent_mm, (18.0, 6.0, 8.0))
    for region, values in [("foreground", np.concatenate([a["fg"], b["fg"]])),
                           ("image", np.concatenate([a["img"].ravel(), b["img"].ravel()])),
                           ("roi", np.concatenate([a["roi"], b["roi"]]))]:
        st = fp.intensity[region]
        values = values.astype(np.float64)
        assert st.n_voxels == values.size
        assert st.mean == pytest.approx(values.mean()) and st.std == pytest.approx(values.std())
        assert (st.min, st.max) == (values.min(), values.max())
        assert [st.p00_05, st.p00_5, st.p99_5, st.p99_95] == pytest.approx(
            np.percentile(values, [0.05, 0.5, 99.5, 99.95]).tolist())
        assert sum(st.histogram) == values.size
    total = 4 * 6 * 8 + 6 * 6 * 8
    assert fp.class_fractions["kidney"] == pytest.approx(2 * 19 / total)
    assert fp.class_fractions["tumor"] == pytest.approx(2 * 4 / total)
    assert fp.cases[0].label_voxels == {"background": 192 - 23, "kidney": 19, "tumor": 4}
    assert np.allclose(fp.cases[0].kidney_bbox_mm, (4.0, 3.0, 4.0))  # 2 x 3 x 4 voxels
    assert np.allclose(fp.cases[1].kidney_bbox_mm, (6.0, 1.5, 4.0))
    assert np.allclose(fp.cases[1].kidney_component_bbox_mm[0], (6.0, 1.5, 4.0))
    assert Fingerprint.model_validate_json(fp.model_dump_json()) == fp


def test_fingerprint_roi_statistics_cover_the_boxes_the_stage_crops(tmp_path):
    """With a stage's RoiSpec the "roi" statistics are taken over exactly the voxels that stage's crop
    holds (margin and minimum size included), not over the tighter kidney box."""
    from kitseg.preprocessing.spec import RoiSpec

    a = _known_case(tmp_path, "case_00000", (4, 6, 8), (2.0, 1.0, 1.0), np.arange(23), 500)
    b = _known_case(tmp_path, "case_00001", (6, 6, 8), (3.0, 0.5, 1.0), 100 + 2 * np.arange(23), -40)
    roi = RoiSpec(margin_mm=(0.0, 1.0, 1.0), kidneys="both", min_size_mm=(0.0, 0.0, 6.0))
    fp = compute_fingerprint(open_dataset(tmp_path), workers=1, progress=False, roi_spec=roi)
    assert fp.roi == roi
    crops = []
    for c in (a, b):
        spacing = (2.0, 1.0, 1.0) if c is a else (3.0, 0.5, 1.0)
        image, label = Volume.from_geometry(c["img"], spacing=spacing), Volume.from_geometry(c["lab"], spacing=spacing)
        (entry,) = preprocess_case(image, label, PreprocessSpec(roi=roi, intensity={"scheme": "none"}))
        crops.append(entry.image[0].ravel())
    values = np.concatenate(crops).astype(np.float64)
    st = fp.intensity["roi"]
    assert st.n_voxels == values.size > a["roi"].size + b["roi"].size
    assert st.mean == pytest.approx(values.mean()) and st.std == pytest.approx(values.std())


def test_fingerprint_samples_deterministically_and_independent_of_workers(tmp_path):
    ds = open_dataset(write_dataset(tmp_path, 3))
    one = compute_fingerprint(ds, workers=1, progress=False, samples_per_case=50)
    two = compute_fingerprint(ds, workers=2, progress=False, samples_per_case=50)
    assert one == two
    other_seed = compute_fingerprint(ds, workers=1, progress=False, samples_per_case=50, seed=1)
    assert other_seed.intensity["image"].mean == one.intensity["image"].mean  # exact, not sampled
    assert other_seed.intensity["image"].p00_5 != one.intensity["image"].p00_5 or \
        other_seed.intensity["image"].p99_5 != one.intensity["image"].p99_5


def test_fingerprint_of_labels_only(tmp_path):
    fp = compute_fingerprint(open_dataset(write_dataset(tmp_path, 2, images=False)), workers=1, progress=False)
    assert fp.intensity == {} and fp.class_fractions["kidney"] > 0 and not fp.cases[0].has_image


# ---------------------------------------------------------------------------------------------
# Preset geometry on the KiTS19 case_00000 grid (no arrays)
# ---------------------------------------------------------------------------------------------
def _kits_fp(**kw) -> Fingerprint:
    base = dict(dataset="x", n_cases=1, cases=[], median_spacing=(3.0, 0.78, 0.78), median_shape=(106, 512, 512),
                spacing_p10=(0.8, 0.7, 0.7), max_extent_mm=(611 * 0.5 * 2, 512 * 0.92, 512 * 0.92),
                class_fractions={})
    return Fingerprint(**{**base, **kw})


@pytest.mark.parametrize("name, expect", [
    ("zhang_stage1", ((47, 291, 291), None)),  # 6.44 x 1.62 x 1.62 mm: 611 * 0.5 / 6.44 = 47.4
    ("zhang_stage2", ((95, 291, 291), None)),  # 3.22 x 1.62 x 1.62 mm
    ("fcn_ppm", ((611, 512, 512), None)),  # no resampling
    ("resunet3d", ((153, 256, 256), None)),  # 2 mm slices, 256 x 256
    ("vnet25d", ((306, 512, 512), None)),  # 1 mm slices, full slices
    ("mlperf", ((191, 393, 393), None)),  # 1.6 x 1.2 x 1.2 mm: 611 * 0.5 / 1.6, 512 * 0.92 / 1.2 = 392.5
    ("tunet_wnet", ((64, 256, 256), (128, 256, 256))),  # the largest volume is twice as long: half the slices
    ("tunet_lnet", ((32, 128, 128), (64, 128, 128))),
    ("nnunet_fullres", ((382, 604, 604), None)),  # z: 10th percentile 0.8 mm (anisotropic median), 0.78 in-plane
])
def test_preset_target_grids(name, expect):
    assert target_grid((611, 512, 512), (0.5, 0.92, 0.92), PRESETS[name], _kits_fp()) == expect


def test_median_target_spacing_follows_nnunet():
    assert median_target_spacing(_kits_fp()) == (0.8, 0.78, 0.78)
    assert median_target_spacing(_kits_fp(median_shape=(400, 512, 512))) == (3.0, 0.78, 0.78)
    with pytest.raises(KitsegError):
        target_grid((10, 10, 10), (1, 1, 1), PRESETS["tunet_wnet"], None)


# ---------------------------------------------------------------------------------------------
# One case through every preset, and exact undo
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return open_dataset(write_dataset(tmp_path_factory.mktemp("data"), 3))


@pytest.fixture(scope="module")
def fingerprint(dataset):
    return compute_fingerprint(dataset, workers=1, progress=False)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_preprocesses_and_undoes(name, fingerprint):
    spec = PRESETS[name]
    if spec.target_shape is not None:  # TuNet's 256 x 256 x 128 is too big for a unit test
        spec = spec.model_copy(update={"target_shape": [16, 24, 32]})
    if spec.in_plane_shape is not None:
        spec = spec.model_copy(update={"in_plane_shape": [20, 24]})
    image, label = make_case(1, spacing=(2.5, 0.8, 0.85))
    entries = preprocess_case(image, label, spec, fingerprint, case_id="c")
    assert len(entries) == (2 if spec.roi is not None and spec.roi.kidneys == "each" else 1)
    rebuilt = np.zeros(label.shape, np.uint8)
    for e in entries:
        assert e.image.dtype == np.float32 and e.image.shape == (1, *e.record.shape)
        assert e.label.dtype == np.uint8 and e.label.shape == e.record.shape
        assert set(np.unique(e.label)) <= {0, 1, 2}
        back = restore(e.label, e.record.resample, order="nearest")
        full = paste(back, e.record.crop) if e.record.crop else back.array
        assert full.shape == label.shape
        assert np.allclose(e.record.original_affine, label.affine)
        np.maximum(rebuilt, full, out=rebuilt)
    if not spec.resamples:  # crop + paste only: the kidneys come back exactly
        assert np.array_equal(rebuilt, label.array)
    if spec.intensity.scheme == "volume_zscore":
        assert abs(float(entries[0].image.mean())) < 1e-4 and float(entries[0].image.std()) == pytest.approx(1, 1e-3)


def test_one_entry_per_kidney_and_exact_paste(fingerprint):
    image, label = make_case(2)
    spec = PreprocessSpec(roi={"margin_mm": 2.0, "kidneys": "each"}, intensity={"scheme": "volume_zscore"})
    entries = preprocess_case(image, label, spec, fingerprint, case_id="c")
    assert [e.record.entry_id for e in entries] == ["c_k0", "c_k1"]
    right, left = (e.record.crop.slices for e in entries)
    assert right[2].stop <= left[2].start  # k0 is the patient's right kidney (low x)
    assert 2 not in entries[0].label and 2 in entries[1].label  # the tumor is in the left kidney
    rebuilt = np.maximum(*(paste(e.label, e.record.crop) for e in entries))
    assert np.array_equal(rebuilt, label.array)
    assert np.array_equal(paste(entries[1].image[0], entries[1].record.crop)[left],
                          entries[1].image[0])  # the image crop lands where it came from


def test_inference_roi_comes_from_the_given_mask():
    image, label = make_case(0)
    guess = np.zeros(label.shape, np.uint8)
    guess[5:10, 10:20, 5:15] = 1
    (entry,) = preprocess_case(image, None, PRESETS["vnet25d"], case_id="c", roi_from=guess)
    assert entry.record.crop.bbox == ((5, 10), (0, 40), (0, 40)) and entry.label is None
    with pytest.raises(KitsegError):
        preprocess_case(image, None, PRESETS["vnet25d"], case_id="c")


# ---------------------------------------------------------------------------------------------
# The cache: layout, resume, kill
# ---------------------------------------------------------------------------------------------
def test_cache_layout_and_resume(dataset, fingerprint, tmp_path):
    cache = tmp_path / "cache"
    spec = PRESETS["mlperf"]
    records = preprocess_dataset(dataset, cache, spec, fingerprint, workers=1, progress=False)
    assert [r.entry_id for r in records] == ["case_00000", "case_00001", "case_00002"]
    assert list_entries(cache) == ["case_00000", "case_00001", "case_00002"]
    c = load_case(cache, "case_00001")
    assert c.image.shape == (1, *c.record.shape) and c.label.dtype == np.uint8
    assert CaseRecord.model_validate_json((cache / "case_00001.json").read_text(encoding="utf-8")) == c.record
    original = read_label(dataset.cases[1].label)
    assert restore(c.label, c.record.resample, order="nearest").same_geometry(original)
    # an interruption: one entry lost its .json (npz written, json not), a temporary file was left
    (cache / "case_00001.json").unlink()
    stray = cache / ".case_00002.npz.abc123.part.npz"
    stray.write_bytes(b"half")
    kept = (cache / "case_00000.npz").stat().st_mtime_ns
    time.sleep(0.01)
    again = preprocess_dataset(dataset, cache, spec, fingerprint, workers=1, progress=False)
    assert again == records
    assert not stray.exists() and (cache / "case_00001.json").exists()
    assert (cache / "case_00000.npz").stat().st_mtime_ns == kept  # finished cases are not redone
    with pytest.raises(KitsegError, match="another preprocessing spec"):
        preprocess_dataset(dataset, cache, PRESETS["resunet3d"], fingerprint, workers=1, progress=False)
    other = fingerprint.model_copy(update={"max_extent_mm": (1.0, 1.0, 1.0)})
    nnunet = PRESETS["nnunet_fullres"]
    preprocess_dataset(dataset, tmp_path / "n", nnunet, fingerprint, workers=1, progress=False)
    with pytest.raises(KitsegError, match="another dataset fingerprint"):
        preprocess_dataset(dataset, tmp_path / "n", nnunet, other, workers=1, progress=False)


def test_a_killed_run_leaves_no_corrupt_entry(tmp_path):
    data = write_dataset(tmp_path / "data", 4, shape=(32, 80, 80))
    cache = tmp_path / "cache"
    script = ("import sys; from kitseg.datasets import open_dataset; from kitseg.preprocessing.cache import "
              "preprocess_dataset; from kitseg.preprocessing.spec import PRESETS; preprocess_dataset("
              "open_dataset(sys.argv[1]), sys.argv[2], PRESETS['mlperf'], workers=1, progress=False)")
    proc = subprocess.Popen([sys.executable, "-c", script, str(data), str(cache)],
                            env=dict(os.environ, PYTHONPATH=str(SRC)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:  # kill it while it writes its first files
        if cache.is_dir() and any(".part" in p.name or p.name == "index.json" for p in cache.iterdir()):
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert len(list_entries(cache)) < 4
    for path in cache.glob("case_*.json"):  # everything under a final name is complete
        entry = load_case(cache, path.stem)
        assert entry.image.shape == (1, *entry.record.shape)
    assert main(["preprocess", str(data), "-o", str(cache), "--preset", "mlperf", "--workers", "1",
                 "--no-progress"]) == 0
    assert len(list_entries(cache)) == 4 and not [p for p in cache.iterdir() if ".part" in p.name]
    for e in list_entries(cache):
        load_case(cache, e)


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------
def test_fingerprint_command(dataset, tmp_path, capsys):
    out = tmp_path / "fp.json"
    assert main(["fingerprint", str(dataset.root), "-o", str(out), "--workers", "1", "--no-progress"]) == 0
    fp = read_fingerprint(out)
    assert fp.n_cases == 3 and "foreground" in fp.intensity
    assert "median spacing" in capsys.readouterr().out
    assert main(["fingerprint", str(tmp_path / "missing"), "--no-progress"]) == 2


def test_preprocess_command(dataset, tmp_path):
    cache = tmp_path / "c"
    assert main(["preprocess", str(dataset.root), "-o", str(cache), "--preset", "fcn_ppm", "--workers", "1",
                 "--no-progress"]) == 0
    assert len(list_entries(cache)) == 3 and (cache / "fingerprint.json").exists()
    assert main(["preprocess", str(dataset.root), "-o", str(cache), "--no-progress"]) == 2  # neither option
    assert main(["preprocess", str(dataset.root), "-o", str(cache), "--preset", "mlperf", "--recipe", "x"]) == 2
    assert main(["preprocess", str(dataset.root), "-o", str(cache), "--preset", "nope"]) == 2
    assert main(["preprocess", str(tmp_path / "missing"), "-o", str(cache), "--preset", "mlperf"]) == 2
    assert main(["preprocess", str(dataset.root), "-o", str(cache), "--preset", "mlperf", "--no-progress"]) == 2


def test_preprocess_command_with_a_recipe(dataset, tmp_path):
    pytest.importorskip("kitseg.recipes")
    from kitseg.recipes import load_recipe

    cache = tmp_path / "r"
    assert main(["preprocess", str(dataset.root), "-o", str(cache), "--recipe", "kitseg_cascade", "--workers", "1",
                 "--no-progress"]) == 0
    for stage in load_recipe("kitseg_cascade").stages:
        assert (cache / stage.name / "cache.json").exists() and list_entries(cache / stage.name)
    assert main(["preprocess", str(dataset.root), "-o", str(cache), "--recipe", "no_such_recipe"]) == 2


def test_spec_roundtrips_in_cache_json(dataset, fingerprint, tmp_path):
    spec = PreprocessSpec(slice_spacing=5.0, intensity={"scheme": "window", "window": (-100, 300)})
    preprocess_dataset(dataset, tmp_path, spec, None, workers=1, progress=False)
    from kitseg.preprocessing.cache import load_spec

    assert load_spec(tmp_path).spec == spec and load_spec(tmp_path).fingerprint is None


def test_roi_minimum_size_in_mm():
    image, label = make_case(0, shape=(24, 80, 80), spacing=(2.5, 0.8, 0.8))
    spec = PreprocessSpec(roi={"margin_mm": 0.0, "min_size_mm": (0.0, 40.0, 48.0)}, intensity={"scheme": "none"})
    (entry,) = preprocess_case(image, label, spec, case_id="c")
    z, y, x = entry.record.crop.shape
    fg = np.argwhere(label.array > 0)
    assert z == fg[:, 0].max() - fg[:, 0].min() + 1  # no margin along z
    assert (y, x) == (50, 60)  # 40 mm / 0.8 mm, 48 mm / 0.8 mm
