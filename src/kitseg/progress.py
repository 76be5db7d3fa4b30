"""The one rich progress bar kitseg shows (on stderr): preprocessing, training and prediction use it."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def make_progress(enabled: bool = True, eta: bool = True) -> Progress:
    """A bar per task: its description, the bar, done/total, elapsed time and (``eta``) the time left.
    ``enabled=False`` gives a bar that draws nothing, so callers need no second code path."""
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    if eta:
        columns += [TextColumn("eta"), TimeRemainingColumn()]
    return Progress(*columns, console=Console(stderr=True), disable=not enabled)


__all__ = ["make_progress"]
