"""The cohort pipeline section of ``make demo``: a small generated cohort end to end.

:func:`run_demo` writes three digital patients (different seeds, a coarse 48 x 48 x 16
grid over the same field of view) as a cohort, runs the whole pipeline on it with two
Dask workers, then runs it again to show that nothing is recomputed, and returns markdown
lines linking ``report.html`` and ``features.csv``.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

from primage.progress import ProgressCallback, sub_progress

CASES = 3
GRID = {"size": (48, 48, 16), "spacing": (3.0, 3.0, 10.0)}
#: Group labels of the demo cases, so the features table can go into ``primage stats``.
GROUPS = ("benign", "malignant", "malignant")


def run_demo(
    case_folder: str | Path, output_folder: str | Path, progress: ProgressCallback | None = None
) -> list[str]:
    """Build a 3-case cohort in ``output_folder/cohort`` and run the pipeline into
    ``output_folder/out`` (2 workers); returns markdown report lines. ``case_folder`` (the
    demo's own patient) is not used: the cohort needs several patients. About 30 s."""
    import json

    from primage.pipeline.runner import run_cohort
    from primage.synthetic import make_digital_patient, write_case

    output = Path(output_folder)
    cohort, out = output / "cohort", output / "out"
    report = sub_progress(progress, 0.0, 0.1)
    for index in range(CASES):
        folder = cohort / f"demo{index + 1:02d}"
        if not (folder / "t2w.nii.gz").is_file():
            report(index / CASES, f"writing case {index + 1}")
            write_case(make_digital_patient(10 + index, **GRID), folder)
            (folder / "case.json").write_text(
                json.dumps({"site": "synthetic", "groups": {"histology": GROUPS[index]}}),
                encoding="utf-8",
            )
    started = time.perf_counter()
    first = run_cohort(cohort, None, out, workers=2, progress=sub_progress(progress, 0.1, 0.9))
    first_seconds = time.perf_counter() - started
    started = time.perf_counter()
    second = run_cohort(cohort, None, out, workers=2, progress=sub_progress(progress, 0.9, 1.0))
    second_seconds = time.perf_counter() - started
    with open(out / "status.csv", newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    up_to_date = sum(row["state"] == "up-to-date" for row in rows)
    step_seconds: dict[str, float] = {}
    for summary in first.summaries:
        for row in summary["steps"]:
            if row["seconds"]:
                step_seconds[row["step"]] = step_seconds.get(row["step"], 0.0) + float(
                    row["seconds"]
                )
    statuses = ", ".join(f"{s['case_id']} {s['status']}" for s in first.summaries)
    lines = [
        "## Cohort pipeline",
        "",
        f"{CASES} generated cases (digital patients, seeds 10-{9 + CASES}, {GRID['size']} voxels) "
        f"through preprocess -> register -> segment -> kinetics -> radiomics with 2 Dask "
        f"workers in {first_seconds:.1f} s: "
        f"{sum(s['status'] != 'failed' for s in first.summaries)} of {CASES} succeeded "
        f"({statuses}). "
        f"Run again: {up_to_date} of {len(rows)} steps up to date, {second_seconds:.1f} s "
        f"(exit code {second.exit_code}).",
        "",
        "Time per step, summed over the cases (s): "
        + ", ".join(f"{step} {seconds:.1f}" for step, seconds in step_seconds.items())
        + ".",
        "",
        f"- [report.html]({(out / 'report.html').relative_to(output.parent).as_posix()}) "
        "(self-contained: QC table, registration overlays, maps, fit curves)",
        f"- [features.csv]({(out / 'features.csv').relative_to(output.parent).as_posix()}) "
        "(one row per case), `status.csv`, `<case>/provenance.json`",
        "",
    ]
    if progress is not None:
        progress(1.0, "pipeline demo done")
    return lines
