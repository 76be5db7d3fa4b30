"""docs/METHODS.md, generated: the prose of ``docs/METHODS.template.md`` with its tables filled in
from the recipes and from the networks as built, so that the document matches the code by
construction (``tests/test_methods_doc.py`` fails when the committed file differs).

Placeholders of the template (each on a line of its own, except ``params``):

- ``{{networks}}``: every registered network at its paper size: parameters and convolution layers
  (convolutions and deconvolutions) counted on the built network;
- ``{{params NAME key=value ...}}`` (inline): the parameter count of network NAME at its paper
  size with some parameters changed (values in YAML: ``max_features=null``);
- ``{{recipe_index}}``: one row per recipe: title, stages and networks, variants;
- ``{{recipe NAME}}``: the recipe's heading, paper and description;
- ``{{recipe_table NAME}}``: every cited or deviating key with its value, source and deviation,
  the variants, and the values of the recipe's ``cpu`` profile beside the paper values.

Regenerate with ``python -m kitseg.recipes.methods`` from the repository root.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from kitseg.errors import KitsegError
from kitseg.recipes import list_recipes, load_recipe, recipe_path
from kitseg.recipes.schema import Recipe
from kitseg.recipes.tables import _value, methods_markdown, show

_PLACEHOLDER = re.compile(r"\{\{(\w+)((?: [^}]*)?)\}\}")


def network_rows() -> list[str]:
    import torch
    from torch import nn

    from kitseg.nets import NETWORKS, build_network

    lines = ["| network | paper | dims | in -> out | patch | parameters | convolution layers |",
             "|---|---|---|---|---|---|---|"]
    for name, info in NETWORKS.items():
        with torch.device("meta"):
            net = build_network(name, info.paper_in_channels, info.paper_out_channels, **info.paper_params)
        params = sum(p.numel() for p in net.parameters())
        convs = sum(isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d))
                    for m in net.modules())
        patch = "x".join(str(p) for p in info.paper_patch)
        slices = f" (x{net.context_slices} slices)" if getattr(net, "context_slices", 1) > 1 else ""
        lines.append(f"| `{name}` | {info.paper} | {info.dims}D | {info.paper_in_channels}{slices} -> "
                     f"{info.paper_out_channels} ({info.activation}) | {patch} | {params:,} | {convs} |")
    return lines


def parameter_count(args: str) -> str:
    import torch

    from kitseg.nets import NETWORKS, build_network

    name, *pairs = args.split()
    if name not in NETWORKS:
        raise KitsegError(f"METHODS template: unknown network {name!r}")
    info = NETWORKS[name]
    params = dict(info.paper_params)
    for pair in pairs:
        key, _, value = pair.partition("=")
        params[key] = yaml.safe_load(value)
    with torch.device("meta"):
        net = build_network(name, info.paper_in_channels, info.paper_out_channels, **params)
    return f"{sum(p.numel() for p in net.parameters()):,}"


def recipe_index(recipes: list[Recipe]) -> list[str]:
    lines = ["| recipe | method | stages (network) | variants |", "|---|---|---|---|"]
    for r in recipes:
        stages = " -> ".join(f"`{s.name}` (`{s.network.name}`)" for s in r.stages)
        variants = ", ".join(f"`{v}`" for v in r.variants)
        lines.append(f"| `{r.name}` | {r.title} | {stages} | {variants} |")
    return lines


def recipe_head(r: Recipe) -> list[str]:
    lines = [f"### `{r.name}`: {r.title}", "", f"Paper: {r.paper}"]
    if r.description:
        lines += ["", r.description.strip()]
    return lines


def cpu_rows(r: Recipe, cpu: dict) -> list[str]:
    """The recipe's ``cpu`` profile (``--profile cpu``): each overridden key, its cpu value and the paper's."""
    if not cpu:
        return []
    lines = ["", "`--profile cpu` (the recipe's `cpu` section, applied by `kitseg train --profile cpu`):", "",
             "| key | cpu profile | recipe as written |", "|---|---|---|"]
    for key, value in cpu.items():
        lines.append(f"| `{key}` | `{show(value)}` | `{_value(r, key)}` |")
    return lines


def recipe_table(r: Recipe, cpu: dict) -> list[str]:
    table = methods_markdown([r]).split("\n")
    start = next(i for i, line in enumerate(table) if line.startswith("| key |"))
    return [line for line in table[start:]] [:-1] + cpu_rows(r, cpu)


def render(template: str, recipe_dir: Path | None = None) -> str:
    """The template with every placeholder replaced. ``recipe_dir``: read the recipes from there
    (default: the installed ones)."""
    names = list_recipes() if recipe_dir is None else sorted(p.stem for p in Path(recipe_dir).glob("*.yaml"))

    def path(n: str) -> Path:
        return recipe_path(n) if recipe_dir is None else Path(recipe_dir) / f"{n}.yaml"

    recipes = {n: load_recipe(path(n)) for n in names}
    cpus = {n: (yaml.safe_load(path(n).read_text(encoding="utf-8")) or {}).get("cpu") or {} for n in names}
    order = sorted(names, key=lambda n: (n != "kitseg_cascade", n))

    def recipe(arg: str) -> Recipe:
        if arg not in recipes:
            raise KitsegError(f"METHODS template: unknown recipe {arg!r}")
        return recipes[arg]

    out: list[str] = []
    for line in template.split("\n"):
        m = _PLACEHOLDER.fullmatch(line.strip())
        kind, arg = (m.group(1), m.group(2).strip()) if m else (None, "")
        if kind == "networks":
            out += network_rows()
        elif kind == "recipe_index":
            out += recipe_index([recipes[n] for n in order])
        elif kind == "recipe":
            out += recipe_head(recipe(arg))
        elif kind == "recipe_table":
            out += recipe_table(recipe(arg), cpus[arg])
        else:
            out.append(_PLACEHOLDER.sub(lambda mm: _inline(mm.group(1), mm.group(2).strip()), line))
    return "\n".join(out)


def _inline(kind: str, arg: str) -> str:
    if kind != "params":
        raise KitsegError(f"METHODS template: {{{{{kind}}}}} must stand on a line of its own")
    return parameter_count(arg)


def main(argv: list[str] | None = None) -> None:
    import sys

    args = sys.argv[1:] if argv is None else argv
    root = Path.cwd()
    template = Path(args[0]) if args else root / "docs" / "METHODS.template.md"
    target = Path(args[1]) if len(args) > 1 else root / "docs" / "METHODS.md"
    target.write_text(render(template.read_text(encoding="utf-8")), encoding="utf-8")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
