"""One case's step chain (the unit of work a Dask worker runs), its status, provenance and summary.

:func:`run_case` runs the configured steps in order, then ``figures`` (then ``dicom``
with ``export.dicom``). A step that fails stops this case only: the error (step, message)
goes to ``status.json`` and the summary, the traceback to ``OUT/<case>/error.log``, and
the later steps are marked ``blocked``.
Written per case: ``status.json`` (live, after every change), ``provenance.json``
(versions, configuration, input checksums, timings, host) and ``summary.json`` (what
``features.csv`` and ``report.html`` are built from). Nothing identifying is copied: the
case folder name is the identifier and paths are relative to the case folder.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from primage import __version__
from primage.errors import PrimageInputError
from primage.io import write_json, write_text
from primage.pipeline.cohort import Case
from primage.pipeline.steps import STEPS, CaseContext, StepOutcome
from primage.pipeline.units import HASH_STORE, FileHashes, timestamp

#: Packages whose versions go into provenance.json (distribution names).
PACKAGES = (
    "numpy", "scipy", "SimpleITK", "pyradiomics-bhklab", "dask", "distributed", "PyYAML",
)  # fmt: skip
#: Unit details copied into provenance.json (the register step's alignment decision).
PROVENANCE_DETAILS = ("alignment", "alignment_reason", "displacement_mm")
STATES = ("pending", "running", "done", "up-to-date", "failed", "blocked")


class PipelineAborted(BaseException):
    """Raised by the ``abort_after`` test hook: the run stops as if the process were killed
    (a BaseException, so no step catches it as a case failure)."""


def package_versions() -> dict[str, str]:
    """Installed versions of :data:`PACKAGES` (and Python), for provenance."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version(), "primage": __version__}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def chain(config: dict[str, Any]) -> list[str]:
    """The steps a case goes through: the configured ones, ``figures``, then ``dicom`` when
    ``export.dicom`` is on (last, so that a failed export leaves the report's figures)."""
    export = ["dicom"] if config.get("export", {}).get("dicom") else []
    return [*config["steps"], "figures", *export]


class CaseStatus:
    """The live status rows of one case, written to ``OUT/<case>/status.json`` on change."""

    def __init__(self, case_id: str, steps: list[str], folder: Path, listener=None) -> None:
        self.case_id = case_id
        self.folder = folder
        self.listener = listener
        self.rows = [
            {"case": case_id, "step": s, "state": "pending", "seconds": "", "message": ""}
            for s in steps
        ]

    def set(self, step: str, state: str, seconds: float | None = None, message: str = "") -> None:
        for row in self.rows:
            if row["step"] == step:
                row.update(
                    state=state,
                    seconds="" if seconds is None else f"{seconds:.2f}",
                    message=message.replace("\n", " ")[:500],
                )
        write_json({"case": self.case_id, "steps": self.rows}, self.folder / "status.json")
        if self.listener is not None:
            self.listener(self.case_id, [dict(r) for r in self.rows])


def _describe(error: BaseException) -> str:
    if isinstance(error, PrimageInputError):
        return str(error)
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[-1] if text else ''}"[:500]


