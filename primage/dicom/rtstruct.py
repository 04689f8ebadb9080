"""RT Structure Sets in: ROI contours rasterised onto the voxel grid of an image series.

Method (the same as IBSI's reference conversion of the soft-tissue-sarcoma cases, which
it reproduces voxel for voxel):

1. Every contour point (LPS, mm) goes to continuous voxel indices of the target grid,
   ``(i, j, k) = diag(1/spacing) · directionᵀ · (p - origin)``.
2. A CLOSED_PLANAR contour belongs to the slice ``round(k)``; its points must lie within
   a quarter of a slice of one plane parallel to the slices (else the mask is refused: the
   contours were drawn on differently oriented slices), and contours off a slice centre
   by more than a quarter of a slice are noted.
3. In that slice, a voxel centre ``(i, j)`` is inside when a ray from it towards -i
   crosses the contour polygons an odd number of times (even-odd rule). All contours of
   one ROI on one slice are counted together, so a contour inside another is a hole and
   overlapping contours cancel (XOR). An edge counts at row ``j`` when
   ``min(y1, y2) <= j < max(y1, y2)`` (half-open, so a vertex on the row counts once).

POINT and OPEN_PLANAR contours enclose nothing and are ignored (noted).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pydicom

from primage.dicom.series import Geometry

#: Largest spread of one contour's points across the slice normal (in slices): planar
#: contours drawn on the grid's slices spread only by rounding; tilted ones by far more.
PLANE_TOLERANCE_SLICES = 0.25
#: A contour further than this from a slice centre (in slices) is noted.
OFF_SLICE_NOTE_SLICES = 0.25


class ContourProblem(Exception):
    """Contours that cannot be rasterised onto a grid; the message says why."""


@dataclass
class Roi:
    """One ROI of a structure set: its number, name and contours (LPS, mm)."""

    number: int
    name: str
    contours: list[np.ndarray] = field(default_factory=list)  # (n, 3) each, closed planar
    ignored: int = 0  # POINT / OPEN_PLANAR contours and contours with < 3 points


def read_structure_set(path: str) -> list[Roi]:
    """ROIs of an RT Structure Set file in ROI-number order, with their closed contours."""
    dataset = pydicom.dcmread(path)
    names = {
        int(item.ROINumber): str(item.get("ROIName") or "").strip()
        for item in dataset.get("StructureSetROISequence") or []
    }
    rois = {number: Roi(number, name) for number, name in names.items()}
    for item in dataset.get("ROIContourSequence") or []:
        number = int(item.get("ReferencedROINumber") or 0)
        roi = rois.setdefault(number, Roi(number, ""))
        for contour in item.get("ContourSequence") or []:
            kind = str(contour.get("ContourGeometricType") or "CLOSED_PLANAR").upper()
            points = np.asarray(contour.get("ContourData") or [], float).reshape(-1, 3)
            if kind != "CLOSED_PLANAR" or len(points) < 3:
                roi.ignored += 1
                continue
            roi.contours.append(points)
    return [rois[number] for number in sorted(rois)]


def _continuous_index(points: np.ndarray, geometry: Geometry) -> np.ndarray:
    direction = np.asarray(geometry.direction, float).reshape(3, 3)
    spacing = np.asarray(geometry.spacing, float)
    return ((points - np.asarray(geometry.origin, float)) @ direction) / spacing


def fill_polygons(polygons: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Voxel centres inside ``polygons`` (even-odd rule) on a (rows, columns) slice.

    ``polygons`` are (n, 2) arrays of continuous (column i, row j) indices; a voxel centre
    ``(i, j)`` is inside when the polygons' edges cross the ray from it towards -i an odd
    number of times.
    """
    rows, columns = shape
    toggles = np.zeros((rows, columns + 1), np.int32)
    for polygon in polygons:
        x1, y1 = polygon[:, 0], polygon[:, 1]
        x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
        low, high = np.minimum(y1, y2), np.maximum(y1, y2)
        first = max(int(np.ceil(low.min())), 0)
        last = min(int(np.ceil(high.max())) - 1, rows - 1)
        if last < first:
            continue
        row = np.arange(first, last + 1, dtype=float)[:, None]
        crossing = (low[None, :] <= row) & (row < high[None, :])
        r, e = np.nonzero(crossing)
        x = x1[e] + (row[r, 0] - y1[e]) * (x2[e] - x1[e]) / (y2[e] - y1[e])
        # Columns i > x see this crossing on their ray: toggle from floor(x) + 1 on.
        start = np.clip(np.floor(x).astype(np.int64) + 1, 0, columns)
        np.add.at(toggles, (r + first, start), 1)
    return (np.cumsum(toggles[:, :columns], axis=1) % 2).astype(bool)


def rasterise(contours: list[np.ndarray], geometry: Geometry) -> tuple[np.ndarray, list[str]]:
    """The voxels of the grid inside ``contours`` (array [k, j, i], bool) and notes.

    Raises :class:`ContourProblem` when a contour is not parallel to the grid's slices.
    """
    columns, rows, slices = geometry.size
    mask = np.zeros((slices, rows, columns), bool)
    by_slice: dict[int, list[np.ndarray]] = {}
    outside = off_centre = 0
    for points in contours:
        index = _continuous_index(points, geometry)
        spread = float(index[:, 2].max() - index[:, 2].min())
        if spread > PLANE_TOLERANCE_SLICES:
            raise ContourProblem(
                f"a contour spans {spread:.2f} slices across the slice normal: it was not drawn "
                "on slices parallel to this image's; not rasterised"
            )
        level = float(np.median(index[:, 2]))
        k = int(np.round(level))
        if not 0 <= k < slices:
            outside += 1
            continue
        if abs(level - k) > OFF_SLICE_NOTE_SLICES:
            off_centre += 1
        by_slice.setdefault(k, []).append(index[:, :2])
    for k, polygons in by_slice.items():
        mask[k] = fill_polygons(polygons, (rows, columns))
    notes = []
    if outside:
        notes.append(f"{outside} contour(s) outside the image's slices ignored")
    if off_centre:
        notes.append(f"{off_centre} contour(s) between slices put on the nearest slice")
    return mask, notes
