"""Bit-identity of predictions across refactors: the demo's trained model, fixed labels.

``tests/fixtures/demo_labels.json`` holds the sha256 of the labels that a trained demo run predicted
(``precision="fp32"``) before the stage contract moved to ``kitseg.stages`` (issue #17): on the demo's
held-out cases and on ``../shared/data/real_ct/example_ct.nii.gz``. Regenerated (``python tests/demo_labels.py
RUN TEST CT > tests/fixtures/demo_labels.json``) only where a change means to alter predictions: once since,
when inference began to pad a box smaller than the patch as training pads its patches. The run was made with
``kitseg demo -o DIR --size tiny --test-cases 3`` (seed 0, 16 training cases, cpu). Point
``KITSEG_DEMO_DIR`` at that folder (default ``/tmp/wt17_demo``); without it the test skips.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from demo_labels import label_hashes

FIXTURE = Path(__file__).parent / "fixtures" / "demo_labels.json"
DEMO = Path(os.environ.get("KITSEG_DEMO_DIR", "/tmp/wt17_demo"))
REAL_CT = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_ct" / "example_ct.nii.gz"
if not REAL_CT.exists():
    REAL_CT = Path("/work/shared/data/real_ct/example_ct.nii.gz")


@pytest.mark.skipif(not (DEMO / "run" / "recipe.json").is_file(),
                    reason=f"no trained demo run at {DEMO} (set KITSEG_DEMO_DIR; make one with kitseg demo "
                           "--size tiny --test-cases 3)")
def test_demo_model_predicts_the_recorded_labels_bit_for_bit():
    expected = json.loads(FIXTURE.read_text(encoding="utf-8"))
    extra = [REAL_CT] if REAL_CT.exists() else []
    got = label_hashes(DEMO / "run", DEMO / "test", extra)
    for name, want in expected.items():
        if name == REAL_CT.name and not extra:
            continue  # the shared data is absent here
        assert name in got, f"{name} was not predicted"
        assert got[name]["shape"] == want["shape"], name
        assert got[name]["sha256"] == want["sha256"], f"{name}: the labels changed"
