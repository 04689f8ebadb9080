"""Test pairs with a known transform, and the error of a registration against it.

Used by the tests, the demo and the benchmark. Two exact ways to misalign an image by a
known fixed -> moving transform ``T`` (so that ``moving(T(x))`` shows what the fixed
image shows at ``x``):

* :func:`move_geometry` changes only the image header (origin, direction, spacing), with
  no interpolation at all. It works for rigid transforms and for affine ones that scale
  along the image axes (the moved grid must still be a grid).
* :func:`sample_through` builds the *fixed* image instead, ``fixed(x) = source(T(x))``,
  by resampling a finer source; it works for any transform (B-splines too).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from primage.errors import PrimageInputError


def rotation_matrix(angles_deg: Sequence[float]) -> np.ndarray:
    """3x3 rotation about x, then y, then z (degrees), as ``R = Rz Ry Rx``."""
    ax, ay, az = np.radians(np.asarray(angles_deg, dtype=float))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def known_affine(
    centre: Sequence[float],
    rotation_deg: Sequence[float] = (0.0, 0.0, 0.0),
    translation_mm: Sequence[float] = (0.0, 0.0, 0.0),
    scale: Sequence[float] = (1.0, 1.0, 1.0),
    scale_axes: np.ndarray | None = None,
) -> sitk.AffineTransform:
    """Fixed -> moving affine ``x -> R S (x - c) + c + t`` (mm).

    ``S`` scales by ``scale`` along the columns of ``scale_axes`` (default: x, y, z), so a
    pure rotation + translation is rigid, and scaling along an image's own axes keeps
    :func:`move_geometry` exact.
    """
    axes = np.eye(3) if scale_axes is None else np.asarray(scale_axes, dtype=float)
    matrix = rotation_matrix(rotation_deg) @ axes @ np.diag(scale) @ axes.T
    affine = sitk.AffineTransform(3)
    affine.SetCenter([float(c) for c in centre])
    affine.SetMatrix(matrix.ravel().tolist())
    affine.SetTranslation([float(t) for t in translation_mm])
    return affine


def move_geometry(image: sitk.Image, transform: sitk.Transform) -> sitk.Image:
    """A copy of ``image`` whose voxel ``v`` sits at ``T(p(v))``: the moving image of ``T``.

    Only the header changes (voxel values are shared content, copied). ``T`` must be
    linear and map the grid to a grid: rotation times scaling along the image axes.
    """
    if not transform.IsLinear():
        raise PrimageInputError("move_geometry needs a linear transform")
    origin = np.array(transform.TransformPoint(image.GetOrigin()))
    columns = []
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    for axis in range(3):
        step = direction[:, axis] * image.GetSpacing()[axis]
        tip = np.array(transform.TransformPoint((np.asarray(image.GetOrigin()) + step).tolist()))
        columns.append(tip - origin)
    axes = np.stack(columns, axis=1)
    spacing = np.linalg.norm(axes, axis=0)
    new_direction = axes / spacing
    if not np.allclose(new_direction.T @ new_direction, np.eye(3), atol=1e-5):
        raise PrimageInputError(
            "move_geometry: the transform shears the image grid (scale only along the image axes)"
        )
    moved = sitk.Image(image)
    moved.SetOrigin(origin.tolist())
    moved.SetSpacing(spacing.tolist())
    moved.SetDirection(new_direction.ravel().tolist())
    return moved


def sample_through(
    source: sitk.Image,
    grid: sitk.Image,
    transform: sitk.Transform,
    *,
    interpolation=sitk.sitkLinear,
    default_value: float = 0.0,
) -> sitk.Image:
    """``source(T(x))`` on ``grid``: a fixed image for which ``T`` is the true transform."""
    pixel = source.GetPixelID() if interpolation == sitk.sitkNearestNeighbor else sitk.sitkFloat32
    return sitk.Resample(source, grid, transform, interpolation, default_value, pixel)


def smooth_deformation(
    grid: sitk.Image, amplitude_mm: float, spacing_mm: float = 40.0, seed: int = 0
) -> sitk.BSplineTransform:
    """A random smooth B-spline deformation over ``grid`` (largest control-point
    displacement ``amplitude_mm``; keep it below ~0.4 x spacing so nothing folds)."""
    extent = np.array(grid.GetSize()) * np.array(grid.GetSpacing())
    mesh = [max(1, int(round(e / spacing_mm))) for e in extent]
    bspline = sitk.BSplineTransformInitializer(grid, mesh, 3)
    rng = np.random.default_rng(seed)
    values = rng.uniform(-1.0, 1.0, len(bspline.GetParameters()))
    bspline.SetParameters((amplitude_mm * values / np.abs(values).max()).tolist())
    return bspline


def displacement_array(transform: sitk.Transform, grid: sitk.Image) -> np.ndarray:
    """``T(x) - x`` (mm, LPS) at every voxel centre of ``grid``, shape (z, y, x, 3)."""
    field = sitk.TransformToDisplacementField(
        transform,
        sitk.sitkVectorFloat64,
        grid.GetSize(),
        grid.GetOrigin(),
        grid.GetSpacing(),
        grid.GetDirection(),
    )
    return sitk.GetArrayFromImage(field)


def transform_error(
    estimated: sitk.Transform | np.ndarray,
    truth: sitk.Transform | np.ndarray,
    grid: sitk.Image,
    mask: sitk.Image | None = None,
) -> dict[str, float]:
    """Target registration error (mm) at every voxel of ``grid`` (inside ``mask``).

    Both transforms map fixed to moving points; they may also be given as displacement
    arrays from :func:`displacement_array` (e.g. elastix's deformation field). Returns
    mean, median, 95th percentile and maximum distance between where each sends the
    same fixed point, and the number of points.
    """
    a = estimated if isinstance(estimated, np.ndarray) else displacement_array(estimated, grid)
    b = truth if isinstance(truth, np.ndarray) else displacement_array(truth, grid)
    error = np.linalg.norm(a - b, axis=-1)
    if mask is not None:
        error = error[sitk.GetArrayViewFromImage(mask) > 0]
    else:
        error = error.ravel()
    if error.size == 0:
        raise PrimageInputError("the TRE mask has no voxel")
    return {
        "mean_mm": float(error.mean()),
        "median_mm": float(np.median(error)),
        "p95_mm": float(np.percentile(error, 95)),
        "max_mm": float(error.max()),
        "points": int(error.size),
    }


# --- a small phantom pair (tests and self-tests) -------------------------------------

#: The known fixed -> moving transform of :func:`synthetic_registration_pair`: rotation
#: about x, y, z (degrees, about the fixed image centre) and translation (mm, LPS).
PAIR_ROTATION_DEG = (4.0, -3.0, 6.0)
PAIR_TRANSLATION_MM = (4.0, -3.0, 2.5)


def grid_image(size, spacing, origin, angle_deg) -> sitk.Image:
    """An empty Float32 grid centred at ``origin`` (mm), axes rotated by ``angle_deg`` about z."""
    angle = np.radians(angle_deg)
    direction = np.array(
        [[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]]
    )
    grid = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    grid.SetSpacing([float(s) for s in spacing])
    grid.SetDirection(direction.ravel().tolist())
    half = direction @ ((np.array(size) - 1) * np.array(spacing) / 2.0)
    grid.SetOrigin((np.asarray(origin, dtype=float) - half).tolist())
    return grid


def render_phantom(grid: sitk.Image, values: tuple[float, float, float, float], seed: int):
    """A small phantom (body, tumour, organ; mm around (10, -5, 20)) rendered on ``grid``.

    ``values`` are the intensities of air, body, tumour and organ; Gaussian noise (SD 12)
    is seeded by ``seed``. Returns the Float32 image and the UInt8 tumour mask.
    """
    size = grid.GetSize()
    k, j, i = np.meshgrid(*(np.arange(n, dtype=float) for n in reversed(size)), indexing="ij")
    index = np.stack([i.ravel(), j.ravel(), k.ravel()])
    direction = np.asarray(grid.GetDirection()).reshape(3, 3)
    points = direction @ (index * np.asarray(grid.GetSpacing())[:, None])
    points += (np.asarray(grid.GetOrigin()) - np.array([10.0, -5.0, 20.0]))[:, None]
    x, y, z = (points[axis].reshape(k.shape) for axis in range(3))
    body = (x / 30.0) ** 2 + (y / 24.0) ** 2 + (z / 40.0) ** 2 <= 1.0
    tumour = ((x - 9.0) / 9.0) ** 2 + ((y + 4.0) / 7.0) ** 2 + ((z - 3.0) / 8.0) ** 2 <= 1.0
    organ = ((x + 12.0) / 8.0) ** 2 + ((y - 6.0) / 10.0) ** 2 + ((z + 6.0) / 12.0) ** 2 <= 1.0
    air, tissue, lesion, other = values
    array = np.where(body, tissue, air)
    array = np.where(organ & body, other, array)
    array = np.where(tumour & body, lesion, array)
    array = array + np.random.default_rng(seed).normal(0.0, 12.0, array.shape)
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.CopyInformation(grid)
    mask = sitk.GetImageFromArray((tumour & body).astype(np.uint8))
    mask.CopyInformation(grid)
    return image, mask


def synthetic_registration_pair():
    """A small multi-contrast pair with a known rigid transform (deterministic).

    Returns ``(fixed, moving, fixed_mask, moving_mask, truth)``: a T2-like fixed image
    (oblique, 1.6 x 1.6 x 3 mm) and a moving image of the same anatomy with another,
    non-monotonic contrast on another grid (1.4 x 1.4 x 3.5 mm), misaligned by changing
    its header only (no interpolation); tumour masks of both; ``truth`` is the fixed ->
    moving transform (so ``moving(truth(x))`` shows what ``fixed(x)`` shows).
    """
    fixed_grid = grid_image((44, 40, 22), (1.6, 1.6, 3.0), (10.0, -5.0, 20.0), 15.0)
    moving_grid = grid_image((50, 46, 20), (1.4, 1.4, 3.5), (11.0, -4.0, 19.0), -8.0)
    fixed, fixed_mask = render_phantom(fixed_grid, (0.0, 300.0, 700.0, 120.0), seed=11)
    moving, moving_mask = render_phantom(moving_grid, (0.0, 520.0, 210.0, 820.0), seed=12)
    centre = fixed.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in fixed.GetSize()])
    truth = known_affine(centre, PAIR_ROTATION_DEG, PAIR_TRANSLATION_MM)
    return fixed, move_geometry(moving, truth), fixed_mask, move_geometry(moving_mask, truth), truth
