"""Radiomics runs in a separate process, for a GUI that must stay responsive.

A job is a JSON specification (images, masks and settings as files) run by
``python -m primage.radiomics.jobs SPEC.json``. The process reports on stdout, one line
each: ``PROGRESS <fraction> <message>`` while it works, then ``DONE`` or
``ERROR <message>`` (exit code 0, or 2 for bad input). It writes its tables (CSV) to the
paths the specification names. Killing the process cancels the job (it starts its own
process group, so its worker processes go with it).

Specification keys: ``kind`` (``"extract"`` or ``"robustness"``), ``preset`` or
``params_file``, ``workers``; for ``extract``: ``images`` (name -> path), ``pairs``
(list of ``{"image", "name", "mask", "label"}``: each region with its own mask file, on
its image's grid), ``modalities`` (name -> modality), ``region_column``, ``output`` and
``diagnostics_output`` (CSV paths); for ``robustness``: ``cases`` (list of ``{"name",
"image", "masks", "modality"}``), ``perturbations``, ``output`` (ICC CSV) and
``features_output``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from primage.errors import PrimageInputError


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
    package_parent = str(Path(__file__).resolve().parents[2])
    paths = [package_parent] + [p for p in environment.get("PYTHONPATH", "").split(os.pathsep) if p]
    environment["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    environment["PYTHONUNBUFFERED"] = "1"
    return environment


def job_command(spec_path: str | os.PathLike) -> list[str]:
    """The command line that runs a job specification."""
    return [python_executable(), "-m", "primage.radiomics.jobs", str(spec_path)]


def _say(text: str) -> None:
    sys.stdout.write(text.replace("\n", " ") + "\n")
    sys.stdout.flush()


def _progress(fraction: float, message: str) -> None:
    _say(f"PROGRESS {fraction:.4f} {message}")


def run_spec(spec: dict[str, Any]) -> None:
    """Run a job specification in this process (raises PrimageInputError on bad input)."""
    from primage.radiomics.extraction import (
        Region,
        build_tasks,
        result_rows,
        run_tasks,
    )
    from primage.radiomics.params import load_params
    from primage.radiomics.tables import write_csv

    parameters = load_params(spec.get("preset"), spec.get("params_file"))
    workers = spec.get("workers")
    kind = spec.get("kind")
    if kind == "extract":
        images = spec["images"]
        modalities = spec.get("modalities") or {}
        tasks = []
        for pair in spec["pairs"]:
            name = pair["image"]
            region = Region(pair["name"], pair["mask"], int(pair.get("label", 1)))
            explicit = {name: modalities[name]} if name in modalities else {}
            tasks += build_tasks({name: images[name]}, [region], parameters, modalities=explicit)
        results = run_tasks(tasks, workers=workers, progress=_progress)
        region_column = spec.get("region_column", "segment")
        rows, diagnostics = result_rows(
            results, region_column=region_column, diagnostics="separate"
        )
        write_csv(rows, spec["output"])
        if spec.get("diagnostics_output"):
            write_csv(diagnostics, spec["diagnostics_output"])
    elif kind == "robustness":
        from primage.radiomics.robustness import ICC_COLUMNS, Case, robustness

        cases = [
            Case(c["name"], c["image"], list(c["masks"]), c.get("modality")) for c in spec["cases"]
        ]
        icc_rows, results, dropped = robustness(
            cases,
            parameters=parameters,
            perturbations=spec.get("perturbations") or [],
            workers=workers,
            progress=_progress,
        )
        write_csv(icc_rows, spec["output"], ICC_COLUMNS)
        if spec.get("features_output"):
            rows, _ = result_rows(results, region_column="repetition", diagnostics="none")
            write_csv(rows, spec["features_output"])
        if dropped:
            _say(f"WARNING case(s) left out (a repetition failed): {', '.join(dropped)}")
    else:
        raise PrimageInputError(f"unknown job kind {kind!r}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m primage.radiomics.jobs SPEC.json``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1:
        _say("ERROR usage: python -m primage.radiomics.jobs SPEC.json")
        return 2
    try:
        spec = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
        run_spec(spec)
    except (PrimageInputError, OSError, json.JSONDecodeError, KeyError) as error:
        _say(f"ERROR {error}")
        return 2
    _say("DONE")
    return 0


if __name__ == "__main__":
    sys.exit(main())
