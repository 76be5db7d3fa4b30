"""The labels a trained demo run predicts, as SHA-256 hashes (the bit-identity check of a refactor).

``python tests/demo_labels.py RUN_DIR TEST_DIR [CT ...]`` prints the JSON that
``tests/fixtures/demo_labels.json`` holds: for each case, the sha256 of the uint8 label array (canonical
(z, y, x) order), its shape and the recipe. Predictions use ``precision="fp32"`` so that the CPU's bf16
support does not matter. ``tests/test_demo_labels.py`` compares a fresh prediction against the fixture.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np


def label_hashes(run_dir: str | Path, test_dir: str | Path, extra: list[str | Path] = ()) -> dict[str, dict]:
    from kitseg.datasets import open_dataset
    from kitseg.inference import load_run, predict_case

    run = load_run(run_dir, "cpu")
    images = [(c.case_id, c.image) for c in open_dataset(test_dir).cases if c.image is not None]
    images += [(Path(p).name, Path(p)) for p in extra]
    out = {}
    for name, path in images:
        labels = predict_case(path, run, "cpu", precision="fp32")
        arr = labels.array
        out[name] = {"sha256": hashlib.sha256(arr.astype("uint8").tobytes()).hexdigest(),
                     "shape": list(arr.shape), "labels": [int(v) for v in np.unique(arr)]}
    return out


if __name__ == "__main__":
    print(json.dumps(label_hashes(sys.argv[1], sys.argv[2], sys.argv[3:]), indent=1, sort_keys=True))
