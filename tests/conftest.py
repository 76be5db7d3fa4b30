"""Shared test fixtures. Tests that read ../shared skip with a reason when it is absent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
KITS19 = SHARED / "data" / "kits19"
REAL_CT = SHARED / "data" / "real_ct"


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test when it is not there (a user's fresh clone)."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} is absent: ../shared data is only beside the project checkout")
    return p


def kits19_label(case: int) -> Path:
    return shared_path("data", "kits19", f"case_{case:05d}", "segmentation.nii.gz")


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """The tests run tiny networks: one torch thread is faster than two, and on a busy 2-core machine
    OpenMP threads contend badly (10x slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A run folder with untrained tiny networks (tests/inference_runs.py): fast, and deterministic."""
    from inference_runs import GEOMETRY_RECIPE, recipe_from_yaml, write_run

    return write_run(tmp_path_factory.mktemp("run"), recipe_from_yaml(GEOMETRY_RECIPE))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
