"""Fault injection, hostile and malformed input: every outcome is a result or a clean kitseg error.

Fuzzed NIfTI headers, gzip streams and dataset.json (hypothesis, derandomized), pickled checkpoint
payloads, dataset paths escaping the dataset folder, and bad cases among good ones in a dataset
(issue 11, item 3; docs/RELIABILITY.md lists each with its test). Kills, resource faults and
determinism are in tests/test_faults.py. Counts are printed as ``[faults] ...`` lines:
``pytest -q -p no:cacheprovider -s tests/test_faults_input.py | grep '^\\[faults\\]'``.
"""

from __future__ import annotations

import faulthandler
import gzip
import json
import pathlib
import pickle
import shutil
import struct
from collections import Counter

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from faults import TALLY, print_totals, report
from inference_runs import GEOMETRY_RECIPE, recipe_from_yaml, write_run
from kitseg.cli.main import main
from kitseg.datasets import open_dataset
from kitseg.errors import KitsegError
from kitseg.inference import load_run, predict_folder
from kitseg.io import read_volume, write_volume
from kitseg.preprocessing.cache import list_entries
from kitseg.stages.checkpoint import load_checkpoint
from kitseg.volume import Volume
from synthetic_kits import make_case, make_kits_dataset

FUZZ = settings(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(autouse=True, scope="module")
def totals(request):
    """At the end, the module's totals of hostile inputs and fuzzed cases."""
    TALLY.clear()
    yield
    print_totals(request.session.testsfailed)


def _valid_nifti(shape=(4, 5, 6)) -> bytes:
    """A small valid NIfTI-1 (float32, qform and sform set) as bytes."""
    arr = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    img = nib.Nifti1Image(arr, np.diag([2.0, 1.5, 1.0, 1.0]))
    img.set_qform(img.affine, 1)
    img.set_sform(img.affine, 1)
    return img.header.binaryblock + b"\0" * 4 + arr.tobytes(order="F")


# name -> (byte offset, struct format) of NIfTI-1 header fields
NIFTI_FIELDS = {"sizeof_hdr": (0, "i"), "dim0": (40, "h"), "dim1": (42, "h"), "dim2": (44, "h"), "dim3": (46, "h"),
                "dim4": (48, "h"), "dim5": (50, "h"), "datatype": (70, "h"), "bitpix": (72, "h"),
                "pixdim0": (76, "f"), "pixdim1": (80, "f"), "pixdim2": (84, "f"), "pixdim3": (88, "f"),
                "vox_offset": (108, "f"), "scl_slope": (112, "f"), "scl_inter": (116, "f"),
                "qform_code": (252, "h"), "sform_code": (254, "h"), "quatern_b": (256, "f"), "quatern_d": (264, "f"),
                "qoffset_x": (268, "f"), "srow_x0": (280, "f"), "srow_y1": (300, "f"), "srow_z3": (324, "f"),
                "magic": (344, "i")}
INTERESTING_INTS = [0, 1, 2, 3, 4, 5, 7, 8, 16, 32, 64, 128, 256, 348, 352, 512, 540, 768, 1024, 1280, 1536, 2304,
                    20000, 32767, -1, -32768, 2**31 - 1, -(2**31)]


def _field_value(fmt: str):
    if fmt == "f":
        return st.one_of(st.floats(width=32), st.sampled_from([0.0, -1.0, 1e-30, 1e30, 352.0, 2.0**40]))
    bound = 2**15 if fmt == "h" else 2**31
    return st.one_of(st.sampled_from([v for v in INTERESTING_INTS if -bound <= v < bound]),
                     st.integers(-bound, bound - 1))


field_edit = st.sampled_from(sorted(NIFTI_FIELDS)).flatmap(lambda n: st.tuples(st.just(n),
                                                                               _field_value(NIFTI_FIELDS[n][1])))
byte_edit = st.tuples(st.integers(0, 351), st.integers(0, 255))


def _expect_volume_or_kitseg_error(path: pathlib.Path, outcomes: Counter) -> None:
    try:
        vol = read_volume(path)
    except KitsegError as exc:
        assert str(path) in str(exc)
        outcomes["KitsegError"] += 1
        return
    assert vol.array.ndim == 3 and vol.array.size > 0
    assert np.isfinite(vol.affine).all() and min(vol.spacing) > 0
    if np.issubdtype(vol.array.dtype, np.floating):
        assert np.isfinite(vol.array).all()
    outcomes["Volume"] += 1


def _fuzz(test, check, examples: int, *strategies) -> Counter:
    """Run ``check(*drawn, outcomes)`` on ``examples`` hypothesis cases; a hang aborts the run after 120 s."""
    outcomes: Counter = Counter()

    @settings(FUZZ, max_examples=examples)
    @given(st.tuples(*strategies))
    def run(drawn):
        check(*drawn, outcomes)

    faulthandler.dump_traceback_later(120, exit=True)
    try:
        run()
    finally:
        faulthandler.cancel_dump_traceback_later()
    total = sum(outcomes.values())
    TALLY["fuzz"] += total
    report(test, f"{total} fuzzed cases: {dict(outcomes)}; nothing else raised")
    return outcomes


def test_fuzzed_nifti_headers_give_a_volume_or_a_kitseg_error(tmp_path):
    raw = _valid_nifti()

    def check(fields, raw_bytes, compressed, outcomes):
        data = bytearray(raw)
        for name, value in fields:
            offset, fmt = NIFTI_FIELDS[name]
            struct.pack_into("<" + fmt, data, offset, value)
        for offset, value in raw_bytes:
            data[offset] = value
        path = tmp_path / ("case.nii.gz" if compressed else "case.nii")
        path.write_bytes(gzip.compress(bytes(data), mtime=0) if compressed else bytes(data))
        _expect_volume_or_kitseg_error(path, outcomes)

    outcomes = _fuzz("fuzz NIfTI header", check, 500, st.lists(field_edit, min_size=0, max_size=4),
                     st.lists(byte_edit, max_size=3), st.booleans())
    assert outcomes["Volume"] > 50 and outcomes["KitsegError"] > 50  # the fuzzing reaches both outcomes


def test_fuzzed_gzip_streams_give_a_volume_or_a_kitseg_error(tmp_path):
    stream = gzip.compress(_valid_nifti((6, 7, 8)), mtime=0)
    edit = st.one_of(st.tuples(st.just("set"), st.integers(0, len(stream) - 1), st.integers(0, 255)),
                     st.tuples(st.just("cut"), st.integers(0, len(stream) - 1), st.just(0)),
                     st.tuples(st.just("insert"), st.integers(0, len(stream)), st.integers(0, 255)),
                     st.tuples(st.just("append"), st.just(0), st.integers(0, 255)))

    def check(edits, outcomes):
        data = bytearray(stream)
        for kind, pos, value in edits:
            pos = min(pos, len(data))
            if kind == "set" and pos < len(data):
                data[pos] = value
            elif kind == "cut":
                del data[pos:]
            elif kind == "insert":
                data[pos:pos] = bytes([value])
            else:
                data += gzip.compress(bytes([value]) * 100) if value % 2 else bytes([value]) * 7
        path = tmp_path / "case.nii.gz"
        path.write_bytes(bytes(data))
        _expect_volume_or_kitseg_error(path, outcomes)

    outcomes = _fuzz("fuzz gzip stream", check, 400, st.lists(edit, min_size=1, max_size=4))
    assert outcomes["Volume"] >= 10 and outcomes["KitsegError"] > 100  # both outcomes are exercised


_json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-3, 5), st.floats(allow_nan=False), st.text(max_size=8),
                       st.sampled_from(["imagesTr/a_0000.nii.gz", "labelsTr/a.nii.gz", "../outside/a.nii.gz",
                                        "/etc/passwd", "a\x00b", ".nii.gz", "nnunet", "kits", "kidney"]))
