"""Radiomics runs in a separate process (job kinds ``extract`` and ``robustness``).

The protocol (a JSON specification run by ``python -m primage.jobs SPEC.json``, reports
on stdout) is :mod:`primage.jobs`; this module holds the radiomics runners.

Specification keys: ``kind`` (``"extract"`` or ``"robustness"``), ``preset`` or
``params_file``, ``workers``; for ``extract``: ``images`` (name -> path), ``pairs``
(list of ``{"image", "name", "mask", "label"}``: each region with its own mask file, on
its image's grid), ``modalities`` (name -> modality), ``region_column``, ``output`` and
``diagnostics_output`` (CSV paths); for ``robustness``: ``cases`` (list of ``{"name",
"image", "masks", "modality"}``), ``perturbations``, ``output`` (ICC CSV) and
``features_output``.
"""

from __future__ import annotations

from typing import Any

from primage.jobs import report_progress, report_warning
from primage.radiomics.extraction import Region, build_tasks, result_rows, run_tasks
from primage.radiomics.params import load_params
from primage.radiomics.tables import write_csv


def run_extract(spec: dict[str, Any]) -> None:
    """Features of each (image, mask) pair of the specification into ``output`` (CSV)."""
    parameters = load_params(spec.get("preset"), spec.get("params_file"))
    images = spec["images"]
    modalities = spec.get("modalities") or {}
    tasks = []
    for pair in spec["pairs"]:
        name = pair["image"]
        region = Region(pair["name"], pair["mask"], int(pair.get("label", 1)))
        explicit = {name: modalities[name]} if name in modalities else {}
        tasks += build_tasks({name: images[name]}, [region], parameters, modalities=explicit)
    results = run_tasks(tasks, workers=spec.get("workers"), progress=report_progress)
    region_column = spec.get("region_column", "segment")
    rows, diagnostics = result_rows(results, region_column=region_column, diagnostics="separate")
    write_csv(rows, spec["output"])
    if spec.get("diagnostics_output"):
        write_csv(diagnostics, spec["diagnostics_output"])


def run_robustness(spec: dict[str, Any]) -> None:
    """ICC of the features over each case's masks into ``output`` (CSV)."""
    from primage.radiomics.robustness import ICC_COLUMNS, Case, robustness

    parameters = load_params(spec.get("preset"), spec.get("params_file"))
    cases = [
        Case(c["name"], c["image"], list(c["masks"]), c.get("modality")) for c in spec["cases"]
    ]
    icc_rows, results, dropped = robustness(
        cases,
        parameters=parameters,
        perturbations=spec.get("perturbations") or [],
        workers=spec.get("workers"),
        progress=report_progress,
    )
    write_csv(icc_rows, spec["output"], ICC_COLUMNS)
    if spec.get("features_output"):
        rows, _ = result_rows(results, region_column="repetition", diagnostics="none")
        write_csv(rows, spec["features_output"])
    if dropped:
        report_warning(f"case(s) left out (a repetition failed): {', '.join(dropped)}")
