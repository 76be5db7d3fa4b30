"""Recipes: one YAML file per paper method (pure data), validated into a ``Recipe``.

``load_recipe(name_or_path, overrides=["stages.segment.optimizer.lr=1e-4"], profile="cpu",
variant="3d_unet")`` returns a validated Recipe. Profiles (``PROFILES``) scale a recipe to a machine:
``tiny`` (a check of the whole path in minutes) and ``cpu`` (the best model 30 minutes of training
on 2 CPU cores can give; docs/METHODS.md lists each recipe's values). Overrides use dotted keys; a list index or a
stage name selects a stage. Any bad key, type or value is refused with a KitsegError naming it.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kitseg.errors import KitsegError
from kitseg.recipes.profiles import PROFILES, generic_tiny
from kitseg.recipes.schema import Recipe, Stage

RECIPE_DIR = Path(__file__).parent
DEFAULT_RECIPE = "kitseg_cascade"

__all__ = ["DEFAULT_RECIPE", "PROFILES", "Recipe", "Stage", "apply_overrides", "cpu_section", "list_recipes",
           "load_recipe", "parse_overrides", "recipe_path"]


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def recipe_path(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    p = RECIPE_DIR / f"{name_or_path}.yaml"
    if not p.exists():
        raise KitsegError(f"unknown recipe {str(name_or_path)!r}; known recipes: {', '.join(list_recipes())}")
    return p


def load_recipe(name_or_path: str | Path, overrides: list[str] | dict[str, Any] = (), *, tiny: bool = False,
                variant: str | None = None, profile: str | None = None) -> Recipe:
    """Load, override and validate a recipe. Order: file, variant, profile, then --set overrides.

    ``profile``: ``paper`` (or None: the recipe as written), ``tiny`` (the recipe's ``tiny``
    section, or ``kitseg.recipes.profiles.generic_tiny`` when it has none) or ``cpu`` (the recipe's
    ``cpu`` section; a variant's own ``cpu`` section changes those keys of it and keeps the others, while
    a variant's ``tiny`` section replaces the recipe's). ``tiny=True`` is the older spelling of
    ``profile="tiny"``."""
    if tiny:
        if profile not in (None, "tiny"):
            raise KitsegError(f"--tiny and --profile {profile} contradict each other; give one")
        profile = "tiny"
    if profile is not None and profile not in PROFILES:
        raise KitsegError(f"unknown profile {profile!r}; profiles: {', '.join(PROFILES)}")
    path = recipe_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise KitsegError(f"recipe is not valid YAML ({exc})", path) from None
    if not isinstance(data, dict):
        raise KitsegError("a recipe is a YAML mapping", path)
    if variant is not None:
        variants = data.get("variants", {})
        if variant not in variants:
            raise KitsegError(f"recipe {data.get('name')!r} has no variant {variant!r}; "
                              f"variants: {', '.join(variants) or 'none'}", path)
        own = dict(variants[variant] or {})
        cpu = cpu_section(data, variant) if own.pop("cpu", None) else None
        data = apply_overrides(data, own, path)
        if cpu:
            data["cpu"] = cpu
    if profile == "cpu":
        if not data.get("cpu"):
            raise KitsegError(f"recipe {data.get('name')!r} has no cpu profile (a `cpu` section)", path)
        data = apply_overrides(data, data["cpu"], path)
    if profile == "tiny":
        shrink = data.get("tiny")
        if not shrink:  # no tiny section: every network's tiny parameters, 2 short epochs, small patches
            shrink = generic_tiny(validate_recipe(data, path))
        data = apply_overrides(data, shrink, path)
    items = overrides if isinstance(overrides, dict) else parse_overrides(overrides, path)
    data = apply_overrides(data, items, path)
    if profile not in (None, "paper"):
        data["profile"] = profile
    return validate_recipe(data, path)


def cpu_section(data: dict, variant: str | None = None) -> dict[str, Any]:
    """The dotted overrides of a recipe's ``cpu`` profile (raw recipe data): the recipe's ``cpu`` section,
    with the keys of ``variant``'s own ``cpu`` section set over it."""
    out = dict(data.get("cpu") or {})
    if variant:
        out.update((data.get("variants", {}).get(variant) or {}).get("cpu") or {})
    return out


def parse_overrides(items, path: Path | str | None = None) -> dict[str, Any]:
    """``["key=value", ...]`` (``kitseg train --set``) -> {dotted key: YAML value}."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise KitsegError(f"--set {item!r} must look like key=value (e.g. stages.segment.optimizer.lr=1e-4)",
                              path)
        out[key.strip()] = yaml.safe_load(value)
    return out


def validate_recipe(data: dict, path: Path | str | None = None) -> Recipe:
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = list(err["loc"])
        if len(loc) > 1 and loc[0] == "stages" and isinstance(loc[1], int):
            try:  # name the stage, as the user wrote it
                loc[1] = data["stages"][loc[1]]["name"]
            except (KeyError, IndexError, TypeError):
                pass
        key = ".".join(str(p) for p in loc) or "(recipe)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
        raise KitsegError(f"recipe key {key}: {msg}{more}", path) from None


def apply_overrides(data: dict, overrides: dict[str, Any], path: Path | str | None = None) -> dict:
    """Return a copy of ``data`` with dotted-key overrides set (``stages.<name|index>.key=value``)."""
    data = copy.deepcopy(data)
    for key, value in overrides.items():
        parts = key.split(".")
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            node = _child(node, part, ".".join(parts[: i + 1]), path)
        last = parts[-1]
        if isinstance(node, list):
            node[_index(node, last, key, path)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise KitsegError(f"recipe key {key}: {'.'.join(parts[:-1])} is not a mapping", path)
    return data


def _child(node: Any, part: str, where: str, path) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, where, path)]
    if isinstance(node, dict):
        if part not in node or node[part] is None:
            node[part] = {}
        return node[part]
    raise KitsegError(f"recipe key {where}: not a mapping or list", path)


def _index(items: list, part: str, where: str, path) -> int:
    if part.lstrip("-").isdigit():
        i = int(part)
        if -len(items) <= i < len(items):
            return i
    for i, item in enumerate(items):
        if isinstance(item, dict) and item.get("name") == part:
            return i
    raise KitsegError(f"recipe key {where}: no stage or list item {part!r}", path)
