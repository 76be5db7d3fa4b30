"""Fault injection: one bad file or one killed job costs nothing but that file or that minute.

The issue's four items, each fault with the test that shows it, are listed in docs/RELIABILITY.md.

- Interruptions: `kitseg train|preprocess|predict` runs in its own process (forked from a warm
  interpreter that has imported the CLI, tests/faults.py::Launcher) and is SIGKILLed at seeded
  random moments; after every kill each file under a final name is complete, and the rerun ends
  bit-identical to an uninterrupted run, without redoing what was finished.
- Resource faults: file-size limit, read-only folder (a plain `python -m kitseg.cli.main` subprocess),
  memory limit: exit code 2, one line naming the file, earlier outputs byte-identical.
- Hostile input (fuzzed headers and streams, pickled checkpoints, escaping paths, bad cases among
  good ones): tests/test_faults_input.py.
- Determinism: the same seed gives the same weights and predictions on the CPU.

Counts of injected faults and fuzzed cases are printed as ``[faults] ...`` lines:
``pytest -q -p no:cacheprovider -s tests/test_faults.py tests/test_faults_input.py | grep '^\\[faults\\]'``.
"""

from __future__ import annotations

import resource
import shutil
import signal
import subprocess
import sys
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch

from faults import (
    TALLY,
    Launcher,
    check_tree,
    kill_moments,
    print_totals,
    read_only_setup,
    report,
    run_cli,
    temporaries,
    tree_bytes,
)
from kitseg.cli.main import main
from kitseg.inference import load_run, predict_case, predict_folder
from kitseg.io import read_volume, write_volume
from kitseg.preprocessing.cache import list_entries, load_case
from kitseg.stages.checkpoint import load_checkpoint
from kitseg.volume import Volume
from preprocessing_data import write_dataset
from synthetic_kits import make_case, make_kits_dataset, write_tiny_recipe

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the faults are injected with Linux means "
                                "(fork, RLIMIT_FSIZE/RLIMIT_AS, /proc, capabilities)")
KILLS_PER_TEST = 3


@pytest.fixture(autouse=True, scope="module")
def launcher(request, tmp_path_factory):
    """The warm `kitseg` launcher (tests/faults.py), started first so that it imports while the first tests run.
    One torch thread here, as in its processes (OMP_NUM_THREADS=1): the same arithmetic, bit for bit. At the
    end, the module's totals of injected faults and fuzzed cases."""
    TALLY.clear()
    warm = Launcher(tmp_path_factory.mktemp("launcher"))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield warm
    torch.set_num_threads(before)
    warm.close()
    print_totals(request.session.testsfailed)


# ---------------------------------------------------------------------------------------------
# Shared: a reference training run, a run folder of untrained tiny networks
# ---------------------------------------------------------------------------------------------
def _train_args(data, recipe, run, seed: int = 5) -> list[str]:
    return ["train", "--recipe", str(recipe), "--tiny", "--data", str(data), "-o", str(run), "--n-splits", "2",
            "--seed", str(seed), "--no-progress", "--set", "stages.localize.epochs=3", "--set",
            "stages.segment.epochs=3"]


def _training_started(run):
    """The first stage's epoch loop has begun (its TensorBoard folder is made just before the first epoch):
    what comes before, the fingerprint and the cache, is killed in the preprocessing test."""
    return lambda: (run / "localize" / "fold_0" / "tensorboard").exists()


@pytest.fixture(scope="module")
def trained(launcher, tmp_path_factory):
    """An uninterrupted tiny two-stage training run (the reference) and its seconds from the start of the
    first epoch to its end (the window the kills are drawn from)."""
    root = tmp_path_factory.mktemp("train")
    data = make_kits_dataset(root / "data", n=4)
    recipe = write_tiny_recipe(root / "tiny.yaml")
    ref = root / "ref"
    seconds = launcher.time_after(_train_args(data, recipe, ref), _training_started(ref))
    return SimpleNamespace(data=data, recipe=recipe, ref=ref, seconds=seconds)


