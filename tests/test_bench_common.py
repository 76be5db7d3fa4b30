"""bench/_common.py's load guard: BENCHMARKS.md is not rewritten from figures measured on a busy machine
unless forced, and a forced section says so."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import _common  # noqa: E402

BODY = "## Preprocessing: resampling\n\nmachine line\n\n| a | b |\n|---|---|\n| 1 | 2 |\n"


@pytest.fixture
def md(tmp_path, monkeypatch):
    monkeypatch.setattr(_common, "MD", tmp_path / "BENCHMARKS.md")
    monkeypatch.setattr(_common, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(_common, "cores", lambda: 2)
    monkeypatch.delenv(_common.FORCE_ENV, raising=False)
    return tmp_path / "BENCHMARKS.md"


def test_quiet_machine_updates(md):
    assert _common.update_markdown("preprocessing", BODY, [("resample", "1 s")], load_start=0.5)
    text = md.read_text()
    assert "| 1 | 2 |" in text and "Forced" not in text and "| resample | 1 s |" in text


def test_busy_machine_is_refused(md, capsys):
    md.write_text("# Benchmarks\n\nold\n")
    assert not _common.update_markdown("preprocessing", BODY, [("resample", "1 s")], load_start=2.5)
    assert md.read_text() == "# Benchmarks\n\nold\n"
    assert "load average was 2.5 at the start, above this machine's 2 cores" in capsys.readouterr().err
    assert (md.parent / "results" / "preprocessing-refused.md").read_text().startswith("## Preprocessing")


@pytest.mark.parametrize("how", ["flag", "env"])
def test_forced_section_says_so(md, monkeypatch, how):
    if how == "env":
        monkeypatch.setenv(_common.FORCE_ENV, "1")
    assert _common.update_markdown("preprocessing", BODY, [("resample", "1 s")], load_start=3.0,
                                   force=how == "flag")
    lines = md.read_text().splitlines()
    title = lines.index("## Preprocessing: resampling")
    assert lines[title + 2].startswith("**Forced under load:** the 1-minute load average was 3.0 at the start")
    assert any(line.startswith("| resample | 1 s (under load) |") for line in lines)


def test_a_split_of_rendered_phantoms_is_recorded_as_synthetic_training_data(tmp_path):
    """The accuracy bench trains on split folders of links to its rendered cases; a run trained there must
    say it saw synthetic CT (kitseg predict warns), with the renderer version of the phantoms."""
    from _accuracy_data import split_folder
    from kitseg.synth import RENDERER_VERSION, make_dataset
    from kitseg.training_data import describe_folder

    src = tmp_path / "rendered"
    make_dataset(src, cases=3, seed=0, size="tiny", progress=False)
    dst = split_folder(src, tmp_path / "train", ["case_00000", "case_00001"])
    assert sorted(p.name for p in dst.iterdir() if p.is_dir()) == ["case_00000", "case_00001"]
    data = describe_folder(dst)
    assert data.synthetic is True and data.renderer_version == RENDERER_VERSION


def _result(entry: str, version: int | None, downsample: int, kidney: float) -> dict:
    rows = [{"case_id": f"case_{i:05d}", "kits19_kidney_dice": kidney, "kits19_tumor_dice": 0.5,
             "kits19_composite": (kidney + 0.5) / 2, "tumor_detection_false_positive_tumors": 0} for i in range(6)]
    render = {"renderer_version": version} if version else {}
    return {"entry": entry, "downsample": downsample, "render": render, "date": "2026-12-07 10:00",
            "test": {"rows": rows, "mean": {k: rows[0][k] for k in rows[0] if k != "case_id"}}}


def test_the_leaderboard_ranks_only_the_entries_run_at_its_setting(tmp_path):
    """Entries run on another renderer's phantoms or at another resolution are not ranked nor paired with
    the leaderboard's; they are listed apart, with the setting they were run at."""
    import json

    import _accuracy_report as report

    runs = {"kitseg_cascade": _result("kitseg_cascade", 3, 2, 0.99), "unet2d": _result("unet2d", 3, 2, 0.95),
            "unet3d": _result("unet3d", None, 4, 0.91), "tunet": _result("tunet", 3, 4, 0.80)}
    for name, r in runs.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(r), encoding="utf-8")
    (tmp_path / "unet3d@trial.json").write_text(json.dumps(_result("unet3d", 3, 2, 0.5)), encoding="utf-8")
    now = report.load(tmp_path, (3, 2))
    assert list(now) == ["kitseg_cascade", "unet2d"]
    earlier = {e: r for e, r in report.load(tmp_path).items() if e not in now}
    assert set(earlier) == {"unet3d", "tunet"}
    table = report.table_earlier(earlier)
    assert "| unet3d | 1, 1/4 |" in table and "| tunet | 3, 1/4 |" in table and "0.910" in table


