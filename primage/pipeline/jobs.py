"""One case's chain in a separate process (job kind ``pipeline_case``).

The protocol (a JSON specification run by ``python -m primage.jobs SPEC.json``, reports on
stdout) is :mod:`primage.jobs`; this is the runner the Slicer module's "process this case"
uses, so that its GUI stays responsive while the chain works. :func:`run_case_folder` is
the part shared with the in-process run (:func:`primage.mrml.pipeline.process_case_nodes`).

Specification keys: ``case_folder`` (the exported case; its name is the case identifier),
``config`` (a validated configuration dict), ``output`` (the pipeline output folder; the
case's outputs go to ``output/<case>/``), ``summary_output`` (JSON path receiving the case
summary).
"""

from __future__ import annotations

import os
from typing import Any

from primage.errors import PrimageInputError
from primage.io import write_json
from primage.jobs import report_progress
from primage.progress import ProgressCallback


def run_case_folder(
    case_folder: str | os.PathLike,
    config: dict[str, Any],
    output_dir: str | os.PathLike,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Run the chain on one case folder into ``output_dir/<case>/``; returns the summary.

    Unlike :func:`~primage.pipeline.case.run_case` (which records a failing case in its
    summary), a failed case raises :class:`PrimageInputError` naming the failed step.
    """
    from primage.pipeline.case import run_case
    from primage.pipeline.cohort import read_case

    summary = run_case(read_case(case_folder), config, output_dir, progress=progress)
    if summary["status"] == "failed":
        raise PrimageInputError(f"{summary['failed_step']} failed: {summary['message']}")
    return summary


def run_case_spec(spec: dict[str, Any]) -> None:
    """Run the specification's case folder; writes the case summary to ``summary_output``."""
    from primage.pipeline.config import validate_config

    config = validate_config(spec["config"])
    summary = run_case_folder(spec["case_folder"], config, spec["output"], report_progress)
    write_json(summary, spec["summary_output"])
