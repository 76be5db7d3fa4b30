"""Entry point of the `kitseg` command. Each command lives in its own module and is registered here.

Every command is a few lines that call library functions. A ``KitsegError`` becomes one line on
stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import sys

import click

from kitseg import __version__
from kitseg._itk import quiet_itk
from kitseg.cli import (
    demo,
    download,
    evaluate,
    export,
    fingerprint,
    info,
    nets,
    predict,
    preprocess,
    recipes,
    report,
    synth,
    train,
)
from kitseg.errors import KitsegError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="kitseg", message="%(prog)s %(version)s")
def cli() -> None:
    """Kidney and kidney-tumor segmentation in CT: the cascaded KiTS methods side by side."""


# The explicit command registry. Add a command by writing its module and listing it here.
COMMANDS = [
    demo.demo,
    download.download,
    evaluate.evaluate,
    export.export,
    fingerprint.fingerprint,
    info.info,
    nets.nets,
    predict.predict,
    preprocess.preprocess,
    recipes.recipes,
    report.report,
    synth.synth,
    train.train,
]
for _cmd in COMMANDS:
    cli.add_command(_cmd)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (tests call this; the console script exits with it)."""
    try:
        with quiet_itk():  # kitseg words every problem itself; ITK's stderr warnings only add noise
            rc = cli.main(args=argv, prog_name="kitseg", standalone_mode=False)
    except KitsegError as exc:
        print(f"kitseg: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the file system refused (permissions, read-only, disk full) outside kitseg's own checks
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"kitseg: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except MemoryError as exc:
        print(f"kitseg: error: out of memory ({exc or 'MemoryError'}); use a machine with more memory", file=sys.stderr)
        return 2
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return 2
    except (click.exceptions.Abort, KeyboardInterrupt):
        print("kitseg: interrupted", file=sys.stderr)
        return 130
    return rc if isinstance(rc, int) else 0


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
