"""The one place where PRIMAGE converts between Slicer's RAS and ITK's LPS coordinates.

Slicer (MRML) stores positions in RAS (x: right, y: anterior, z: superior); ITK and
SimpleITK, like DICOM and the files on disk, use LPS (x: left, y: posterior, z: superior).
The two differ by ``F = diag(-1, -1, 1)``, which is its own inverse, so the same matrix
converts in both directions:

* points and displacement vectors: ``p_lps = F p_ras``;
* voxel grids: ``IJKToRAS = [[F D diag(s), F o], [0, 1]]`` for a SimpleITK image with
  origin ``o``, spacing ``s`` (mm) and direction ``D`` (LPS);
* linear transforms: ``M_lps = F4 M_ras F4`` with ``F4 = diag(-1, -1, 1, 1)``.

Transform direction: a SimpleITK transform, as used by ``sitk.Resample(moving, fixed, tx)``,
maps points of the fixed image to the moving image (LPS). A Slicer transform node that
aligns a moving volume placed under it with the fixed volume maps moving to fixed: its
"to parent" transform is the inverse of the SimpleITK transform, and its "from parent"
transform is the SimpleITK transform itself (in RAS). Slicer stores ITK transforms read
from files as "from parent" for this reason. Nothing else in PRIMAGE does these
conversions; :mod:`primage.mrml.transforms` and :mod:`primage.mrml.volumes` call these
functions.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

#: 3x3 matrix converting LPS to RAS coordinates (and back: it is its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
RAS_TO_LPS = LPS_TO_RAS
#: 4x4 homogeneous form of :data:`LPS_TO_RAS`.
LPS_TO_RAS_4X4 = np.diag([-1.0, -1.0, 1.0, 1.0])


def lps_to_ras_points(points: np.ndarray) -> np.ndarray:
    """Convert LPS points (or displacement vectors), shape ``(..., 3)`` in mm, to RAS."""
    points = np.asarray(points, dtype=float)
    if points.shape[-1] != 3:
        raise ValueError(f"points must have 3 coordinates in the last axis, got {points.shape}")
    return points * np.array([-1.0, -1.0, 1.0])


def ras_to_lps_points(points: np.ndarray) -> np.ndarray:
    """Convert RAS points (or displacement vectors), shape ``(..., 3)`` in mm, to LPS."""
    return lps_to_ras_points(points)  # F is its own inverse


def ijk_to_ras_from_geometry(origin, spacing, direction) -> np.ndarray:
    """4x4 IJK-to-RAS matrix of a grid given in LPS (origin mm, spacing mm, 3x3 direction)."""
    direction = np.asarray(direction, dtype=float).reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = LPS_TO_RAS @ direction @ np.diag(np.asarray(spacing, dtype=float))
    matrix[:3, 3] = LPS_TO_RAS @ np.asarray(origin, dtype=float)
    return matrix


def ijk_to_ras_from_sitk(image: sitk.Image) -> np.ndarray:
    """4x4 IJK-to-RAS matrix (Slicer's voxel-to-world mapping) of a 3D SimpleITK image."""
    if image.GetDimension() != 3:
        raise ValueError(f"a 3D image is expected, got {image.GetDimension()}D")
    return ijk_to_ras_from_geometry(image.GetOrigin(), image.GetSpacing(), image.GetDirection())


def sitk_geometry_from_ijk_to_ras(
    matrix: np.ndarray,
) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """Split a 4x4 IJK-to-RAS matrix into SimpleITK ``(origin, spacing, direction)`` (LPS).

    ``direction`` is the flattened 3x3 matrix (row by row) as ``sitk.Image.SetDirection``
    takes it; spacing (mm) is the length of each column.
    """
    matrix = np.asarray(matrix, dtype=float)
    if matrix.shape != (4, 4):
        raise ValueError(f"a 4x4 matrix is expected, got shape {matrix.shape}")
    axes_lps = RAS_TO_LPS @ matrix[:3, :3]
    spacing = np.linalg.norm(axes_lps, axis=0)
    if np.any(spacing <= 0) or not np.all(np.isfinite(spacing)):
        raise ValueError(f"IJK-to-RAS matrix has a zero or invalid axis: spacing {spacing}")
    direction = axes_lps / spacing
    origin = RAS_TO_LPS @ matrix[:3, 3]
    return tuple(origin.tolist()), tuple(spacing.tolist()), tuple(direction.ravel().tolist())


def grid_ras_from_lps(origin, direction) -> tuple[np.ndarray, np.ndarray]:
    """Origin (mm) and 3x3 direction of a grid in LPS converted to RAS (spacing unchanged).

    Grid axes keep their index order, so the direction is ``F D`` (not ``F D F``): this is
    how Slicer converts displacement-field and B-spline grids.
    """
    origin_ras = LPS_TO_RAS @ np.asarray(origin, dtype=float)
    direction_ras = LPS_TO_RAS @ np.asarray(direction, dtype=float).reshape(3, 3)
    return origin_ras, direction_ras


def grid_lps_from_ras(origin_ras, direction_ras) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`grid_ras_from_lps`: RAS grid origin and direction to LPS."""
    return grid_ras_from_lps(origin_ras, direction_ras)  # F is its own inverse


def lps_matrix_from_ras(matrix_ras: np.ndarray) -> np.ndarray:
    """Express a 4x4 linear transform acting on RAS points as one acting on LPS points."""
    matrix_ras = np.asarray(matrix_ras, dtype=float)
    return LPS_TO_RAS_4X4 @ matrix_ras @ LPS_TO_RAS_4X4


def ras_matrix_from_lps(matrix_lps: np.ndarray) -> np.ndarray:
    """Express a 4x4 linear transform acting on LPS points as one acting on RAS points."""
    return lps_matrix_from_ras(matrix_lps)  # F4 is its own inverse


def itk_matrix_from_slicer_to_parent(to_parent_ras: np.ndarray) -> np.ndarray:
    """ITK (fixed-to-moving, LPS) 4x4 matrix from a Slicer "to parent" (moving-to-fixed, RAS)."""
    return lps_matrix_from_ras(np.linalg.inv(np.asarray(to_parent_ras, dtype=float)))


def slicer_to_parent_from_itk_matrix(itk_lps: np.ndarray) -> np.ndarray:
    """Slicer "to parent" (moving-to-fixed, RAS) 4x4 matrix from an ITK fixed-to-moving (LPS)."""
    return np.linalg.inv(ras_matrix_from_lps(np.asarray(itk_lps, dtype=float)))
