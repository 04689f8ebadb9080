"""The ``primage`` command line inside 3D Slicer's Python (headless batch runs).

Usage (arguments after ``--`` go to ``primage``; the same areas and options as the
``primage`` console script)::

    Slicer --no-main-window --python-script primage_slicer.py -- preprocess --input t2w.nii.gz ...

``--no-main-window`` still starts a Qt application: on a Linux server without a display run
it under ``xvfb-run -a Slicer ...`` or with ``QT_QPA_PLATFORM=offscreen``. ``PythonSlicer
primage_slicer.py preprocess ...`` runs it in Slicer's Python without the application.

Where it is: in this repository ``scripts/primage_slicer.py``; in an installed extension
``<extension folder>/lib/Slicer-X.Y/qt-scripted-modules/primage-scripts/primage_slicer.py``
(next to the ``primage`` engine the extension installs; see the top-level CMakeLists.txt).

Exit code: 0 on success, 1 on failure, 2 on bad input (one line on stderr). A script that
does not exit keeps Slicer running, so it always ends with an explicit exit.
"""

import os
import sys


def _find_engine() -> None:
    """Make ``import primage`` work when the script runs from a checkout or an install."""
    here = os.path.dirname(os.path.abspath(__file__))
    # A checkout: scripts/ is next to primage/. An install: primage-scripts/ is inside
    # qt-scripted-modules/, which holds primage/ (Slicer also puts it on sys.path).
    parent = os.path.dirname(here)
    if os.path.isdir(os.path.join(parent, "primage")) and parent not in sys.path:
        sys.path.insert(0, parent)


def main() -> int:
    """Run ``primage`` with this script's arguments; always returns an exit code.

    Inside Slicer an exception or a ``SystemExit`` raised by argparse (``--help``, usage
    errors) would end only the script and leave Slicer running, so both become a code here.
    """
    try:
        _find_engine()
        from primage.cli import main as primage_main

        # main() drops the leading "--" that Slicer's --python-script passes through.
        return primage_main(sys.argv[1:])
    except SystemExit as error:
        if error.code is None or isinstance(error.code, int):
            return error.code or 0
        sys.stderr.write(f"{error.code}\n")
        return 1
    except Exception:
        import traceback

        traceback.print_exc()
        return 1


def _exit(code: int) -> None:
    try:
        import slicer
    except ImportError:  # plain Python without Slicer or slicer-core
        slicer = None
    if slicer is not None and hasattr(slicer, "app"):
        # Inside the Slicer application: sys.exit would only end this script, not Slicer.
        slicer.util.exit(code)
    else:
        sys.exit(code)


if __name__ == "__main__":
    _exit(main())
