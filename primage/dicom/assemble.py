"""Assemble planned series into images and write pseudonymised case folders.

Pixel data come from pydicom (``pixel_array``); files pydicom cannot decode (compressed
transfer syntaxes without a decoder installed) are read through SimpleITK's GDCM reader
instead. Stored values become modality values with each frame's own rescale slope and
intercept (PET slices often differ). Images are built from arrays, so no DICOM attribute
ever reaches an output file's header.

Case folder layout (the cohort pipeline's): ``t2w.nii.gz``, ``t1w.nii.gz``,
``t1w_post.nii.gz``, ``dwi.nii.gz`` + ``dwi.bval``, ``adc_scanner.nii.gz``,
``dce.nii.gz`` + ``dce.times``, ``ct.nii.gz``, ``pet.nii.gz`` (SUVbw, g/ml); extra series
of a role as ``t2w_2.nii.gz`` ...; tumour masks from RT Structure Sets and SEG as
``tumour_<image>.nii.gz`` on their image's grid (:mod:`primage.dicom.masks`); and
``case.json`` describing every file (role, source of b-values / times, SUV factors, slice
checks, ROI names of the mask labels) and every series left out with its reason.

Each file's entry in ``case.json["files"]`` carries ``"frame_of_reference"``: a token
``FoR-1``, ``FoR-2``, ... numbered in order of first appearance among the study's series.
Equal tokens mean the same DICOM FrameOfReferenceUID (the same scanner coordinates, e.g.
PET/CT); the UID itself is never written.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk

from primage import __version__
from primage.dicom.masks import MaskPlan, mask_labels, plan_masks
from primage.dicom.pseudonym import Pseudonymiser
from primage.dicom.rtstruct import ContourProblem
from primage.dicom.scan import Plan, ScanResult, SeriesInfo, check_study
from primage.dicom.seg_in import SegProblem
from primage.dicom.series import Geometry, Layout
from primage.errors import PrimageInputError
from primage.io import write_image, write_json, write_text
from primage.progress import ProgressCallback, no_progress, sub_progress


class PixelProblem(Exception):
    """Pixel data that cannot be decoded; the message says why."""


def _gdcm_array(path: str) -> np.ndarray:
    # GDCM applies the rescale itself: callers must not apply it again.
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.SetImageIO("GDCMImageIO")
    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise PixelProblem(
            f"pixel data cannot be decoded: {str(error).splitlines()[-1][:120]}"
        ) from None
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)
    return sitk.GetArrayFromImage(image).astype(np.float64)


class PixelReader:
    """Modality values (float64) of frames, reading each file once."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[np.ndarray, bool]] = {}

    def _file(self, path: str) -> tuple[np.ndarray, bool]:
        if path not in self._cache:
            if len(self._cache) > 64:
                self._cache.clear()  # bounded memory for large series
            dataset = pydicom.dcmread(path)
            if int(dataset.get("SamplesPerPixel") or 1) != 1:
                raise PixelProblem("colour images are not supported")
            try:
                array, rescaled = dataset.pixel_array, False
            except Exception:  # noqa: BLE001 - no decoder for this transfer syntax
                array, rescaled = _gdcm_array(path), True
            self._cache[path] = (np.asarray(array), rescaled)
        return self._cache[path]

    def frame(self, frame) -> np.ndarray:
        array, rescaled = self._file(frame.path)
        if frame.index is not None:
            array = array[frame.index] if array.ndim == 3 else array
        elif array.ndim == 3 and array.shape[0] == 1:
            array = array[0]
        if array.shape != (frame.rows, frame.columns):
            raise PixelProblem(
                f"pixel data of shape {array.shape} where {frame.rows}x{frame.columns} is expected"
            )
        values = array.astype(np.float64)
        if not rescaled:
            values = values * frame.slope + frame.intercept
        return values


