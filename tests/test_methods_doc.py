"""docs/METHODS.md is generated (kitseg.recipes.methods): it must match the recipes and networks."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kitseg.recipes import load_recipe
from kitseg.recipes.methods import cpu_rows, render

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_methods_md_is_the_generated_file():
    template, committed = DOCS / "METHODS.template.md", DOCS / "METHODS.md"
    if not template.is_file():
        pytest.skip("docs/ is not part of this installation")
    generated = render(template.read_text(encoding="utf-8"))
    assert generated == committed.read_text(encoding="utf-8"), (
        "docs/METHODS.md differs from what the recipes and networks give: run `python -m kitseg.recipes.methods` "
        "from the repository root")


def test_generated_tables_follow_the_recipe_and_the_network(tmp_path):
    """A changed recipe value, a changed network and a cpu section all show up in the generated text."""
    from kitseg.recipes import recipe_path

    data = yaml.safe_load(recipe_path("fcn_ppm").read_text(encoding="utf-8"))
    data["stages"][1]["batch_size"] = 7
    data["stages"][1]["network"]["params"]["base_features"] = 8
    data["cpu"] = {"stages.fcn.batch_size": 2}
    (tmp_path / "fcn_ppm.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    text = render("{{recipe_table fcn_ppm}}\n{{params fcn_ppm base_features=8}}", tmp_path)
    assert "| `stages.fcn.batch_size` | `7` |" in text
    assert "| `stages.fcn.batch_size` | `2` | `7` |" in text  # cpu value beside the recipe's
    import torch

    from kitseg.nets import build_network

    with torch.device("meta"):
        n = sum(p.numel() for p in build_network("fcn_ppm", 1, 3, base_features=8).parameters())
    assert text.rstrip().endswith(f"{n:,}")
    assert cpu_rows(load_recipe("fcn_ppm"), {}) == []
