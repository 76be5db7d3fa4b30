"""docs/METHODS.md tables generated from the recipes: every value, its paper source or deviation."""

from __future__ import annotations

from typing import Any

import yaml

from kitseg.recipes.schema import Recipe

_NOT_SHOWN = {"citations", "deviations", "variants", "tiny", "description", "title", "paper", "schema_version"}


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


def lookup(data: Any, key: str) -> Any:
    """The value at a dotted key of a recipe dump (stages by name), or KeyError."""
    node = data
    for part in key.split("."):
        if isinstance(node, list):
            named = [v for v in node if isinstance(v, dict) and v.get("name") == part]
            if not named:
                raise KeyError(key)
            node = named[0]
        elif isinstance(node, dict):
            node = node[part]
        else:
            raise KeyError(key)
    return node


def show(value: Any) -> str:
    """A value as compact YAML flow text: ``{name: adam, lr: 0.0003}``, ``[80, 160, 160]``, ``cubic``."""
    if isinstance(value, (dict, list)):
        return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10**6).strip()
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    return str(value)


def _value(r: Recipe, key: str) -> str:
    """The recipe's value at ``key``: what the YAML sets there, else the schema's default in effect."""
    for dump in (r.model_dump(mode="json", exclude_unset=True, exclude=_NOT_SHOWN),
                 r.model_dump(mode="json", exclude=_NOT_SHOWN)):
        try:
            return show(lookup(dump, key))
        except KeyError:
            continue
    return "—"


def methods_markdown(recipes: list[Recipe]) -> str:
    lines = []
    for r in recipes:
        lines += [f"### `{r.name}`: {r.title}", "", f"Paper: {r.paper}", ""]
        if r.description:
            lines += [r.description.strip(), ""]
        lines += ["| key | recipe value | paper source | deviation |", "|---|---|---|---|"]
        for key in sorted(set(r.citations) | set(r.deviations)):
            lines.append(f"| `{key}` | `{_value(r, key)}` | {r.citations.get(key, '')} | {r.deviations.get(key, '')} |")
        if r.variants:
            lines += ["", "Variants (`--variant NAME`, dotted overrides):", ""]
            for name, changes in r.variants.items():
                shown = ", ".join(f"`{k}={show(v)}`" for k, v in changes.items() if k != "tiny")
                own_tiny = " (with its own `tiny` overrides)" if "tiny" in changes else ""
                lines.append(f"- `{name}`: {shown or 'the recipe as written'}{own_tiny}")
        lines.append("")
    return "\n".join(lines)