_json = st.recursive(_json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=3),
    st.dictionaries(st.one_of(st.text(max_size=6), st.sampled_from(["0", "1", "2", "image", "label", "kidney"])),
                    inner, max_size=3)), max_leaves=10)
_dataset_json = st.fixed_dictionaries({}, optional={k: _json for k in ("name", "labels", "regions", "layout",
                                                                       "file_ending", "training")})


def test_fuzzed_dataset_json_gives_a_dataset_or_a_kitseg_error(tmp_path):
    root = make_kits_dataset(tmp_path / "ds", n=1, shape=(4, 8, 8))
    (root / "imagesTr").mkdir()
    (root / "labelsTr").mkdir()
    shutil.copy(root / "case_00000" / "imaging.nii.gz", root / "imagesTr" / "a_0000.nii.gz")
    shutil.copy(root / "case_00000" / "segmentation.nii.gz", root / "labelsTr" / "a.nii.gz")

    def check(doc, outcomes):
        (root / "dataset.json").write_text(json.dumps(doc), encoding="utf-8")
        try:
            ds = open_dataset(root)
        except KitsegError:
            outcomes["KitsegError"] += 1
            return
        for case in ds.cases:  # nothing outside the dataset folder is ever named
            for p in (case.image, case.label):
                assert p is None or p.resolve().is_relative_to(root.resolve())
        outcomes["Dataset"] += 1

    outcomes = _fuzz("fuzz dataset.json", check, 250, st.one_of(_dataset_json, _json))
    assert outcomes["Dataset"] > 10 and outcomes["KitsegError"] > 100


