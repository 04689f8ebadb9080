"""Series: grouping files, slice geometry, and the layout of 3D/4D volumes.

Geometry follows the DICOM image plane module: the row direction cosine ``r`` (along
increasing column index), the column cosine ``c`` (along increasing row index) and the
slice normal ``n = r x c``. Slices are sorted by their position along ``n``; the volume
gets origin = position of the first slice, direction columns (r, c, n) and spacing
(column spacing, row spacing, median slice step) in mm, so every voxel sits where the
DICOM header puts it. Missing slices, irregular steps and in-plane shifts (gantry tilt)
are reported and the series is refused: nothing is interpolated.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from primage.dicom.headers import FileHeader, Frame, tag_sources

#: Two slice positions closer than this along the normal are the same position (mm).
POSITION_TOLERANCE_MM = 0.01
#: Largest relative deviation of a slice step from the median before it is reported.
STEP_TOLERANCE = 0.01


class LayoutProblem(Exception):
    """The frames cannot form the requested volume(s); the message says why."""


@dataclass
class Series:
    """The files of one DICOM series (one SeriesInstanceUID) and their frames."""

    study_uid: str
    series_uid: str
    headers: list[FileHeader]
    frames: list[Frame] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # stop assembly
    notes: list[str] = field(default_factory=list)  # informative

    @property
    def first(self) -> FileHeader:
        return self.headers[0]

    @property
    def modality(self) -> str:
        return self.first.attributes.get("Modality") or ""

    @property
    def series_number(self) -> int | None:
        value = self.first.attributes.get("SeriesNumber")
        try:
            return None if value is None else int(value)
        except (TypeError, ValueError):
            return None


def group_series(headers: list[FileHeader]) -> list[Series]:
    """Group file headers by series UID; drop duplicate copies; flag UID collisions.

    Two different series sharing one SeriesInstanceUID (another study, modality, series
    number, description or image size) cannot be told apart safely: the series is
    marked with a problem and assembly skips it.
    """
    by_uid: dict[str, list[FileHeader]] = defaultdict(list)
    for header in headers:
        by_uid[header.series_uid].append(header)
    result = []
    for uid, members in by_uid.items():
        members.sort(key=lambda h: (h.sop_uid, h.path))
        unique, seen = [], set()
        for header in members:
            if header.sop_uid in seen:
                continue
            seen.add(header.sop_uid)
            unique.append(header)
        series = Series(unique[0].study_uid, uid, unique)
        if len(unique) < len(members):
            series.notes.append(f"{len(members) - len(unique)} duplicate file(s) ignored")
        signatures = {
            (
                h.study_uid,
                h.attributes.get("Modality"),
                h.attributes.get("SeriesNumber"),
                h.attributes.get("SeriesDescription"),
                tuple((f.rows, f.columns) for f in h.frames[:1]),
            )
            for h in unique
        }
        if len(signatures) > 1:
            numbers = sorted({str(s[2]) for s in signatures})
            series.problems.append(
                f"series UID shared by {len(signatures)} different series (series numbers "
                f"{', '.join(numbers)}); cannot be separated safely"
            )
        for header in unique:
            if header.problem:
                series.problems.append(f"{header.problem} ({header.sop_uid[-12:]})")
            series.frames.extend(header.frames)
        result.append(series)
    result.sort(key=lambda s: (s.study_uid, s.series_number or 0, s.series_uid))
    return result


# --- geometry -----------------------------------------------------------------------------


@dataclass
class Geometry:
    """Voxel grid of a stack of slices (LPS, mm) in SimpleITK terms."""

    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    direction: tuple[float, ...]  # 3x3 row-major, columns r, c, n
    size: tuple[int, int, int]


def _unit_axes(orientation) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    row = np.asarray(orientation[:3], float)
    column = np.asarray(orientation[3:], float)
    if not (np.isfinite(row).all() and np.isfinite(column).all()):
        raise LayoutProblem("image orientation has non-finite values")
    if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(column) - 1) > 1e-3:
        raise LayoutProblem("image orientation cosines are not unit vectors")
    if abs(row @ column) > 1e-3:
        raise LayoutProblem("image orientation row and column cosines are not orthogonal")
    # DS values carry ~1e-6 rounding: re-orthonormalise so SimpleITK gets a rotation.
    row = row / np.linalg.norm(row)
    column = column - (column @ row) * row
    column /= np.linalg.norm(column)
    return row, column, np.cross(row, column)


def orientation_label(orientation) -> str:
    """``axial``, ``coronal``, ``sagittal`` or ``oblique`` from the slice normal."""
    if orientation is None:
        return "unknown"
    normal = np.abs(
        np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:], float))
    )
    axis = int(np.argmax(normal))
    if normal[axis] < 0.9:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


def distinct_orientations(frames: list[Frame]) -> list[tuple]:
    """Distinct image orientations (rounded to 1e-3) among ``frames``."""
    found = []
    for frame in frames:
        if frame.orientation is None:
            continue
        key = tuple(round(v, 3) + 0.0 for v in frame.orientation)
        if key not in found:
            found.append(key)
    return found


def check_common_plane(frames: list[Frame]) -> None:
    """Refuse frames without position/orientation or with different planes or pixel grids."""
    if any(f.position is None or f.orientation is None for f in frames):
        raise LayoutProblem("frames without ImagePositionPatient / ImageOrientationPatient")
    if any(f.pixel_spacing is None for f in frames):
        raise LayoutProblem("frames without PixelSpacing")
    orientations = distinct_orientations(frames)
    if len(orientations) > 1:
        raise LayoutProblem(f"frames in {len(orientations)} different orientations")
    grids = {(f.rows, f.columns, tuple(round(s, 4) for s in f.pixel_spacing)) for f in frames}
    if len(grids) > 1:
        raise LayoutProblem(f"frames with {len(grids)} different pixel grids (size or spacing)")


@dataclass
class Positions:
    """Frames clustered by slice position along the normal, ascending."""

    distances: np.ndarray  # mm along the normal, one per position
    members: list[list[Frame]]  # frames at each position


def cluster_positions(frames: list[Frame]) -> Positions:
    """Group frames by slice position (along the slice normal), ascending."""
    check_common_plane(frames)
    row, column, normal = _unit_axes(frames[0].orientation)
    distance = np.array([normal @ np.asarray(f.position) for f in frames])
    order = np.argsort(distance, kind="stable")
    distances, members = [], []
    for index in order:
        if members and distance[index] - distances[-1] <= POSITION_TOLERANCE_MM:
            members[-1].append(frames[index])
        else:
            distances.append(distance[index])
            members.append([frames[index]])
    # Every slice must lie on the line through the first along the normal.
    first = np.asarray(members[0][0].position)
    for group in members[1:]:
        delta = np.asarray(group[0].position) - first
        shift = max(abs(row @ delta), abs(column @ delta))
        if shift > POSITION_TOLERANCE_MM + 1e-3 * np.linalg.norm(delta):
            raise LayoutProblem(
                f"slices are shifted in-plane by up to {shift:.2f} mm (gantry tilt or a "
                "non-parallel stack); not resampled"
            )
    return Positions(np.asarray(distances), members)


@dataclass
class SliceCheck:
    """Result of checking the steps between slice positions (mm)."""

    spacing: float | None
    message: str  # "regular", or what is wrong
    ok: bool


def check_slice_steps(distances: np.ndarray, fallback_spacing: float | None) -> SliceCheck:
    """Median slice step; missing slices and irregular steps are reported, not repaired."""
    if len(distances) < 2:
        return SliceCheck(fallback_spacing, "single slice", fallback_spacing is not None)
    steps = np.diff(distances)
    median = float(np.median(steps))
    missing = np.flatnonzero(steps > 1.5 * median)
    if missing.size:
        gaps = ", ".join(f"{steps[i]:.2f} mm after slice {i + 1}" for i in missing[:3]) + (
            " ..." if missing.size > 3 else ""
        )
        count = int(sum(round(steps[i] / median) - 1 for i in missing))
        return SliceCheck(
            median,
            f"missing slice(s): {count} slice(s) missing ({gaps}; step {median:.2f} mm); "
            "not interpolated",
            False,
        )
    deviation = float(np.max(np.abs(steps - median)))
    if deviation > max(STEP_TOLERANCE * median, POSITION_TOLERANCE_MM):
        return SliceCheck(
            median,
            f"irregular slice spacing: steps {steps.min():.3f}-{steps.max():.3f} mm; not resampled",
            False,
        )
    return SliceCheck(median, "regular", True)


def stack_geometry(slices: list[Frame], spacing: float) -> Geometry:
    """Geometry of one volume from its slices (sorted ascending along the normal)."""
    row, column, normal = _unit_axes(slices[0].orientation)
    direction = np.column_stack([row, column, normal])
    row_spacing, column_spacing = slices[0].pixel_spacing
    return Geometry(
        origin=tuple(float(v) for v in slices[0].position),
        spacing=(float(column_spacing), float(row_spacing), float(spacing)),
        direction=tuple(float(v) for v in direction.ravel()),
        size=(slices[0].columns, slices[0].rows, len(slices)),
    )


# --- volume layout --------------------------------------------------------------------------


@dataclass
class Layout:
    """How frames form volumes: ``volumes[v][k]`` is slice ``k`` of volume ``v``.

    ``values`` are the 4th-axis values (b in s/mm^2, or time in s from the first volume),
    empty for a 3D volume; ``source`` says where they came from.
    """

    volumes: list[list[Frame]]
    geometry: Geometry
    slice_check: SliceCheck
    axis: str  # "none", "b" or "time"
    values: list[float] = field(default_factory=list)
    source: str | None = None
    notes: list[str] = field(default_factory=list)


def _fallback_spacing(frames: list[Frame], spacing_between: float | None) -> float | None:
    if spacing_between:
        return float(spacing_between)
    return frames[0].slice_thickness


def volume_layout(
    frames: list[Frame], axis: str = "none", *, spacing_between: float | None = None
) -> Layout:
    """Arrange ``frames`` into volumes: ``axis`` "none" (3D), "b" (DWI) or "time" (DCE).

    Raises :class:`LayoutProblem` with the reason when they cannot form a regular grid
    (missing or irregular slices, unequal frames per position, no usable b-values/times).
    """
    if not frames:
        raise LayoutProblem("no image frames")
    positions = cluster_positions(frames)
    counts = sorted({len(group) for group in positions.members})
    if len(counts) > 1:
        raise LayoutProblem(
            f"unequal number of frames per slice position ({counts[0]}-{counts[-1]}): "
            "missing slice(s) in some volumes; not interpolated"
        )
    per_position = counts[0]
    check = check_slice_steps(positions.distances, _fallback_spacing(frames, spacing_between))
    if not check.ok:
        raise LayoutProblem(check.message if check.spacing else "single slice without spacing")
    notes: list[str] = []
    if axis == "none":
        if per_position > 1:
            raise LayoutProblem(
                f"{per_position} frames at each slice position (several echoes, b-values or "
                "time points?); a 3D volume needs one"
            )
        volumes = [[group[0] for group in positions.members]]
        layout = Layout(volumes, stack_geometry(volumes[0], check.spacing), check, axis)
    elif axis == "b":
        layout = _b_layout(positions, check)
    elif axis == "time":
        layout = _time_layout(positions, check)
    else:
        raise ValueError(f"unknown axis {axis!r}")
    layout.notes.extend(notes)
    return layout


def _b_layout(positions: Positions, check: SliceCheck) -> Layout:
    frames = [f for group in positions.members for f in group]
    conflicts = sorted({f.b_conflict for f in frames if f.b_conflict})
    if conflicts:
        raise LayoutProblem(conflicts[0])
    missing = sum(f.b_value is None for f in frames)
    if missing:
        raise LayoutProblem(f"b-value missing for {missing} of {len(frames)} frames")
    ordered = [
        sorted(
            group,
            key=lambda f: (f.b_value, f.gradient or (), f.temporal_index or 0, f.instance_number),
        )
        for group in positions.members
    ]
    volumes = [list(frames_v) for frames_v in zip(*ordered, strict=True)]
    values = []
    for index, volume in enumerate(volumes):
        bs = {f.b_value for f in volume}
        if len(bs) > 1:
            raise LayoutProblem(
                f"volume {index} mixes b-values {sorted(bs)}: some b-values miss slices"
            )
        values.append(float(volume[0].b_value))
    sources = sorted({f.b_source for f in frames if f.b_source})
    return Layout(
        volumes,
        stack_geometry(volumes[0], check.spacing),
        check,
        "b",
        values,
        "; ".join(sources),
    )


def _time_layout(positions: Positions, check: SliceCheck) -> Layout:
    frames = [f for group in positions.members for f in group]
    reasons = []
    for source in tag_sources()["time_sources"]:
        name = source["name"]
        absent = sum(name not in f.times for f in frames)
        if absent:
            reasons.append(f"{name}: missing in {absent} frames")
            continue
        ordered = [
            sorted(group, key=lambda f: (f.times[name], f.instance_number))
            for group in positions.members
        ]
        ties = any(
            a.times[name] == b.times[name]
            for group in ordered
            for a, b in zip(group, group[1:], strict=False)
        )
        if ties:
            reasons.append(f"{name}: equal at one slice position")
            continue
        volumes = [list(v) for v in zip(*ordered, strict=True)]
        starts = [min(f.times[name] for f in volume) for volume in volumes]
        if any(b <= a for a, b in zip(starts, starts[1:], strict=False)):
            reasons.append(f"{name}: does not order the volumes")
            continue
        # Each volume's frames must lie before the next volume starts (else frames of
        # different time points would be mixed up in one volume).
        ends = [max(f.times[name] for f in volume) for volume in volumes]
        if any(end >= start for end, start in zip(ends, starts[1:], strict=False)):
            reasons.append(f"{name}: volumes overlap in time")
            continue
        values = [(s - starts[0]) / 1e6 for s in starts]
        return Layout(
            volumes, stack_geometry(volumes[0], check.spacing), check, "time", values, name
        )
    if len(positions.members[0]) == 1:
        # One volume: times are informative only.
        volumes = [[group[0] for group in positions.members]]
        return Layout(
            volumes, stack_geometry(volumes[0], check.spacing), check, "time", [0.0], None
        )
    raise LayoutProblem("no usable frame times (" + "; ".join(reasons) + ")")


def first_time(frames: list[Frame]) -> tuple[int | None, str | None]:
    """Earliest time (microseconds) of the frames by the first time source all of them have."""
    for source in tag_sources()["time_sources"]:
        name = source["name"]
        if frames and all(name in f.times for f in frames):
            return min(f.times[name] for f in frames), name
    return None, None