def _image(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    image = sitk.GetImageFromArray(array, isVector=False)
    image.SetOrigin(geometry.origin)
    image.SetSpacing(geometry.spacing)
    image.SetDirection(geometry.direction)
    return image


def _pixel_type(arrays: list[np.ndarray]) -> type:
    """Int16/Int32 when every value is a whole number that fits, else Float32."""
    low = min(float(a.min()) for a in arrays)
    high = max(float(a.max()) for a in arrays)
    whole = all(np.array_equal(a, np.round(a)) for a in arrays)
    if whole and -32768 <= low and high <= 32767:
        return np.int16
    if whole and -(2**31) <= low and high < 2**31:
        return np.int32
    return np.float32


def read_layout(layout: Layout, reader: PixelReader | None = None, *, scale: float = 1.0):
    """The volumes of a layout as 3D SimpleITK images (modality values x ``scale``)."""
    reader = reader or PixelReader()
    arrays = [
        np.stack([reader.frame(frame) for frame in volume]) * scale for volume in layout.volumes
    ]
    dtype = np.float32 if scale != 1.0 else _pixel_type(arrays)
    return [_image(a.astype(dtype), layout.geometry) for a in arrays]


def plan_images(plan: Plan, reader: PixelReader | None = None) -> tuple[sitk.Image, dict]:
    """The image of a good plan (3D, or 4D for DWI/DCE) and its description for case.json."""
    layout = plan.layout
    scale = plan.suv.factor if plan.suv is not None else 1.0
    volumes = read_layout(layout, reader, scale=scale)
    image = volumes[0] if layout.axis == "none" else sitk.JoinSeries(volumes)
    record = {
        "role": plan.role,
        "series_ids": [m.series_id for m in plan.members],
        "series_numbers": [m.series.series_number for m in plan.members],
        "modality": plan.members[0].series.modality,
        "size": list(image.GetSize()),
        "spacing_mm": [round(s, 6) for s in layout.geometry.spacing],
        "slice_check": layout.slice_check.message,
    }
    if layout.axis == "b":
        record.update(b_values_s_per_mm2=layout.values, b_value_source=layout.source)
    if layout.axis == "time":
        record.update(times_s=layout.values, time_source=layout.source)
    if plan.suv is not None:
        record["suv"] = plan.suv.record()
    return image, record


def _number_text(value: float) -> str:
    return np.format_float_positional(float(value), trim="-")


@dataclass
class CaseResult:
    """What was written for one study."""

    case: str | None
    folder: Path | None
    written: dict[str, str] = field(default_factory=dict)  # output stem -> file name
    skipped: list[dict] = field(default_factory=list)


@dataclass
class AssemblyResult:
    """All cases, and the report rows (one per series)."""

    cases: list[CaseResult]
    rows: list[dict]

    @property
    def skipped(self) -> list[dict]:
        return [row for row in self.rows if row["status"] == "skipped"]

    def summary(self) -> str:
        """What was written, not assembled (by role) and skipped, in one sentence."""
        written = [row for row in self.rows if row["status"] == "written"]
        masks = sum(row["output"].startswith("tumour") for row in written)
        outputs = {(row["case"], row["output"]) for row in written}
        not_used: dict[str, int] = defaultdict(int)
        for row in self.rows:
            if row["status"] == "not assembled":
                not_used[row["role"]] += 1
        by_role = ", ".join(f"{count} {role}" for role, count in sorted(not_used.items()))
        return (
            f"{len(written)} series written as {len(outputs)} files ({masks} of them tumour "
            f"masks), {sum(not_used.values())} series not assembled"
            + (f" ({by_role})" if by_role else "")
            + f", {len(self.skipped)} series skipped"
        )


def apply_roles(result: ScanResult, roles: dict[str, str]) -> list[str]:
    """Set each series' role from the inventory; re-check. Returns messages for series
    found in the folder but not in the inventory (they are skipped)."""
    messages = []
    for infos in result.studies.values():
        for info in infos:
            if info.uid in roles:
                info.role = roles[info.uid]
            else:
                info.role = "skip"
                messages.append(f"{info.series_id}: not in the inventory (scan again)")
        check_study(infos)
    return messages


def case_names(result: ScanResult, pseudonymise: Pseudonymiser) -> dict[str, str | None]:
    """``study_uid -> case name``: the patient's pseudonym, ``_1``, ``_2`` ... by study
    time when a patient has several studies; None when the map has no pseudonym."""
    by_patient: dict[str, list[str]] = defaultdict(list)
    for study_uid, infos in result.studies.items():
        by_patient[infos[0].series.first.patient_id].append(study_uid)
    names: dict[str, str | None] = {}
    for patient, studies in by_patient.items():
        pseudonym = pseudonymise(patient) if patient else None
        if len(studies) == 1:
            names[studies[0]] = pseudonym
            continue
        for number, study_uid in enumerate(studies, start=1):
            names[study_uid] = None if pseudonym is None else f"{pseudonym}_{number}"
    return names


def _install_case(staging: Path, folder: Path, names: list[str]) -> None:
    # Move the new files in one by one (each an atomic rename), case.json last, so a case
    # folder never lists a file that is not there. Other files (e.g. masks the user added)
    # are left alone.
    folder.mkdir(parents=True, exist_ok=True)
    for name in sorted(names, key=lambda n: n == "case.json"):
        os.replace(staging / name, folder / name)


def frame_tokens(infos: list[SeriesInfo]) -> dict[str, str]:
    """``FrameOfReferenceUID -> "FoR-n"`` in order of first appearance among ``infos``."""
    tokens: dict[str, str] = {}
    for info in infos:
        uid = info.series.first.frame_of_reference
        if uid and uid not in tokens:
            tokens[uid] = f"FoR-{len(tokens) + 1}"
    return tokens


def mask_image(mask: MaskPlan) -> tuple[sitk.Image, dict]:
    """The label image of a good mask plan on its image's grid and its case.json entry.

    Raises ``ContourProblem`` / ``SegProblem`` when it cannot be made or holds no voxel.
    """
    labels, record = mask_labels(mask)
    if not labels.any():
        raise ContourProblem(
            f"none of the chosen ROIs ({', '.join(n for _, _, n in mask.labels)}) has a voxel "
            f"on the grid of {mask.image.name}"
        )
    description = {
        "role": "tumour",
        "source": "RT Structure Set" if mask.kind == "rtstruct" else "DICOM SEG",
        "series_ids": [mask.info.series_id],
        "series_numbers": [mask.info.series.series_number],
        "image": f"{mask.image.name}.nii.gz",
        **record,
    }
    return _image(labels, mask.image.layout.geometry), description


def assemble(
    result: ScanResult,
    output: str | Path,
    pseudonymise: Pseudonymiser,
    *,
    tumour_pattern: str | None = None,
    progress: ProgressCallback | None = None,
) -> AssemblyResult:
    """Write each study of a scan (roles already set) as a case folder under ``output``.

    ``tumour_pattern``: regular expression choosing the tumour ROIs / segments of RT
    Structure Sets and SEG objects by name (default
    :data:`primage.dicom.masks.DEFAULT_TUMOUR_PATTERN`).
    """
    progress = progress or no_progress
    output = Path(output)
    names = case_names(result, pseudonymise)
    used = [n for n in names.values() if n is not None]
    if len(used) != len(set(used)):
        raise PrimageInputError("two studies would get the same case name; check the pseudonym map")
    cases, rows = [], []
    studies = list(result.studies.items())
    for number, (study_uid, infos) in enumerate(studies):
        step = sub_progress(progress, number / len(studies), (number + 1) / len(studies))
        case = names[study_uid]
        step(0.0, f"study {number + 1}/{len(studies)}")
        plans = check_study(infos, tumour_pattern)
        masks = plan_masks(infos, plans, tumour_pattern)
        tokens = frame_tokens(infos)
        case_result = CaseResult(case, None if case is None else output / case)
        planned = {m.uid for p in plans for m in p.members} | {m.info.uid for m in masks}
        for info in infos:
            if info.uid not in planned:
                rows.append(_row(info, case, "not assembled", "", info.reason))
        if case is None:
            reason = (
                "patient not in the pseudonym map"
                if infos[0].series.first.patient_id
                else "no PatientID (0010,0020) to derive a pseudonym from"
            )
            for plan in plans:
                for m in plan.members:
                    rows.append(_row(m, None, "skipped", "", reason))
            for mask in masks:
                rows.append(_row(mask.info, None, "skipped", "", reason))
            case_result.skipped.append({"reason": reason})
            cases.append(case_result)
            continue
        good = [p for p in plans if p.problem is None]
        record = {
            "case": case,
            "created_by": f"primage {__version__} dicom assemble",
            "pseudonym": pseudonymise.method,
            "files": {},
            "skipped": [],
        }
        reader = PixelReader()
        output.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{case}.", suffix=".part", dir=output))
        try:
            written: list[str] = []
            for index, plan in enumerate(plans):
                step(index / max(len(plans), 1), f"study {number + 1}: {plan.role}")
                if plan.problem is None:
                    try:
                        image, description = plan_images(plan, reader)
                    except PixelProblem as problem:
                        plan.problem = str(problem)
                if plan.problem is not None:
                    entry = {"role": plan.role, "series_ids": [m.series_id for m in plan.members]}
                    record["skipped"].append({**entry, "reason": plan.problem})
                    for m in plan.members:
                        rows.append(_row(m, case, "skipped", "", plan.problem))
                    continue
                file_name = f"{plan.name}.nii.gz"
                write_image(image, staging / file_name)
                written.append(file_name)
                if plan.layout.axis == "b":
                    write_text(
                        " ".join(_number_text(b) for b in plan.layout.values) + "\n",
                        staging / f"{plan.name}.bval",
                    )
                    written.append(f"{plan.name}.bval")
                    description["values_file"] = f"{plan.name}.bval"
                if plan.layout.axis == "time":
                    write_text(
                        " ".join(_number_text(t) for t in plan.layout.values) + "\n",
                        staging / f"{plan.name}.times",
                    )
                    written.append(f"{plan.name}.times")
                    description["values_file"] = f"{plan.name}.times"
                token = tokens.get(plan.members[0].series.first.frame_of_reference)
                if token:
                    description["frame_of_reference"] = token
                record["files"][file_name] = description
                case_result.written[plan.name] = file_name
                for m in plan.members:
                    rows.append(_row(m, case, "written", file_name, m.reason))
            for mask in masks:
                problem = mask.problem
                if problem is None and mask.image.problem is not None:
                    problem = f"its image {mask.image.name} was not written ({mask.image.problem})"
                if problem is None:
                    step(1.0, f"study {number + 1}: {mask.name}")
                    try:
                        image, description = mask_image(mask)
                    except (ContourProblem, SegProblem) as error:
                        problem = str(error)
                if problem is not None:
                    entry = {"role": mask.kind, "series_ids": [mask.info.series_id]}
                    record["skipped"].append({**entry, "reason": problem})
                    rows.append(_row(mask.info, case, "skipped", "", problem))
                    continue
                file_name = f"{mask.name}.nii.gz"
                write_image(image, staging / file_name)
                written.append(file_name)
                token = tokens.get(mask.info.series.first.frame_of_reference) or tokens.get(
                    mask.image.members[0].series.first.frame_of_reference
                )
                if token:
                    description["frame_of_reference"] = token
                record["files"][file_name] = description
                case_result.written[mask.name] = file_name
                rows.append(_row(mask.info, case, "written", file_name, mask.info.reason))
            if good or record["skipped"]:
                write_json(record, staging / "case.json")
                written.append("case.json")
                _install_case(staging, output / case, written)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        case_result.skipped = record["skipped"]
        cases.append(case_result)
    progress(1.0, f"assembled {len(cases)} studies")
    return AssemblyResult(cases, rows)


def _row(info: SeriesInfo, case: str | None, status: str, output: str, reason: str) -> dict:
    return {
        "series_id": info.series_id,
        "case": case or "",
        "role": info.role,
        "status": status,
        "output": output,
        "reason": reason,
    }


REPORT_COLUMNS = ("series_id", "case", "role", "status", "output", "reason")