class _Payload:
    """Unpickling this runs ``Path.write_text(marker, ...)``: what a hostile checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.write_text, (pathlib.Path(self.marker), "the payload ran")


def test_checkpoint_with_a_pickled_payload_is_refused(tmp_path):
    ckpt = {"format": "kitseg-checkpoint", "version": 1, "model": {"w": torch.zeros(2)}}
    live = tmp_path / "live.pt"
    torch.save({**ckpt, "extra": _Payload(tmp_path / "ran_live")}, live)
    torch.load(live, weights_only=False)  # the control: loaded the unsafe way, the payload does run
    assert (tmp_path / "ran_live").exists()
    # the same payload in a kitseg checkpoint, a plain pickle with a .pt name, and a run folder's checkpoint
    evil_zip = tmp_path / "checkpoint_last.pt"
    torch.save({**ckpt, "extra": _Payload(tmp_path / "ran")}, evil_zip)
    evil_pickle = tmp_path / "pickle.pt"
    evil_pickle.write_bytes(pickle.dumps(_Payload(tmp_path / "ran"), protocol=2))
    run = write_run(tmp_path / "run", recipe_from_yaml(GEOMETRY_RECIPE))
    shutil.copy(evil_zip, run / "segment" / "fold_0" / "checkpoint_best.pt")
    for path, load in ((evil_zip, load_checkpoint), (evil_pickle, load_checkpoint),
                       (run / "segment" / "fold_0" / "checkpoint_best.pt", lambda p: load_run(run))):
        with pytest.raises(KitsegError, match="not a readable checkpoint") as info:
            load(path)
        assert str(path) in str(info.value)
        assert not (tmp_path / "ran").exists(), "the payload ran"
        TALLY["hostile"] += 1
    report("pickled checkpoint payload", str(info.value)[:160])


@pytest.mark.parametrize("field,path", [("image", "../outside/img_0000.nii.gz"), ("label", "../outside/seg.nii.gz"),
                                        ("image", "imagesTr/../../outside/img_0000.nii.gz"),
                                        ("image", "ABSOLUTE")])
def test_dataset_json_paths_outside_the_dataset_are_refused(tmp_path, field, path):
    root, outside = tmp_path / "ds", tmp_path / "outside"
    make_kits_dataset(tmp_path / "k", n=1, shape=(4, 8, 8))
    outside.mkdir()
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for d, name in ((outside, "img_0000.nii.gz"), (root / "imagesTr", "a_0000.nii.gz")):
        shutil.copy(tmp_path / "k" / "case_00000" / "imaging.nii.gz", d / name)
    for d, name in ((outside, "seg.nii.gz"), (root / "labelsTr", "a.nii.gz")):
        shutil.copy(tmp_path / "k" / "case_00000" / "segmentation.nii.gz", d / name)
    path = str(outside / "img_0000.nii.gz") if path == "ABSOLUTE" else path
    entry = {"image": "imagesTr/a_0000.nii.gz", "label": "labelsTr/a.nii.gz", field: path}
    (root / "dataset.json").write_text(json.dumps({"name": "x", "labels": {"background": 0, "kidney": 1, "tumor": 2},
                                                   "training": [entry]}), encoding="utf-8")
    with pytest.raises(KitsegError, match="escapes the dataset folder") as info:
        open_dataset(root)
    assert "dataset.json" in str(info.value) and path in str(info.value)
    TALLY["hostile"] += 1


BAD_KINDS = ["label 7", "geometry", "NaN", "2D", "4D", "truncated"]


def _make_bad(kind: str, case: pathlib.Path) -> pathlib.Path:
    """Replace one file of the KiTS case folder ``case`` by a bad one of ``kind``; return it."""
    img, lab = make_case((16, 32, 32), seed=9)
    if kind == "label 7":
        lab[2, 3, 4] = 7
        return write_volume(Volume.from_geometry(lab, spacing=(3.0, 1.5, 1.5)), case / "segmentation.nii.gz")
    if kind == "geometry":
        return write_volume(Volume.from_geometry(lab, spacing=(3.0, 1.5, 2.0)), case / "segmentation.nii.gz")
    path = case / "imaging.nii.gz"
    if kind == "NaN":
        img[1, 2, 3] = np.nan
        sitk.WriteImage(sitk.GetImageFromArray(img), str(path))  # nibabel would write NaN as 0
    elif kind == "2D":
        nib.save(nib.Nifti1Image(img[0], np.eye(4)), str(path))
    elif kind == "4D":
        nib.save(nib.Nifti1Image(np.stack([img, img], -1), np.eye(4)), str(path))
    else:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    return path


def test_bad_cases_cost_only_themselves(tiny_run, tmp_path, capsys):
    """One case of each bad kind among good ones (each kind is refused by the readers in
    tests/test_bad_input.py). A folder prediction skips the bad CTs and does the rest. Preprocessing
    stops at a bad case naming its file, keeps the finished cases, and once the file is fixed goes on
    from there."""
    data = make_kits_dataset(tmp_path / "data", n=len(BAD_KINDS) + 2)
    cases = [data / f"case_{i:05d}" for i in range(len(BAD_KINDS) + 2)]
    good = {p: p.read_bytes() for c in cases for p in c.iterdir()}
    bad = {kind: _make_bad(kind, cases[i]) for i, kind in enumerate(BAD_KINDS, start=1)}
    summary = predict_folder(data, tmp_path / "pred", load_run(tiny_run), progress=False)
    for i, row in enumerate(summary.cases):
        kind = BAD_KINDS[i - 1] if 1 <= i <= len(BAD_KINDS) else None
        if kind is None or bad[kind].name == "segmentation.nii.gz":  # prediction reads no label
            assert row.status == "done", row
        else:
            assert row.status == "failed" and str(bad[kind]) in row.message, row
    cache = tmp_path / "cache"
    args = ["preprocess", str(data), "-o", str(cache), "--preset", "mlperf", "--workers", "1", "--no-progress"]
    kept: dict = {}
    reports = []
    for i, kind in enumerate(BAD_KINDS, start=1):
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("kitseg: error:") and str(bad[kind]) in err and "\n" not in err, err
        assert list_entries(cache) == [c.name for c in cases[:i]]
        assert {p: p.stat().st_mtime_ns for p in kept} == kept  # finished cases are not redone
        kept = {p: p.stat().st_mtime_ns for p in cache.glob("case_*.npz")}
        bad[kind].write_bytes(good[bad[kind]])  # fixed: the next run goes on
        TALLY["hostile"] += 1
        reports.append((f"bad case ({kind})", err))
    assert main(args) == 0 and list_entries(cache) == [c.name for c in cases]
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    capsys.readouterr()
    for line in reports:
        report(*line)
