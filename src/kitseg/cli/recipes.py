"""`kitseg recipes`: list the recipes (paper methods), show one resolved, or print the methods tables."""

from __future__ import annotations

import click
import yaml

from kitseg.recipes import list_recipes, load_recipe
from kitseg.recipes.tables import methods_markdown


@click.command()
@click.argument("name", required=False)
@click.option("--profile", type=click.Choice(["paper", "cpu", "tiny"]), default="paper", show_default=True,
              help="Show the recipe at a profile: its `cpu` (30 min on 2 CPU cores) or `tiny` overrides applied.")
@click.option("--tiny", is_flag=True, help="Same as --profile tiny.")
@click.option("--variant", help="Apply one of the recipe's ablation variants.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a value (dotted key).")
@click.option("--markdown", is_flag=True, help="Print the paper-vs-recipe tables of docs/METHODS.md.")
def recipes(name: str | None, profile: str, tiny: bool, variant: str | None, overrides: tuple[str, ...],
            markdown: bool) -> None:
    """List the recipes, or print recipe NAME fully resolved (after --variant, --profile and --set)."""
    if markdown:
        click.echo(methods_markdown([load_recipe(n) for n in ([name] if name else list_recipes())]))
        return
    if name is None:
        for n in list_recipes():
            r = load_recipe(n)
            stages = " -> ".join(f"{s.name} ({s.network.name})" for s in r.stages)
            variants = f"  variants: {', '.join(r.variants)}" if r.variants else ""
            variants += "  profiles: paper, " + ("cpu, " if r.cpu else "") + "tiny"
            click.echo(f"{n:<20} {r.title}\n{'':<20} {stages}{variants}")
        return
    recipe = load_recipe(name, list(overrides), variant=variant, profile="tiny" if tiny else profile)
    click.echo(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
