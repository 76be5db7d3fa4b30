"""`kitseg preprocess DATA_DIR -o CACHE_DIR --recipe NAME | --preset NAME`: fill the case cache."""

from __future__ import annotations

from pathlib import Path

import click

from kitseg.errors import KitsegError
from kitseg.preprocessing.spec import PRESETS, PreprocessSpec


def recipe_stages(name: str) -> list[tuple[str, PreprocessSpec]]:
    """(stage name, PreprocessSpec) of every stage of recipe ``name`` (``kitseg.recipes``)."""
    try:
        from kitseg.recipes import load_recipe
    except ImportError:
        raise KitsegError("recipes are not available in this kitseg; use --preset NAME") from None
    return [(stage.name, stage.preprocess) for stage in load_recipe(name).stages]


@click.command()
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option("-o", "--output", "cache_dir", type=click.Path(path_type=Path), required=True,
              help="Cache folder (a recipe writes one sub-folder per stage: CACHE_DIR/<stage>/).")
@click.option("--recipe", help="Preprocess every stage of this recipe (see `kitseg recipes`).")
@click.option("--preset", type=click.Choice(sorted(PRESETS)),
              help="Preprocess with one of the papers' preset specs instead of a recipe.")
@click.option("--fingerprint", "fingerprint_file", type=click.Path(path_type=Path),
              help="Use this fingerprint.json instead of computing one (when the spec needs one).")
@click.option("--workers", type=click.IntRange(1), default=2, show_default=True, help="Cases processed at once.")
@click.option("--no-compress", is_flag=True, help="Store plain .npz (faster, larger) instead of compressed.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def preprocess(data_dir: Path, cache_dir: Path, recipe: str | None, preset: str | None, fingerprint_file: Path | None,
               workers: int, no_compress: bool, no_progress: bool) -> None:
    """Crop, resample and normalize every case of DATA_DIR into CACHE_DIR (resumable).

    Each case becomes CACHE_DIR/<case>.npz (image float32 (C, z, y, x), label uint8) and
    <case>.json (the records that undo the preprocessing). Stages that crop around the kidney
    crop around the ground truth (label > 0). Run it again after an interruption: finished cases
    are kept, half-written files are removed.
    """
    from kitseg.datasets import open_dataset
    from kitseg.preprocessing.cache import preprocess_dataset  # imports torch: only when run
    from kitseg.preprocessing.fingerprint import fingerprint_for, read_fingerprint

    if (recipe is None) == (preset is None):
        raise KitsegError("give exactly one of --recipe NAME or --preset NAME")
    stages = recipe_stages(recipe) if recipe else [(None, PRESETS[preset])]
    dataset = open_dataset(data_dir)
    fp = read_fingerprint(fingerprint_file) if fingerprint_file else None
    if fp is None and any(spec.needs_fingerprint for _, spec in stages):
        fp = fingerprint_for(dataset, cache_dir / "fingerprint.json", [spec for _, spec in stages], workers=workers,
                             progress=not no_progress)
    for name, spec in stages:
        target = cache_dir / name if name else cache_dir
        records = preprocess_dataset(dataset, target, spec, fp, workers=workers, progress=not no_progress,
                                     compress=not no_compress)
        click.echo(f"{name or preset}: {len(records)} entries in {target}")