def test_stalled_epochs_are_counted_as_lost_training_time():
    """Every epoch of a stage does the same work: epochs far slower than the stage's median mean shared CPUs, and
    the report marks an entry that lost more than 5 % of its budget to them."""
    import _accuracy_report as report
    from _accuracy_data import stalled_seconds

    assert stalled_seconds([24.0, 25.0, 24.5, 23.9, 24.2]) == 0.0
    assert stalled_seconds([24.0] * 10 + [53.0, 326.0, 333.0]) == (53 - 24) + (326 - 24) + (333 - 24)
    assert stalled_seconds([5.0, 300.0]) == 0.0  # too few epochs to tell
    r = _result("unet2d", 3, 2, 0.95)
    r.update(budget_min=30.0, stages=[{"stage": "segment", "stalled_s": 60.0}])
    assert not report.disturbed(r)  # 60 s of 1800: under 5 %
    r["stages"][0]["stalled_s"] = 800.0
    assert report.disturbed(r) and "training disturbed" in "\n".join(report.rescored_notes({"unet2d": r}))
    assert not report.disturbed(_result("tunet", 3, 2, 0.9))  # written before stalls were recorded


def test_cpu_kind_names_the_board_by_cpu_model_and_amx():
    from _accuracy_data import cpu_kind

    assert cpu_kind({"cpu": "Intel(R) Xeon(R) Processor", "cpu_flags": ["amx_bf16", "avx512f"]}) == "intel-xeon-amx"
    assert cpu_kind({"cpu": "AMD EPYC", "cpu_flags": ["avx512_bf16"]}) == "amd-epyc"
    assert cpu_kind({"cpu": "Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz", "cpu_flags": []}) == "intel-core-i7-8700"


XEON = {"cpu": "Intel(R) Xeon(R) Processor", "cpu_flags": ["amx_bf16"]}
EPYC = {"cpu": "AMD EPYC", "cpu_flags": ["avx512_bf16"]}


def _full_result(entry: str, machine: dict, kidneys: list[float]) -> dict:
    rows = [{"case_id": f"case_{120 + i:05d}", "kits19_kidney_dice": k, "kits19_tumor_dice": k / 2,
             "kits19_composite": 0.75 * k, "tumor_detection_false_positive_tumors": 0} for i, k in enumerate(kidneys)]
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0] if k != "case_id"}
    mean.update(kidney_surface_dice=0.9, tumor_surface_dice=0.5, kidney_hd95_mm=3.0, tumor_hd95_mm=9.0)
    part = {"rows": rows, "mean": mean, "median": mean, "predict_case_s": [1.0] * len(rows)}
    stage = {"stage": "segment", "epochs_done": 5, "epochs_planned": 1000, "finished": False, "time_limited": True,
             "seconds": 1800.0, "best_epoch": 5, "best_ema_dice": 0.9, "patches": 50, "model_s": 1700.0,
             "data_s": 50.0, "val_s": 50.0, "stalled_s": 0.0}
    return {"entry": entry, "downsample": 2, "render": {"renderer_version": 3}, "date": "2026-12-07 20:00",
            "machine": {**machine, "cores": 2}, "threads": 2, "budget_min": 30.0, "n_splits": 10,
            "train_ids": ["case_00000", "case_00119"], "val_ids": ["case_00001"], "precision": "bf16",
            "spacing": {"segment": None}, "stages": [stage], "preprocess_s": 10.0, "train_s": 1800.0,
            "train_cpu_s": 3600.0, "test": part, "val": part, "peak_rss_mb": 900, "start_load": 0.1,
            "test_ids": [r["case_id"] for r in rows]}