def run_case(
    case: Case,
    config: dict[str, Any],
    output_dir: str | os.PathLike,
    *,
    threads: int = 1,
    abort_after: str | None = None,
    on_status: Callable[[str, list[dict]], None] | None = None,
    progress: Callable[[float, str], None] | None = None,
) -> dict[str, Any]:
    """Run one case's chain into ``output_dir/<case_id>/``; returns its summary.

    ``threads``: ITK threads for this case (results are identical for a given count; 1
    lets a worker per core run without oversubscription). ``abort_after`` (tests): raise
    :class:`PipelineAborted` once that step has finished. ``on_status(case_id, rows)`` is
    called on every status change (the serial runner's live status). Never raises for a
    failing case: the failure is in the summary.
    """
    import SimpleITK as sitk

    from primage.memory import reuse_freed_memory

    reuse_freed_memory()  # a case allocates and frees GBs of images: reuse, do not fault
    folder = Path(output_dir) / case.case_id
    folder.mkdir(parents=True, exist_ok=True)
    steps = chain(config)
    status = CaseStatus(case.case_id, steps, folder, on_status)
    previous_threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(int(threads), 1))
    started, started_at = time.perf_counter(), timestamp()
    # Without a segment step the case's own tumour.* (on the reference) is the mask.
    ctx = CaseContext(
        case,
        config,
        folder,
        FileHashes(folder / HASH_STORE),
        current=dict(case.series),
        mask=case.masks.get("reference"),
        threads=max(int(threads), 1),
    )
    outcomes: dict[str, StepOutcome] = {}
    records: list[dict[str, Any]] = []
    failure: dict[str, str] | None = None
    error_log = folder / "error.log"
    try:
        for index, step in enumerate(steps):
            if failure is not None:
                status.set(step, "blocked", message=f"not run: {failure['step']} failed")
                records.append({"step": step, "state": "blocked"})
                continue
            status.set(step, "running")
            began = time.perf_counter()

            def report(fraction: float, message: str, index=index) -> None:
                if progress is not None:
                    progress((index + fraction) / len(steps), f"{case.case_id}: {message}")

            try:
                if case.problems:
                    raise PrimageInputError("; ".join(case.problems))
                if config["reference"] not in case.series:
                    raise PrimageInputError(
                        f"the reference series {config['reference']!r} is missing (found: "
                        f"{', '.join(sorted(case.series)) or 'none'})"
                    )
                outcome = STEPS[step](ctx, report)
            except Exception as error:  # a failing case never stops the cohort
                seconds = time.perf_counter() - began
                failure = {"step": step, "message": _describe(error)}
                write_text(
                    f"case: {case.case_id}\nstep: {step}\nmessage: {failure['message']}\n\n"
                    + "".join(traceback.format_exception(error)),
                    error_log,
                )
                status.set(step, "failed", seconds, failure["message"])
                records.append({"step": step, "state": "failed", "seconds": round(seconds, 3)})
                continue
            seconds = time.perf_counter() - began
            outcomes[step] = outcome
            status.set(step, outcome.state, seconds, "; ".join(outcome.notes))
            records.append(
                {
                    "step": step,
                    "state": outcome.state,
                    "seconds": round(seconds, 3),
                    "notes": outcome.notes,
                    "units": [
                        {
                            "unit": u.name,
                            "state": u.state,
                            "seconds": round(u.seconds, 3),
                            "finished": u.finished,
                            # How a series reached the reference grid, and why.
                            **{k: u.details[k] for k in PROVENANCE_DETAILS if k in u.details},
                        }
                        for u in outcome.units
                    ],
                }
            )
            if abort_after == step:
                raise PipelineAborted(f"test hook: stopped after {step} of {case.case_id}")
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous_threads)
        ctx.hashes.save()
    if failure is None and error_log.exists():
        error_log.unlink()  # an old failure, fixed since
    seconds = time.perf_counter() - started
    hashes = ctx.hashes
    inputs = {}
    for name, path in case.input_files().items():
        try:
            inputs[name] = hashes(path)
        except OSError as error:
            inputs[name] = f"unreadable: {error.strerror}"
    hashes.save()
    write_json(
        {
            "case_id": case.case_id,
            "versions": package_versions(),
            "host": {
                "name": platform.node(),
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "itk_threads": int(threads),
            },
            "started": started_at,
            "finished": timestamp(),
            "seconds": round(seconds, 3),
            "configuration": config,
            "inputs_sha256": inputs,
            "steps": records,
            "case_json_keys_not_copied": case.dropped_keys,
        },
        folder / "provenance.json",
    )
    summary = summarise(ctx, outcomes, status.rows, failure, seconds)
    write_json(summary, folder / "summary.json")
    return summary