def _same(a, b, where: str = "") -> None:
    """Nested checkpoint contents are equal: tensors bit for bit, everything else by ==."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


def _untimed(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.endswith("_s")} for r in rows]


def _assert_same_training(ref, run) -> None:
    """Same checkpoints (weights, optimizer, schedule, RNG, history), logs and caches as the reference."""
    for stage in ("localize", "segment"):
        fold = f"{stage}/fold_0"
        for name in ("checkpoint_last.pt", "checkpoint_best.pt"):
            a, b = load_checkpoint(ref / fold / name), load_checkpoint(run / fold / name)
            assert a["finished"] and b["finished"]
            _same(a["model"], b["model"], f"{fold}/{name}:model")
            _same({k: v for k, v in a.items() if k != "history"}, {k: v for k, v in b.items() if k != "history"},
                  f"{fold}/{name}")
            assert _untimed(a.get("history", [])) == _untimed(b.get("history", []))
        ref_log = (ref / fold / "log.csv").read_text(encoding="utf-8").splitlines()
        log = (run / fold / "log.csv").read_text(encoding="utf-8").splitlines()
        assert len(log) == len(ref_log) == 4, f"{fold}/log.csv"  # header + 3 epochs
        cache = run / "cache" / stage
        assert list_entries(cache) == list_entries(ref / "cache" / stage)
        for e in list_entries(cache):
            x, y = load_case(ref / "cache" / stage, e), load_case(cache, e)
            assert np.array_equal(x.image, y.image) and np.array_equal(x.label, y.label) and x.record == y.record
    for name in ("recipe.json", "dataset.json", "fingerprint.json", "splits.json"):
        assert (ref / name).read_bytes() == (run / name).read_bytes(), name


# ---------------------------------------------------------------------------------------------
# Determinism (issue item 4)
# ---------------------------------------------------------------------------------------------
def test_same_seed_gives_identical_weights_and_predictions(trained, tmp_path):
    again = tmp_path / "again"
    assert main(_train_args(trained.data, trained.recipe, again)) == 0
    _assert_same_training(trained.ref, again)
    other = tmp_path / "other"
    assert main([*_train_args(trained.data, trained.recipe, other, seed=6), "--stage", "localize"]) == 0
    a = load_checkpoint(trained.ref / "localize" / "fold_0" / "checkpoint_last.pt")["model"]
    b = load_checkpoint(other / "localize" / "fold_0" / "checkpoint_last.pt")["model"]
    assert any(not torch.equal(a[k], b[k]) for k in a), "another seed gave the same weights: the seed is not used"
    ct = read_volume(trained.data / "case_00001" / "imaging.nii.gz")
    labels, probs = predict_case(ct, load_run(trained.ref), return_probabilities=True)
    for run in (again, trained.ref):  # the other run, and the same run again
        other_labels, other_probs = predict_case(ct, load_run(run), return_probabilities=True)
        assert np.array_equal(labels.array, other_labels.array) and np.array_equal(probs.array, other_probs.array)
    report("determinism", "same seed: identical checkpoints, logs, caches, labels and probabilities; seed 6 "
            "gives other weights")


def test_sigxfsz_is_what_turns_a_size_limit_into_an_error(tmp_path):
    """A write past RLIMIT_FSIZE raises SIGXFSZ, whose default action kills the process. CPython ignores
    SIGXFSZ at start-up (so do kitseg's worker processes, Python too); the write then fails with EFBIG,
    which kitseg._atomic turns into a KitsegError. Shown both ways under a 1 MiB limit."""
    code = ("import signal, sys\n"
            "if sys.argv[1] == 'default':\n    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)\n"
            "try:\n    open(sys.argv[2], 'wb').write(bytes(2 << 20))\n"
            "except OSError as exc:\n    print(exc.strerror)\n")

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    python, default = (subprocess.run([sys.executable, "-c", code, how, str(tmp_path / how)], capture_output=True,
                                      text=True, preexec_fn=limit) for how in ("python", "default"))
    assert python.returncode == 0 and python.stdout.strip() == "File too large"
    assert default.returncode == -signal.SIGXFSZ
    TALLY["resource"] += 2


# ---------------------------------------------------------------------------------------------
# Interruptions (issue item 1): SIGKILL at seeded random moments, then the rerun
# ---------------------------------------------------------------------------------------------
def _done_epochs(run) -> dict[str, list[dict]]:
    """Each stage's finished epochs (history rows, with their timings) in its checkpoint_last.pt."""
    out = {}
    for stage in ("localize", "segment"):
        p = run / stage / "fold_0" / "checkpoint_last.pt"
        out[stage] = load_checkpoint(p)["history"] if p.exists() else []
    return out


def test_training_killed_at_random_moments_resumes_bit_identical(launcher, trained, tmp_path):
    span = trained.seconds
    moments = kill_moments(seed=101, n=KILLS_PER_TEST, span=span)
    report("training", f"reference run {span:.1f} s from its first epoch on; kills at {moments} s")
    hits = 0
    for i, delay in enumerate(moments):
        run = tmp_path / f"kill{i}"
        args = _train_args(trained.data, trained.recipe, run)
        hit, delay = launcher.kill_sooner_if_missed(args, _training_started(run), delay, run)
        hits += hit
        seen = check_tree(run)
        done = _done_epochs(run)
        state = (", ".join(f"{k} {len(v)}/3 epochs" for k, v in done.items())
                 + f", {dict(seen)} complete files, {len(temporaries(run))} temporaries")
        assert main([*args, "--resume"]) == 0
        _assert_same_training(trained.ref, run)
        assert not temporaries(run), temporaries(run)
        for stage, rows in _done_epochs(run).items():  # finished epochs were kept, not redone: same timings
            assert rows[: len(done[stage])] == done[stage]
            TALLY["kept"] += len(done[stage])
        report("training", f"kill {i} at {delay} s: {state}; resumed: identical")
    assert hits >= 2, "most kills came after the run had finished, even sooner: nothing was tested"


def test_kill_between_the_last_checkpoint_and_its_logs(trained, tmp_path):
    """The narrowest window of the training kills, made on purpose: the final checkpoint is written, the
    logs are not. The resume (which has no epoch left to run) brings log.csv and curves.png up to date."""
    run = tmp_path / "run"
    shutil.copytree(trained.ref, run)
    for stage in ("localize", "segment"):
        log = run / stage / "fold_0" / "log.csv"
        log.write_text("".join(log.read_text(encoding="utf-8").splitlines(keepends=True)[:3]), encoding="utf-8")
        (run / stage / "fold_0" / "curves.png").unlink()
    assert main([*_train_args(trained.data, trained.recipe, run), "--resume"]) == 0
    _assert_same_training(trained.ref, run)
    assert all((run / s / "fold_0" / "curves.png").is_file() for s in ("localize", "segment"))


def test_preprocessing_killed_at_random_moments_resumes_identically(launcher, tmp_path):
    data = write_dataset(tmp_path / "data", 4, shape=(32, 80, 80))

    def args(out):
        return ["preprocess", str(data), "-o", str(out), "--preset", "mlperf", "--workers", "1", "--no-progress"]

    span = launcher.time_after(args(tmp_path / "ref"), lambda: (tmp_path / "ref").exists())
    ref = {e: load_case(tmp_path / "ref", e) for e in list_entries(tmp_path / "ref")}
    assert len(ref) == 4
    moments = kill_moments(seed=202, n=KILLS_PER_TEST, span=span)
    report("preprocessing", f"reference run {span:.1f} s after its cache folder appeared; kills at {moments} s")
    hits = 0
    for i, delay in enumerate(moments):
        out = tmp_path / f"kill{i}"
        hit, delay = launcher.kill_sooner_if_missed(args(out), lambda out=out: out.exists(), delay, out)
        hits += hit
        seen = check_tree(out)
        done = list_entries(out) if out.exists() else []
        for record in out.glob("case_*.json"):  # an entry's .npz is renamed before its .json: both complete
            load_case(out, record.stem)
        kept = {e: (out / f"{e}.npz").stat().st_mtime_ns for e in done}
        state = f"{len(done)}/4 cases finished, {dict(seen)} complete files, {len(temporaries(out))} temporaries"
        assert main(args(out)) == 0
        assert {e: (out / f"{e}.npz").stat().st_mtime_ns for e in done} == kept  # finished cases are not redone
        TALLY["kept"] += len(kept)
        assert list_entries(out) == list(ref)
        for e, r in ref.items():
            c = load_case(out, e)
            assert np.array_equal(c.image, r.image) and np.array_equal(c.label, r.label) and c.record == r.record
        assert not temporaries(out), temporaries(out)
        report("preprocessing", f"kill {i} at {delay} s: {state}; rerun: identical")
    assert hits >= 2, "most kills came after the run had finished, even sooner: nothing was tested"


def test_folder_prediction_killed_at_random_moments_resumes_identically(launcher, tiny_run, tmp_path):
    inputs = make_kits_dataset(tmp_path / "in", n=5, shape=(32, 64, 64))
    names = [f"case_{i:05d}.nii.gz" for i in range(5)]
    span = launcher.time_after(["predict", "-i", inputs, "-o", tmp_path / "ref", "--model", tiny_run],
                               lambda: (tmp_path / "ref").exists())  # from the first output on
    ref = {n: read_volume(tmp_path / "ref" / n) for n in names}
    moments = kill_moments(seed=303, n=KILLS_PER_TEST, span=span)
    report("folder prediction", f"reference run {span:.1f} s after its first output; kills at {moments} s")
    hits = 0
    for i, delay in enumerate(moments):
        out = tmp_path / f"kill{i}"
        args = ["predict", "-i", str(inputs), "-o", str(out), "--model", str(tiny_run)]
        hit, delay = launcher.kill_sooner_if_missed(args, lambda out=out: out.exists(), delay, out)
        hits += hit
        seen = check_tree(out)
        kept = {p.name: p.stat().st_mtime_ns for p in out.glob("case_*.nii.gz")}
        state = f"{seen['nifti']}/5 outputs complete, {len(temporaries(out))} temporaries"
        assert main(args) == 0
        assert {n: (out / n).stat().st_mtime_ns for n in kept} == kept  # finished outputs are not redone
        TALLY["kept"] += len(kept)
        assert sorted(p.name for p in out.iterdir()) == names  # no temporary left
        for n in names:
            vol = read_volume(out / n)
            assert np.array_equal(vol.array, ref[n].array) and np.array_equal(vol.affine, ref[n].affine), n
        report("folder prediction", f"kill {i} at {delay} s: {state}; rerun: identical")
    assert hits >= 2, "most kills came after the run had finished, even sooner: nothing was tested"


# ---------------------------------------------------------------------------------------------
# Resource faults (issue item 2)
# ---------------------------------------------------------------------------------------------
def _one_error_line(proc: subprocess.CompletedProcess, *paths) -> str:
    """Exit code 2, no traceback, exactly one `kitseg: error:` line, naming one of ``paths``."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("kitseg: error:")]
    assert len(errors) == 1, proc.stderr
    assert any(str(p) in errors[0] for p in paths), errors[0]
    TALLY["resource"] += 1
    return errors[0]


def test_file_size_limit_in_training_keeps_the_last_checkpoint(launcher, trained, tmp_path):
    run = tmp_path / "run"
    assert main([*_train_args(trained.data, trained.recipe, run), "--until-epoch", "1"]) == 0
    before = tree_bytes(run)
    proc = launcher.run([*_train_args(trained.data, trained.recipe, run), "--resume"], fsize=20_000)
    line = _one_error_line(proc, run)
    assert "could not be written" in line
    after = tree_bytes(run)
    assert {k: after.get(k) for k in before} == before  # every earlier file byte-identical (new TensorBoard logs aside)
    assert not temporaries(run)
    assert main([*_train_args(trained.data, trained.recipe, run), "--resume"]) == 0  # and it resumes from there
    _assert_same_training(trained.ref, run)
    report("file-size limit, train", line)


def test_file_size_limit_in_preprocessing_keeps_finished_cases(launcher, tmp_path):
    data = write_dataset(tmp_path / "data", 2, shape=(24, 40, 40))
    cache = tmp_path / "cache"
    args = ["preprocess", str(data), "-o", str(cache), "--preset", "mlperf", "--workers", "1", "--no-progress"]
    assert main(args) == 0
    write_dataset(data, 4, shape=(24, 40, 40))  # two more cases arrive (the first two are rewritten unchanged)
    before = tree_bytes(cache)
    line = _one_error_line(launcher.run(args, fsize=4096), cache)
    assert "could not be written: File too large" in line
    assert tree_bytes(cache) == before and list_entries(cache) == ["case_00000", "case_00001"]
    report("file-size limit, preprocess", line)


def test_file_size_limit_in_folder_prediction_keeps_earlier_outputs(launcher, tiny_run, tmp_path):
    inputs = make_kits_dataset(tmp_path / "in", n=3)
    out = tmp_path / "out"
    shutil.move(inputs / "case_00002", tmp_path / "later")
    assert predict_folder(inputs, out, load_run(tiny_run), progress=False).count("done") == 2
    shutil.move(tmp_path / "later", inputs / "case_00002")
    before = tree_bytes(out)
    proc = launcher.run(["predict", "-i", inputs, "-o", out, "--model", tiny_run], fsize=64)  # < a NIfTI header
    line = _one_error_line(proc, out)
    assert "1 of 3 cases failed" in line
    assert f"failed case_00002: {out / 'case_00002.nii.gz'}: could not be written completely" in proc.stdout
    assert "2 already done" in proc.stdout
    assert tree_bytes(out) == before  # nothing new, nothing half-written, nothing changed
    report("file-size limit, predict", line)


def test_read_only_output_folder_keeps_earlier_outputs(tiny_run, tmp_path):
    inputs = make_kits_dataset(tmp_path / "in", n=2)
    out = tmp_path / "out"
    predict_folder(inputs / "case_00000" / "imaging.nii.gz", out, load_run(tiny_run), progress=False)
    before = tree_bytes(out)
    setup, how = read_only_setup(out)
    try:
        if setup is None:
            pytest.skip(how)
        proc = run_cli("predict", "-i", inputs, "-o", out, "--model", tiny_run, preexec_fn=setup)
        line = _one_error_line(proc, out)
        assert f"failed case_00001: {out}: cannot write here: Permission denied" in proc.stdout
        assert tree_bytes(out) == before
    finally:
        out.chmod(0o755)
    report("read-only folder", f"({how}) {line}")


def test_output_folder_that_cannot_exist_is_one_line(trained, tmp_path, capsys):
    """A file where a folder must go (or any refusal by the file system) is one line, not a traceback."""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    for argv in (_train_args(trained.data, trained.recipe, blocker / "run"),
                 ["preprocess", str(trained.data), "-o", str(blocker / "cache"), "--preset", "mlperf"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("kitseg: error:") and str(blocker) in err and "\n" not in err, err
        TALLY["resource"] += 1
    report("output under a file", err)


def _sparse_nifti(path, shape, dtype=np.int16, data_bytes: int | None = None):
    """A NIfTI of zeros without writing them: the header, then a hole up to the size it claims."""
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(dtype)
    hdr.set_data_shape(shape)
    hdr.set_zooms((0.8, 0.8, 1.0))
    with open(path, "wb") as fh:
        fh.write(hdr.binaryblock + b"\0" * 4)
        fh.truncate(352 + (int(np.prod(shape)) * np.dtype(dtype).itemsize if data_bytes is None else data_bytes))
    return path


def test_volumes_too_large_for_memory_are_refused_cleanly(launcher, tiny_run, tmp_path):
    """Under an address-space limit of 512 MiB above what the loaded CLI uses: a small CT is segmented; a
    CT that fits when read but not when segmented, one that does not even fit when read, and a header
    that claims 7 GB in a 1 KB file each end with a one-line KitsegError naming the file."""
    small = write_volume(Volume.from_geometry(make_case((24, 48, 48))[0]), tmp_path / "small.nii.gz")
    big = _sparse_nifti(tmp_path / "big.nii", (512, 512, 160))  # 80 MiB int16: read, then segmenting runs out
    bigger = _sparse_nifti(tmp_path / "bigger.nii", (512, 512, 600))  # reading alone needs 900 MiB
    claims = _sparse_nifti(tmp_path / "claims.nii", (1500, 1500, 800), np.float32, data_bytes=1024)
    out = tmp_path / "out"
    runs = [launcher.run(argv, memory=512 << 20) for argv in (
        ["predict", "-i", small, "-o", out / "small.nii.gz", "--model", tiny_run],
        ["predict", "-i", big, "-o", out / "big.nii.gz", "--model", tiny_run],
        ["predict", "-i", bigger, "-o", out / "bigger.nii.gz", "--model", tiny_run],
        ["info", claims])]
    assert runs[0].returncode == 0 and (out / "small.nii.gz").is_file(), runs[0].stderr
    lines = [_one_error_line(r, path) for r, path in zip(runs[1:], (big, bigger, claims))]
    assert lines[0].startswith(f"kitseg: error: {big}: not enough memory to segment the 512 x 512 x 160 image "
                               "(41.9 M voxels, 160 MiB per float32 copy")
    assert lines[1].startswith(f"kitseg: error: {bigger}: too large for the memory left: reading its "
                               "512 x 512 x 600 voxels needs about 900 MiB")
    assert lines[2].startswith(f"kitseg: error: {claims}: truncated: the header claims 1500 x 1500 x 800 voxels")
    assert sorted(p.name for p in out.iterdir()) == ["small.nii.gz"]  # nothing half-written
    for line in lines:
        report("memory", line)
