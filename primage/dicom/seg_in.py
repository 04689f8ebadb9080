"""DICOM Segmentation objects in (binary, fractional and label map), read with highdicom.

Each selected segment is read as a volume (``Segmentation.get_volume``, fractional values
scaled to 0-1), placed on the target image grid by physical position (nearest neighbour:
exact when the SEG was made on that grid, as SEGs referencing a series are) and, when
fractional, thresholded at :data:`FRACTION_THRESHOLD` (probability or occupancy >= 0.5 is
tumour). highdicom is imported when a SEG is read, so the rest of ``primage.dicom`` does
not need it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from primage.dicom.series import Geometry

#: Fraction (probability / occupancy) from which a voxel of a fractional SEG is inside.
FRACTION_THRESHOLD = 0.5
#: Largest distance (mm) between a target voxel centre and a SEG voxel centre for the
#: placement to count as "same grid" (else it is recorded as resampled).
SAME_GRID_MM = 1e-3


class SegProblem(Exception):
    """A SEG that cannot be read or placed on the grid; the message says why."""


@dataclass
class Segment:
    """One segment of a SEG object: its number and label."""

    number: int
    label: str


def _highdicom():
    try:
        import highdicom
    except ImportError:  # pragma: no cover - installed with primage
        raise SegProblem("reading DICOM SEG needs highdicom (pip install highdicom)") from None
    return highdicom


def read_segments(path: str):
    """``(segmentation, segments, kind)``: the highdicom object, its segments in number
    order, and ``"BINARY"``, ``"FRACTIONAL"`` or ``"LABELMAP"``."""
    highdicom = _highdicom()
    try:
        segmentation = highdicom.seg.segread(path)
    except Exception as error:  # noqa: BLE001 - highdicom raises many types on bad input
        raise SegProblem(f"not a readable DICOM SEG ({type(error).__name__}: {error})") from None
    segments = [
        Segment(int(item.SegmentNumber), str(item.get("SegmentLabel") or "").strip())
        for item in segmentation.SegmentSequence
    ]
    segments.sort(key=lambda s: s.number)
    kind = str(getattr(segmentation.segmentation_type, "value", segmentation.segmentation_type))
    return segmentation, segments, kind.upper()


def _reference(geometry: Geometry) -> sitk.Image:
    image = sitk.Image([int(n) for n in geometry.size], sitk.sitkUInt8)
    image.SetOrigin(geometry.origin)
    image.SetSpacing(geometry.spacing)
    image.SetDirection(geometry.direction)
    return image


def _same_grid(source: sitk.Image, target: sitk.Image) -> bool:
    """Whether every target voxel centre is (within SAME_GRID_MM) a source voxel centre."""
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in target.GetSize()], indexing="ij"))
    for index in corners.reshape(3, -1).T:
        point = target.TransformIndexToPhysicalPoint([int(v) for v in index])
        continuous = np.asarray(source.TransformPhysicalPointToContinuousIndex(point))
        nearest = source.TransformContinuousIndexToPhysicalPoint(np.round(continuous).tolist())
        if np.linalg.norm(np.subtract(nearest, point)) > SAME_GRID_MM:
            return False
    return True


def segment_mask(
    segmentation, number: int, kind: str, geometry: Geometry
) -> tuple[np.ndarray, bool]:
    """Segment ``number`` on the target grid (array [k, j, i], bool), and whether the SEG's
    grid is the target's (else it was resampled by nearest neighbour)."""
    try:
        volume = segmentation.get_volume(segment_numbers=[number], combine_segments=False)
        volume = volume.squeeze_channel()
        source = volume.to_simpleitk()
    except Exception as error:  # noqa: BLE001
        raise SegProblem(
            f"segment {number} does not form a regular volume ({type(error).__name__}: {error})"
        ) from None
    target = _reference(geometry)
    source = sitk.Cast(source, sitk.sitkFloat32)
    placed = sitk.Resample(source, target, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0)
    values = sitk.GetArrayFromImage(placed)
    inside = values >= FRACTION_THRESHOLD if kind == "FRACTIONAL" else values > 0
    return inside, _same_grid(source, target)
