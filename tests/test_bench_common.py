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
