"""Long work in a separate process, for a GUI that must stay responsive.

A job is a JSON specification (inputs and settings as files) run by
``python -m primage.jobs SPEC.json``. The process reports on stdout, one line each:

* ``PROGRESS <fraction> <message>`` while it works,
* ``EVENT <json object>`` for structured news (a training epoch's loss and Dice),
* ``WARNING <message>``,
* then ``DONE`` or ``ERROR <message>`` (exit code 0, or 2 for bad input).

It writes its results to the paths the specification names. Killing the process cancels
the job (the caller starts it in its own process group, so its worker processes go too).

The specification's ``kind`` picks the runner in :data:`RUNNERS`; each capability keeps
its runners next to its engine (``primage.radiomics.jobs``, ``primage.segmentation.jobs``,
``primage.pipeline.jobs``).
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from primage.errors import PrimageInputError

#: Job kind -> "module:function" taking the specification dict.
RUNNERS = {
    "extract": "primage.radiomics.jobs:run_extract",
    "pipeline_case": "primage.pipeline.jobs:run_case_spec",
    "robustness": "primage.radiomics.jobs:run_robustness",
    "segment": "primage.segmentation.jobs:run_segment",
    "train": "primage.segmentation.jobs:run_train",
}


def python_executable() -> str:
    """A Python interpreter that can run the job (Slicer's own inside the Slicer application)."""
    name = Path(sys.executable).name.lower()
    if name.startswith("python"):
        return sys.executable
    for candidate in ("PythonSlicer", "python-real"):
        found = shutil.which(candidate)
        if found:
            return found
    return sys.executable


def job_environment() -> dict[str, str]:
    """The environment for a job process: this one, with the ``primage`` package importable."""
    environment = dict(os.environ)
    package_parent = str(Path(__file__).resolve().parents[1])
    paths = [package_parent] + [p for p in environment.get("PYTHONPATH", "").split(os.pathsep) if p]
    environment["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    environment["PYTHONUNBUFFERED"] = "1"
    return environment


def job_command(spec_path: str | os.PathLike) -> list[str]:
    """The command line that runs a job specification."""
    return [python_executable(), "-m", "primage.jobs", str(spec_path)]


def say(text: str) -> None:
    """Write one report line (newlines inside are flattened)."""
    sys.stdout.write(text.replace("\n", " ") + "\n")
    sys.stdout.flush()


def report_progress(fraction: float, message: str) -> None:
    """A progress callback that reports to the parent process."""
    say(f"PROGRESS {fraction:.4f} {message}")


def report_event(payload: dict[str, Any]) -> None:
    """Report structured news (a JSON object) to the parent process."""
    say(f"EVENT {json.dumps(payload)}")


def report_warning(message: str) -> None:
    """Report a warning to the parent process."""
    say(f"WARNING {message}")


def run_spec(spec: dict[str, Any]) -> None:
    """Run a job specification in this process (raises PrimageInputError on bad input)."""
    kind = spec.get("kind")
    if kind not in RUNNERS:
        raise PrimageInputError(f"unknown job kind {kind!r} (known: {', '.join(RUNNERS)})")
    module_name, function_name = RUNNERS[kind].split(":")
    getattr(importlib.import_module(module_name), function_name)(spec)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m primage.jobs SPEC.json``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1:
        say("ERROR usage: python -m primage.jobs SPEC.json")
        return 2
    try:
        spec = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
        run_spec(spec)
    except (PrimageInputError, OSError, json.JSONDecodeError, KeyError) as error:
        say(f"ERROR {error}")
        return 2
    say("DONE")
    return 0


if __name__ == "__main__":
    sys.exit(main())
