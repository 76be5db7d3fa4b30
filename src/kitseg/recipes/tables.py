"""docs/METHODS.md tables generated from the recipes: every value, its paper source or deviation."""

from __future__ import annotations

from typing import Any

from kitseg.recipes.schema import Recipe


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}, "c": [2]} -> {"a.b": 1, "c.0": 2}; stage lists are keyed by stage name."""
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(data, list) and data and all(isinstance(v, dict) and "name" in v for v in data):
        for v in data:
            out.update(flatten(v, f"{prefix}{v['name']}."))
    else:
        out[prefix[:-1]] = data
    return out


def methods_markdown(recipes: list[Recipe]) -> str:
    lines = []
    for r in recipes:
        lines += [f"### `{r.name}`: {r.title}", "", f"Paper: {r.paper}", ""]
        if r.description:
            lines += [r.description.strip(), ""]
        lines += ["| key | recipe value | paper source | deviation |", "|---|---|---|---|"]
        values = flatten(r.model_dump(mode="json", exclude={"citations", "deviations", "variants", "tiny",
                                                            "description", "title", "paper", "schema_version"}))
        for key in sorted(set(r.citations) | set(r.deviations)):
            shown = {k: v for k, v in values.items() if k == key or k.startswith(key + ".")}
            value = shown.get(key, shown if shown else "—")
            lines.append(f"| `{key}` | `{value}` | {r.citations.get(key, '')} | {r.deviations.get(key, '')} |")
        if r.variants:
            lines += ["", "Variants (ablations): " + "; ".join(
                f"`{k}`: " + ", ".join(f"{kk}={vv}" for kk, vv in v.items()) for k, v in r.variants.items())]
        lines.append("")
    return "\n".join(lines)
