"""Scan a folder of DICOM files: series, their features, proposed roles and checks.

:func:`scan_folder` walks a folder (any nesting, any file names), reads every header,
groups files by study and series, describes each series, proposes its role with the rule
table and checks that the series can be assembled for that role (:func:`plan_study`, the
same planning :mod:`primage.dicom.assemble` uses). Files that are not DICOM, truncated
files and series that cannot be assembled are reported with a reason; nothing raises.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from primage.dicom.headers import DicomFileProblem, FileHeader, read_header
from primage.dicom.masks import plan_masks
from primage.dicom.pet import SuvFactor, SuvRefused, suv_factor
from primage.dicom.rules import classify, load_rules, rule_reason
from primage.dicom.series import (
    Layout,
    LayoutProblem,
    Series,
    cluster_positions,
    distinct_orientations,
    first_time,
    group_series,
    orientation_label,
    volume_layout,
)
from primage.progress import ProgressCallback, no_progress

#: Roles written to a case folder, with the file stem of their primary series.
ASSEMBLED_ROLES = ("t2w", "t1w", "t1w_post", "dwi", "adc_scanner", "dce", "ct", "pet")
#: Roles that are recognised and deliberately not assembled; "skip" is the user's choice.
NOT_ASSEMBLED_ROLES = ("localizer", "derived", "unknown", "skip")
#: 4th axis of the 4D roles.
ROLE_AXIS = {"dwi": "b", "dce": "time"}
#: Roles whose series of one study on the same grid are merged into one 4D volume.
MERGED_ROLES = ("dce",)


@dataclass
class SeriesInfo:
    """One series of a scan: its files, features (for the rules) and inventory summary."""

    series: Series
    study_index: int
    series_id: str
    features: dict
    summary: dict
    grid_key: tuple | None
    series_time: int | None
    proposed_role: str = "unknown"
    rule: str = ""
    role: str = "unknown"
    output: str = ""
    status: str = "ok"
    reason: str = ""
    rule_reason: str = ""  # why the proposed role's series are not used (from the rule)

    @property
    def uid(self) -> str:
        return self.series.series_uid


@dataclass
class Plan:
    """One output of a study: a role, its output stem and the series that form it."""

    role: str
    members: list[SeriesInfo]
    name: str | None = None
    layout: Layout | None = None
    problem: str | None = None
    suv: SuvFactor | None = None


@dataclass
class ScanResult:
    """Everything a scan found: series grouped by study, and files it could not use."""

    folder: Path
    studies: dict[str, list[SeriesInfo]]
    skipped_files: list[tuple[str, str]] = field(default_factory=list)

    @property
    def series(self) -> list[SeriesInfo]:
        return [info for infos in self.studies.values() for info in infos]


def find_files(folder: str | Path) -> list[Path]:
    """Every regular file under ``folder`` (any nesting), sorted; hidden files included.

    Symbolic links to folders and files are followed (archives often link study folders
    into one tree); a folder reached twice (a link loop, or two links to one folder) is
    walked once.
    """
    folder = Path(folder)
    found = []
    seen: set[str] = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            if path.is_file():
                found.append(path)
    return found


def read_headers(
    paths: list[Path], folder: Path | None = None, progress: ProgressCallback | None = None
) -> tuple[list[FileHeader], list[tuple[str, str]]]:
    """Headers of the DICOM files among ``paths``; others as (relative path, reason)."""
    progress = progress or no_progress
    headers, skipped = [], []
    for number, path in enumerate(paths):
        if number % 50 == 0:
            progress(number / max(len(paths), 1), f"reading headers ({number}/{len(paths)})")
        try:
            headers.append(read_header(path))
        except DicomFileProblem as problem:
            relative = os.path.relpath(path, folder) if folder else str(path)
            skipped.append((relative, str(problem)))
    progress(1.0, f"read {len(headers)} DICOM files")
    return headers, skipped


def scan_folder(
    folder: str | Path, *, rules: dict | None = None, progress: ProgressCallback | None = None
) -> ScanResult:
    """Scan ``folder``: series by study with proposed roles, checks and skipped files."""
    folder = Path(folder)
    headers, skipped = read_headers(find_files(folder), folder, progress)
    return scan_headers(headers, folder=folder, skipped=skipped, rules=rules)


def scan_files(paths: list[str | Path], *, rules: dict | None = None) -> ScanResult:
    """Scan an explicit list of files (e.g. Slicer's ``dicomDatabase.filesForSeries``)."""
    headers, skipped = read_headers([Path(p) for p in paths])
    return scan_headers(headers, folder=Path("."), skipped=skipped, rules=rules)


def scan_headers(
    headers: list[FileHeader],
    *,
    folder: Path,
    skipped: list[tuple[str, str]] | None = None,
    rules: dict | None = None,
) -> ScanResult:
    """Group, describe, classify and check already-read headers."""
    rules = rules or load_rules()
    by_study: dict[str, list[Series]] = defaultdict(list)
    for series in group_series(headers):
        by_study[series.study_uid].append(series)
    # Studies in time order (then UID) so study indices are stable for a given folder.
    order = sorted(by_study, key=lambda uid: (by_study[uid][0].first.study_datetime, uid))
    studies: dict[str, list[SeriesInfo]] = {}
    for study_index, study_uid in enumerate(order, start=1):
        infos = [
            describe_series(series, study_index, f"s{study_index:02d}-{number:03d}")
            for number, series in enumerate(by_study[study_uid], start=1)
        ]
        add_dynamic_groups(infos)
        for info in infos:
            info.proposed_role, info.rule = classify(info.features, rules)
            info.rule_reason = rule_reason(info.rule, rules)
            info.role = info.proposed_role
        check_study(infos)
        studies[study_uid] = infos
    return ScanResult(folder, studies, list(skipped or []))


# --- describing a series ------------------------------------------------------------------


def _number(value) -> float | None:
    if isinstance(value, list):
        value = value[0] if value else None
    try:
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None


def _join(values) -> str:
    if values is None:
        return ""
    if isinstance(values, list):
        return "\\".join(str(v) for v in values)
    return str(values)


def _format(value: float) -> str:
    return np.format_float_positional(float(value), trim="-", precision=6)


def describe_series(series: Series, study_index: int, series_id: str) -> SeriesInfo:
    """Features (for the rule table) and inventory summary of one series."""
    first = series.first
    attributes = first.attributes
    frames = series.frames
    orientations = distinct_orientations(frames)
    slices = frames_per_position = None
    check_message = ""
    grid_key = None
    if frames and len(orientations) == 1:
        try:
            positions = cluster_positions(frames)
            slices = len(positions.distances)
            frames_per_position = max(len(group) for group in positions.members)
            f0 = frames[0]
            grid_key = (
                orientations[0],
                f0.rows,
                f0.columns,
                tuple(round(s, 3) for s in f0.pixel_spacing),
                round(float(positions.distances[0]), 1),
                round(float(positions.distances[-1]), 1),
                slices,
            )
        except LayoutProblem as problem:
            check_message = str(problem)
    b_values = sorted({round(f.b_value, 2) for f in frames if f.b_value is not None})
    b_sources = sorted({f.b_source for f in frames if f.b_source})
    conflicts = sorted({f.b_conflict for f in frames if f.b_conflict})
    series_time, time_source = first_time(frames)
    time_points, times = 1, []
    if frames_per_position and frames_per_position > 1 and len(b_values) < 2:
        try:
            layout = volume_layout(frames, "time")
            time_points, times, time_source = len(layout.values), layout.values, layout.source
        except LayoutProblem:
            time_points = 1
    description = attributes.get("SeriesDescription") or ""
    protocol = attributes.get("ProtocolName") or ""
    sequence = attributes.get("SequenceName") or ""
    features = {
        "modality": series.modality,
        "manufacturer": attributes.get("Manufacturer") or "",
        "description": description,
        "protocol": protocol,
        "sequence_name": sequence,
        "text": " | ".join(t for t in (description, protocol, sequence) if t),
        "image_type": list(first.image_type),
        "image_type_value1": first.image_type[0] if first.image_type else "",
        "has_pixels": first.has_pixels,
        "sop_class": first.sop_class,
        "samples_per_pixel": _number(attributes.get("SamplesPerPixel")),
        "photometric": str(attributes.get("PhotometricInterpretation") or "").upper(),
        "conversion_type": attributes.get("ConversionType") or None,
        "burned_in_annotation": str(attributes.get("BurnedInAnnotation") or "").upper(),
        "units": str(attributes.get("Units") or "").upper(),
        "rows": frames[0].rows if frames else None,
        "columns": frames[0].columns if frames else None,
        "echo_time_ms": _number(attributes.get("EchoTime")),
        "repetition_time_ms": _number(attributes.get("RepetitionTime")),
        "inversion_time_ms": _number(attributes.get("InversionTime")),
        "contrast_agent": (attributes.get("ContrastBolusAgent") or "").strip() or None,
        "orientations": len(orientations),
        "slices": slices,
        "frames_per_position": frames_per_position,
        "b_value_count": len(b_values),
        "b_value_max": max(b_values) if b_values else None,
        "time_points": time_points,
        "dynamic_series": 1,
        "dynamic_interval_s": None,
        "sequence_signature": (
            attributes.get("SequenceName"),
            _join(attributes.get("ScanningSequence")),
            _number(attributes.get("EchoTime")),
            _number(attributes.get("RepetitionTime")),
            _number(attributes.get("FlipAngle")),
        ),
    }
    f0 = frames[0] if frames else None
    spacing = ""
    if frames and not check_message and slices and slices > 1:
        try:
            layout = volume_layout(
                [group for group in cluster_positions(frames).members for group in group[:1]],
                spacing_between=_number(attributes.get("SpacingBetweenSlices")),
            )
            spacing = _format(layout.geometry.spacing[2])
            check_message = layout.slice_check.message
        except LayoutProblem as problem:
            check_message = str(problem)
    elif len(orientations) > 1:
        check_message = f"{len(orientations)} orientations"
    summary = {
        "series_number": series.series_number if series.series_number is not None else "",
        "modality": series.modality,
        "manufacturer": features["manufacturer"],
        "description": description,
        "protocol": protocol,
        "image_type": "\\".join(first.image_type),
        "orientation": "mixed"
        if len(orientations) > 1
        else orientation_label(f0.orientation if f0 else None),
        "rows": f0.rows if f0 else "",
        "columns": f0.columns if f0 else "",
        "slices": slices or "",
        "frames": len(frames),
        "frames_per_position": frames_per_position or "",
        "pixel_spacing_mm": " ".join(_format(s) for s in f0.pixel_spacing)
        if f0 and f0.pixel_spacing
        else "",
        "slice_spacing_mm": spacing,
        "slice_check": check_message,
        "acquisition_time": _time_of_day(frames),
        "time_points": time_points,
        "times_s": " ".join(_format(t) for t in times),
        "time_source": time_source or "",
        "b_values": " ".join(_format(b) for b in b_values),
        "b_value_source": "; ".join(b_sources),
        "files": len(series.headers),
    }
    info = SeriesInfo(series, study_index, series_id, features, summary, grid_key, series_time)
    if conflicts:
        summary["b_value_source"] = conflicts[0]
    return info


def _time_of_day(frames) -> str:
    values = [f.times.get("acquisition time (0008,0032)") for f in frames]
    values = [v for v in values if v is not None]
    if not values:
        return ""
    seconds = (min(values) // 1_000_000) % 86400
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def add_dynamic_groups(infos: list[SeriesInfo]) -> None:
    """Find series acquired one per time point (split DCE) and set their group features.

    Series of one study with the same grid and sequence parameters, one frame per slice
    position, no b-values and distinct acquisition times form a group: each member gets
    ``dynamic_series`` (group size) and ``dynamic_interval_s`` (median time between them).
    """
    groups: dict[tuple, list[SeriesInfo]] = defaultdict(list)
    for info in infos:
        f = info.features
        if (
            info.grid_key is None
            or f["frames_per_position"] != 1
            or f["b_value_count"] >= 2
            or info.series_time is None
        ):
            continue
        groups[(info.grid_key, f["modality"], f["sequence_signature"])].append(info)
    for members in groups.values():
        times = sorted({m.series_time for m in members})
        if len(times) < 2 or len(times) != len(members):
            continue
        interval = float(np.median(np.diff(times))) / 1e6
        for member in members:
            member.features["dynamic_series"] = len(members)
            member.features["dynamic_interval_s"] = interval


# --- planning and checking ----------------------------------------------------------------


def _voxels(info: SeriesInfo) -> int:
    s = info.summary
    try:
        return int(s["rows"] or 0) * int(s["columns"] or 0) * int(s["slices"] or 0)
    except (TypeError, ValueError):
        return 0


def plan_study(infos: list[SeriesInfo]) -> list[Plan]:
    """The outputs of one study for the series' current ``role`` values.

    Each assembled role gets one plan per series, except the merged roles (DCE), whose
    series on the same grid form one plan. A plan that cannot be made correctly carries
    ``problem``; among the good plans of a role the largest grid (then lowest series
    number) gets the role's own name (``t2w``), the others ``t2w_2``, ``t2w_3``, ...
    """
    plans: list[Plan] = []
    for role in ASSEMBLED_ROLES:
        members = [info for info in infos if info.role == role]
        if not members:
            continue
        if role in MERGED_ROLES:
            groups: dict = defaultdict(list)
            for info in members:
                groups[info.grid_key if info.grid_key is not None else info.uid].append(info)
            role_plans = [Plan(role, group) for group in groups.values()]
        else:
            role_plans = [Plan(role, [info]) for info in members]
        for plan in role_plans:
            _build(plan)
        good = [p for p in role_plans if p.problem is None]
        good.sort(
            key=lambda p: (
                -len(p.members),
                -max(_voxels(m) for m in p.members),
                min(m.series.series_number or 0 for m in p.members),
            )
        )
        for number, plan in enumerate(good, start=1):
            plan.name = role if number == 1 else f"{role}_{number}"
        plans.extend(role_plans)
    return plans


def _build(plan: Plan) -> None:
    """Lay out the plan's frames (no pixel data) and compute what the role needs."""
    problems = [p for m in plan.members for p in m.series.problems]
    if problems:
        plan.problem = problems[0]
        return
    if not all(m.series.first.has_pixels for m in plan.members):
        plan.problem = "no image pixel data"
        return
    frames = [f for m in plan.members for f in m.series.frames]
    axis = ROLE_AXIS.get(plan.role, "none")
    spacing_between = _number(plan.members[0].series.first.attributes.get("SpacingBetweenSlices"))
    try:
        plan.layout = volume_layout(frames, axis, spacing_between=spacing_between)
    except LayoutProblem as problem:
        plan.problem = str(problem)
        if plan.role == "dce" and "frame times" in plan.problem:
            plan.problem = "DCE without usable times: " + plan.problem
        return
    if plan.role == "dwi" and len(plan.layout.values) < 2:
        plan.problem = "DWI needs at least two b-values"
    elif plan.role == "dce" and len(plan.layout.values) < 2:
        plan.problem = "DCE needs at least two time points"
    elif plan.role == "pet":
        acquisition = [
            f.times[k] for f in frames for k in f.times if k.startswith("acquisition time")
        ]
        try:
            plan.suv = suv_factor(plan.members[0].series.first.pet, acquisition)
        except SuvRefused as refused:
            plan.problem = f"SUV refused: {refused}"


def not_used_reason(info: SeriesInfo) -> str:
    """Why a series of a role that is not assembled is not used."""
    if info.role == "skip":
        return "skip: set in the inventory"
    if info.role == info.proposed_role and info.rule_reason:
        return f"{info.role}: {info.rule_reason}"
    return f"{info.role}: not assembled"


def check_study(infos: list[SeriesInfo], tumour_pattern: str | None = None) -> list[Plan]:
    """Plan the study for the current roles and set each series' output, status, reason.

    Returns the image plans; mask series (RT Structure Sets, SEG) get the output and
    reason of their :func:`primage.dicom.masks.plan_masks` plan.
    """
    plans = plan_study(infos)
    for info in infos:
        info.output, info.status, info.reason = "", "ok", ""
        notes = list(info.series.notes)
        if info.role in NOT_ASSEMBLED_ROLES:
            info.status = "error" if info.series.problems else "ok"
            info.reason = "; ".join(info.series.problems + notes) or not_used_reason(info)
    for mask in plan_masks(infos, plans, tumour_pattern):
        info = mask.info
        if mask.problem:
            info.status, info.reason = "error", mask.problem
            continue
        info.output = mask.name or ""
        chosen = ", ".join(f"{label}: {name}" for label, _index, name in mask.labels)
        unused = f"; not used: {', '.join(mask.unused)}" if mask.unused else ""
        info.reason = f"on {mask.image.name}; labels {chosen}{unused}"
    for plan in plans:
        for member in plan.members:
            if plan.problem:
                member.status, member.reason = "error", plan.problem
            else:
                member.output = plan.name or ""
                merged = len(plan.members)
                notes = [f"merged with {merged - 1} other series"] if merged > 1 else []
                member.reason = "; ".join(notes + member.series.notes)
    return plans