def _read_json(path: Path | None) -> dict:
    if path is None or not Path(path).is_file():
        return {}
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _features(path: Path) -> dict[str, float]:
    with open(path, newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    if not rows:
        return {}
    values = {}
    for key, text in rows[0].items():
        if key in ("image", "label", "error"):
            continue
        try:
            values[key] = float(text)
        except (TypeError, ValueError):
            continue
    return values


def summarise(
    ctx: CaseContext,
    outcomes: dict[str, StepOutcome],
    rows: list[dict],
    failure: dict[str, str] | None,
    seconds: float,
) -> dict[str, Any]:
    """The case summary behind ``features.csv`` and ``report.html`` (paths relative to the
    case's output folder)."""
    folder = ctx.folder

    def relative(path: Path) -> str:
        return Path(path).relative_to(folder).as_posix()

    registration = {}
    for role, path in sorted(ctx.qc.items()):
        qc = _read_json(path)
        registration[role] = {
            "verdict": qc.get("verdict"),
            "reason": qc.get("reason"),
            "preset": qc.get("registration", {}).get("preset"),
            "alignment": qc.get("alignment"),
            "alignment_reason": qc.get("alignment_reason"),
            "displacement_mm": qc.get("displacement_mm", {}).get("mean"),
            "mutual_information_before": qc.get("metric_before", {}).get("mutual_information"),
            "mutual_information_after": qc.get("metric_after", {}).get("mutual_information"),
            "dice_after": qc.get("dice_after"),
        }
    tumour = {}
    if "segment" in outcomes and outcomes["segment"].units:
        details = outcomes["segment"].units[0].details
        tumour = {"voxels": details.get("voxels"), "volume_ml": details.get("volume_ml")}
    kinetics = {}
    for name, path in sorted(ctx.kinetics.items()):
        data = _read_json(path)
        if name.startswith("fcf_"):
            kinetics[name] = {
                "habitats": data.get("habitats", []),
                "unit": data.get("unit"),
                "voxels_in_mask": data.get("voxels_in_mask"),
            }
        else:
            kinetics[name] = {"tumour": data.get("tumour", {})}
    radiomics = {name: _features(path) for name, path in sorted(ctx.radiomics.items())}
    notes = [note for outcome in outcomes.values() for note in outcome.notes]
    review = [
        f"{role}: {r['reason']}" for role, r in registration.items() if r["verdict"] == "review"
    ]
    review += [n for n in notes if n.startswith("radiomics ") and ":" in n and "skipped" not in n]
    state = "failed" if failure else ("review" if review else "ok")
    captions = _read_json(ctx.figures.get("captions"))
    return {
        "case_id": ctx.case.case_id,
        "status": state,
        "failed_step": failure["step"] if failure else "",
        "message": failure["message"] if failure else "; ".join(review),
        "notes": notes,
        "seconds": round(seconds, 3),
        "series": sorted(ctx.case.series),
        "metadata": ctx.case.metadata,
        "registration": registration,
        "tumour": tumour,
        "kinetics": kinetics,
        "radiomics": radiomics,
        "figures": {
            name: {"file": relative(path), "caption": captions.get(name, "")}
            for name, path in ctx.figures.items()
            if Path(path).suffix == ".png"
        },
        "snapshots": {name: relative(path) for name, path in sorted(ctx.snapshots.items())},
        "dicom": ctx.dicom,
        "steps": rows,
    }


def failed_summary(case: Case, step: str, message: str) -> dict[str, Any]:
    """The summary of a case whose chain never reported (e.g. its worker died)."""
    return {
        "case_id": case.case_id,
        "status": "failed",
        "failed_step": step,
        "message": message,
        "notes": [],
        "seconds": 0.0,
        "series": sorted(case.series),
        "metadata": case.metadata,
        "registration": {},
        "tumour": {},
        "kinetics": {},
        "radiomics": {},
        "figures": {},
        "snapshots": {},
        "dicom": {},
        "steps": [],
    }
