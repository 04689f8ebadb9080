"""Known-answer data for surface metrics: two offset spheres and their exact distances.

The distance from a point ``p`` to a sphere (centre ``c``, radius ``r``) is
``| |p - c| - r |``, so the directed distances from one continuous sphere surface to the
other follow in closed form at any point. Sampling both surfaces densely and uniformly by
area (Fibonacci lattice) gives the Hausdorff distance, the 95th percentiles and the mean
symmetric surface distance of the continuous surfaces to high precision; voxelising the
spheres (a voxel is inside when its centre is) gives the masks to test against them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk


def fibonacci_sphere(count: int) -> np.ndarray:
    """``count`` unit vectors spread uniformly by area (Fibonacci lattice), shape (count, 3)."""
    index = np.arange(count) + 0.5
    z = 1.0 - 2.0 * index / count
    radius = np.sqrt(1.0 - z * z)
    angle = np.pi * (1.0 + 5.0**0.5) * index
    return np.column_stack([radius * np.cos(angle), radius * np.sin(angle), z])


def analytic_sphere_metrics(
    centre_a: Sequence[float],
    radius_a: float,
    centre_b: Sequence[float],
    radius_b: float,
    samples: int = 2_000_000,
) -> dict[str, float]:
    """Hausdorff, HD95 (larger directed 95th percentile) and ASSD of two sphere surfaces (mm)."""
    unit = fibonacci_sphere(samples)
    centre_a = np.asarray(centre_a, float)
    centre_b = np.asarray(centre_b, float)
    points_a = centre_a + radius_a * unit
    points_b = centre_b + radius_b * unit
    d_ab = np.abs(np.linalg.norm(points_a - centre_b, axis=1) - radius_b)
    d_ba = np.abs(np.linalg.norm(points_b - centre_a, axis=1) - radius_a)
    area_a, area_b = radius_a**2, radius_b**2  # equal-area samples: weight by r^2
    return {
        "hausdorff": float(max(d_ab.max(), d_ba.max())),
        "hausdorff95": float(max(np.percentile(d_ab, 95), np.percentile(d_ba, 95))),
        "assd": float((d_ab.mean() * area_a + d_ba.mean() * area_b) / (area_a + area_b)),
    }


def sphere_pair(
    size: Sequence[int] = (96, 96, 32),
    spacing: Sequence[float] = (0.8, 0.8, 3.0),
    radius_a: float = 20.0,
    radius_b: float = 17.0,
    offset: Sequence[float] = (3.1, -2.3, 4.4),
    direction: Sequence[float] | None = None,
    origin: Sequence[float] = (-10.0, 5.0, 20.0),
) -> tuple[sitk.Image, sitk.Image, dict[str, float]]:
    """Two voxelised spheres (UInt8 masks, physical units mm) and their analytic metrics.

    Sphere A is centred in the grid, sphere B at A's centre + ``offset`` (mm, physical).
    ``direction`` (row-major 3x3) makes the grid oblique. Returns ``(a, b, truth)``.
    """
    grid = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
    grid.SetSpacing([float(s) for s in spacing])
    grid.SetOrigin([float(o) for o in origin])
    if direction is not None:
        grid.SetDirection([float(d) for d in direction])
    matrix = np.reshape(grid.GetDirection(), (3, 3))
    spacing_arr = np.asarray(grid.GetSpacing())
    centre_index = (np.asarray(size) - 1) / 2.0
    centre_a = np.asarray(origin) + matrix @ (centre_index * spacing_arr)
    centre_b = centre_a + np.asarray(offset, float)
    k, j, i = np.meshgrid(*(np.arange(n) for n in reversed(size)), indexing="ij")
    index = np.stack([i, j, k], axis=-1).astype(float) * spacing_arr
    points = np.asarray(origin) + index @ matrix.T

    def mask(centre, radius):
        inside = np.sum((points - centre) ** 2, axis=-1) <= radius**2
        image = sitk.GetImageFromArray(inside.astype(np.uint8))
        image.CopyInformation(grid)
        return image

    truth = analytic_sphere_metrics(centre_a, radius_a, centre_b, radius_b)
    return mask(centre_a, radius_a), mask(centre_b, radius_b), truth