def test_entries_are_ranked_and_paired_only_on_their_own_cpu_kinds_board(tmp_path):
    """Wall-clock minutes buy different training on different CPUs: each CPU kind's folder is its own board, with
    the default trained on that CPU as the reference of its paired comparisons."""
    import json

    import _accuracy_report as report

    good, poor = [0.95, 0.9, 0.97, 0.92, 0.96, 0.94, 0.93], [0.5, 0.4, 0.6, 0.45, 0.55, 0.52, 0.48]
    files = {"intel-xeon-amx/kitseg_cascade": _full_result("kitseg_cascade", XEON, good),
             "intel-xeon-amx/unet2d": _full_result("unet2d", XEON, poor),
             "amd-epyc/kitseg_cascade": _full_result("kitseg_cascade", EPYC, poor),
             "amd-epyc/unet2d": _full_result("unet2d", EPYC, good),
             "amd-epyc/zhang2019_cascade": _full_result("zhang2019_cascade", EPYC, good)}
    for name, r in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / f"{name}.json").write_text(json.dumps(r), encoding="utf-8")
    by_kind = report.boards(tmp_path, (3, 2))
    assert list(by_kind) == ["amd-epyc", "intel-xeon-amx"]  # the fuller board first
    assert set(by_kind["intel-xeon-amx"][0]) == {"kitseg_cascade", "unet2d"}
    md = report.markdown(by_kind, {})
    xeon, epyc = md.index("### Trained on Intel(R) Xeon(R) Processor"), md.index("### Trained on AMD EPYC")
    epyc_block, xeon_block = md[epyc:xeon], md[xeon:]
    # on the Xeon the default beats unet2d in every case, on the EPYC it loses to it in every case
    assert "| unet2d | " in xeon_block and "(7/0, p = " in xeon_block.split("| unet2d | ")[1].splitlines()[0]
    assert "(0/7, p = " in epyc_block.split("| unet2d | ")[1].splitlines()[0]
    rows = report.headlines(by_kind)
    assert len(rows) == 2 and "AMD EPYC (no AMX, 2 threads)" in rows[0][0]
    assert "Intel(R) Xeon(R) Processor (AMX-BF16, 2 threads)" in rows[1][0]


def test_an_entry_trained_in_another_precision_than_its_boards_default_is_marked():
    import _accuracy_report as report

    d, u = _full_result("kitseg_cascade", EPYC, [0.9] * 7), _full_result("unet2d", EPYC, [0.8] * 7)
    u["precision"] = "fp32"
    table = report.table_scores({"kitseg_cascade": d, "unet2d": u})
    assert "unet2d (trained in fp32, kitseg_cascade in bf16: not equal conditions)" in table
    u["precision"] = "bf16"
    assert "not equal conditions" not in report.table_scores({"kitseg_cascade": d, "unet2d": u})


def test_a_note_shared_by_several_entries_is_written_once():
    import _accuracy_report as report

    runs = {e: _full_result(e, EPYC, [0.9] * 7) for e in ("kitseg_cascade", "unet2d", "unet3d")}
    runs["kitseg_cascade"]["note"] = runs["unet2d"]["note"] = "Trained with a tag, moved."
    runs["unet3d"]["note"] = "Another note."
    lines = report.rescored_notes(runs)
    assert "- `kitseg_cascade`, `unet2d`: Trained with a tag, moved." in lines
    assert "- `unet3d`: Another note." in lines and sum("Trained with a tag" in line for line in lines) == 1


def test_the_time_table_tells_the_training_peak_of_memory_from_the_whole_runs():
    """The worker's peak RSS covers preprocessing, training and prediction: the training peak is given apart (results
    written before it was recorded show "?")."""
    import _accuracy_report as report

    old, new = _full_result("kitseg_cascade", EPYC, [0.9] * 7), _full_result("unet2d", EPYC, [0.8] * 7)
    new["train_peak_rss_mb"] = 850
    table = report.table_time({"kitseg_cascade": old, "unet2d": new})
    assert "peak RSS MB: training / whole run" in table
    assert table.split("| kitseg_cascade | ")[-1].splitlines()[0].endswith("| ? / 900 |")
    assert table.split("| unet2d | ")[-1].splitlines()[0].endswith("| 850 / 900 |")


def test_entries_are_predicted_in_the_precision_their_networks_trained_in(tmp_path, monkeypatch):
    """``--precision auto`` means bf16 on one CPU and fp32 on another: a leaderboard entry is scored in the precision
    its run's log.csv says it trained in, and the result records it."""
    import _accuracy_data
    import kitseg.inference.folder as folder
    import kitseg.metrics as metrics

    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit, match="no epoch logged"):
        _accuracy_data.trained_precision(run_dir)
    log = run_dir / "localize" / "fold_0" / "log.csv"
    log.parent.mkdir(parents=True)
    log.write_text("epoch,val_dice,precision\n1,0.5,bf16\n2,0.6,bf16\n", encoding="utf-8")
    assert _accuracy_data.trained_precision(run_dir) == "bf16"
    log.write_text("epoch,val_dice,precision\n1,0.5,fp32\n", encoding="utf-8")
    precision = _accuracy_data.trained_precision(run_dir)
    assert precision == "fp32"

    seen = {}

    class Summary:
        cases, mean, median = [], {}, {}

    def fake_predict(inputs, out, run, **kw):
        seen.update(kw)
        return Summary()

    monkeypatch.setattr(folder, "predict_folder", fake_predict)
    monkeypatch.setattr(metrics, "evaluate_folder", lambda *a, **k: Summary())
    part = _accuracy_data.predict_and_score(object(), tmp_path / "cases", tmp_path / "out", precision)
    assert seen["precision"] == "fp32" and part["precision"] == "fp32"
