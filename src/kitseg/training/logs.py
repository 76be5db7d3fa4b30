"""Training logs of one stage and fold: ``log.csv``, ``tensorboard/`` and ``curves.png``.

The history (one row per epoch) lives in the checkpoint, so a resumed run rewrites ``log.csv``
and ``curves.png`` exactly, and TensorBoard drops the events of epochs it redoes.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from kitseg._atomic import atomic_path, write_text


def write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    write_text(path, buf.getvalue())


def write_curves(path: Path, rows: list[dict], title: str) -> None:
    """Loss (train, validation) and validation Dice (per class, mean, smoothed) against the epoch."""
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    ep = [r["epoch"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(ep, [r["train_loss"] for r in rows], "o-", ms=3, label="train loss")
    ax1.plot(ep, [r["val_loss"] for r in rows], "o-", ms=3, label="validation loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.grid(alpha=0.3)
    ax1.legend()
    for k in [k for k in rows[0] if k.startswith("dice_")]:
        ax2.plot(ep, [r[k] for r in rows], "o-", ms=3, lw=1, label=k.removeprefix("dice_"))
    ax2.plot(ep, [r["val_dice"] for r in rows], "k-", lw=1.5, label="mean")
    ax2.plot(ep, [r["ema_dice"] for r in rows], "r--", lw=1.5, label="mean, smoothed (EMA 0.9)")
    ax2.set_ylim(0, 1)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation Dice")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


class TensorBoard:
    """Scalars per epoch, when the ``tensorboard`` package is installed (else a no-op)."""

    def __init__(self, log_dir: Path, purge_step: int | None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            self.writer = None
            return
        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def log(self, row: dict) -> None:
        if self.writer is None:
            return
        for k, v in row.items():
            if k != "epoch" and isinstance(v, (int, float)):
                self.writer.add_scalar(k, v, row["epoch"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
