"""The ``primage`` command line: ``primage <area> [<action>] [options]``.

Each area lives in its own module under :mod:`primage.cli` and exposes
``register(subparsers)``, which adds its parser and sets ``handler`` (a function taking the
parsed arguments and returning an exit code). User mistakes raise
:class:`primage.errors.PrimageInputError`; :func:`main` turns them into one line on stderr
and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from primage import __version__
from primage.errors import PrimageInputError
from primage.memory import reuse_freed_memory

#: Modules under primage.cli that each add one area of commands, in --help order.
AREAS = (
    "dicom",
    "preprocess",
    "register",
    "segment",
    "kinetics",
    "radiomics",
    "pipeline",
    "stats",
    "demo",
)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class PrimageArgumentParser(argparse.ArgumentParser):
    """Argument parser whose usage errors are one line on stderr and exit code 2."""

    def error(self, message: str):
        sys.stderr.write(f"primage: error: {message} (see '{self.prog} --help')\n")
        sys.exit(EXIT_USAGE)


def build_parser(areas: Sequence[str] = AREAS) -> argparse.ArgumentParser:
    """The argument parser with ``areas`` registered (default: every area)."""
    import importlib

    parser = PrimageArgumentParser(
        prog="primage",
        description="PRIMAGE quantitative imaging pipeline for paediatric solid tumours.",
    )
    parser.add_argument("--version", action="version", version=f"primage {__version__}")
    subparsers = parser.add_subparsers(dest="area", metavar="<area>")
    subparsers.required = True
    for area in areas:
        importlib.import_module(f"primage.cli.{area}").register(subparsers)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    sys.stderr.write(f"primage: warning: {message}\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 1 failure, 2 bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:  # Slicer's --python-script passes "--" through
        argv = argv[1:]
    # Only the named area's module is imported: start-up does not pay for every area's
    # imports (e.g. pydicom) on each command. Anything else gets the full parser.
    parser = build_parser([argv[0]] if argv[:1] and argv[0] in AREAS else AREAS)
    args = parser.parse_args(argv)
    reuse_freed_memory()
    previous = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        return int(args.handler(args) or EXIT_OK)
    except PrimageInputError as error:
        sys.stderr.write(f"primage: error: {error}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("primage: interrupted\n")
        return 130
    finally:
        warnings.showwarning = previous


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
