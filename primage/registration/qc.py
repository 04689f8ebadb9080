"""Quality control of a registration: numbers before and after, a verdict, pictures.

* Mutual information (nats, 32-bin joint histogram between the 0.5th and 99.5th
  percentiles) and normalised (Pearson) correlation of the fixed image and the moving
  image resampled onto it, inside the overlap of the two images.
* Dice and symmetric mean surface distance (mm) between the fixed mask and the moving
  mask propagated onto the fixed grid, when both masks are given.
* Target registration error (mm) over paired landmarks (CSV or Slicer markups JSON).
* Jacobian determinant range of the transform over the fixed grid when it holds a
  B-spline stage: a value <= 0 means the deformation folds (a failure).
* A verdict, ``ok`` or ``review``, with its reasons and, for ``review``, the advice to
  rerun with a mask of the tumour and/or adjacent organs (the PRIMAGE route).
* Checkerboard and colour-fusion snapshots (PNG) of axial, coronal and sagittal slices
  through the fixed mask's centre (or the image centre), before and after.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from primage.errors import PrimageInputError
from primage.io import mask_on_image_grid
from primage.registration.core import compose, crop_to_view, flatten_transform, image_centre
from primage.registration.stages import validate_qc

HISTOGRAM_BINS = 32


# --- similarity ---------------------------------------------------------------------------


def _resampled_with_overlap(
    fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    fixed_values = sitk.GetArrayFromImage(sitk.Cast(fixed, sitk.sitkFloat32))
    moving = crop_to_view(moving, fixed, [transform])  # the same values, fewer voxels
    moved = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    # The overlap: fixed voxels that the transform sends inside the moving image.
    ones = sitk.Image(moving.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(moving)
    inside = sitk.Resample(ones, fixed, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return fixed_values, sitk.GetArrayFromImage(moved), sitk.GetArrayFromImage(inside) > 0


def mutual_information(a: np.ndarray, b: np.ndarray, bins: int = HISTOGRAM_BINS) -> float:
    """Mutual information (nats) of two equally long samples, robust intensity ranges."""
    if a.size < 2:
        return float("nan")
    # Bin indices by arithmetic and one bincount: np.histogram2d's sorting took ~0.8 s for
    # a 4-million-voxel image.
    index = np.zeros(a.size, np.int64)
    for values in (a, b):
        low, high = (float(v) for v in np.percentile(values, [0.5, 99.5]))
        high = high if high > low else low + 1.0
        scaled = (np.clip(values, low, high) - low) * (bins / (high - low))
        index = index * bins + np.minimum(scaled.astype(np.int64), bins - 1)
    joint = np.bincount(index, minlength=bins * bins).reshape(bins, bins).astype(float)
    joint /= joint.sum()
    pa, pb = joint.sum(axis=1), joint.sum(axis=0)
    nonzero = joint > 0
    return float(np.sum(joint[nonzero] * np.log(joint[nonzero] / np.outer(pa, pb)[nonzero])))


def normalised_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two equally long samples (nan when either is constant)."""
    if a.size < 2 or np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def similarity(
    fixed: sitk.Image,
    moving: sitk.Image,
    transform: sitk.Transform,
    region: sitk.Image | None = None,
) -> dict[str, Any]:
    """MI (nats), normalised correlation and overlap (fraction of fixed voxels) after
    resampling ``moving`` onto ``fixed`` through ``transform``; ``region`` restricts
    the voxels (a mask on the fixed grid)."""
    a, b, inside = _resampled_with_overlap(fixed, moving, transform)
    if region is not None:
        inside &= sitk.GetArrayViewFromImage(region) > 0
    count = int(np.count_nonzero(inside))
    if count < 2:
        return {"mutual_information": None, "normalised_correlation": None, "overlap": 0.0}
    return {
        "mutual_information": round(mutual_information(a[inside], b[inside]), 5),
        "normalised_correlation": round(normalised_correlation(a[inside], b[inside]), 5),
        "overlap": round(count / inside.size, 5),
    }


# --- masks --------------------------------------------------------------------------------


def dice(a: sitk.Image, b: sitk.Image) -> float:
    """Dice overlap of two masks on the same grid (non-zero = inside); 1 when both empty."""
    x = sitk.GetArrayViewFromImage(a) > 0
    y = sitk.GetArrayViewFromImage(b) > 0
    total = int(x.sum() + y.sum())
    return 1.0 if total == 0 else float(2.0 * np.logical_and(x, y).sum() / total)


def mean_surface_distance(a: sitk.Image, b: sitk.Image) -> float | None:
    """Symmetric mean distance (mm) between the surfaces of two masks on one grid."""
    a = sitk.Cast(a > 0, sitk.sitkUInt8)
    b = sitk.Cast(b > 0, sitk.sitkUInt8)
    if not np.any(sitk.GetArrayViewFromImage(a)) or not np.any(sitk.GetArrayViewFromImage(b)):
        return None
    distances = []
    for source, target in ((a, b), (b, a)):
        contour = sitk.GetArrayFromImage(sitk.LabelContour(source, fullyConnected=False)) > 0
        distance = sitk.Abs(
            sitk.SignedMaurerDistanceMap(
                sitk.LabelContour(target, fullyConnected=False),
                insideIsPositive=False,
                squaredDistance=False,
                useImageSpacing=True,
            )
        )
        distances.append(sitk.GetArrayFromImage(distance)[contour])
    return float(np.concatenate(distances).mean())


def propagate_mask(
    moving_mask: sitk.Image, fixed: sitk.Image, transform: sitk.Transform
) -> sitk.Image:
    """The moving mask on the fixed grid (nearest neighbour through fixed -> moving)."""
    binary = sitk.Cast(moving_mask > 0, sitk.sitkUInt8)
    return sitk.Resample(binary, fixed, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


# --- landmarks ----------------------------------------------------------------------------


def read_landmarks(path: str | os.PathLike, *, role: str = "landmarks") -> np.ndarray:
    """Points (n, 3) in LPS mm from a CSV or a Slicer markups JSON file.

    CSV: a header with columns ``x``, ``y``, ``z`` (LPS, mm; other columns such as
    ``label`` are ignored). JSON: Slicer's markups format (``markups[].controlPoints[]
    .position`` with ``coordinateSystem`` ``LPS`` or ``RAS``; RAS points are converted by
    :mod:`primage.mrml.geometry`, which needs no Slicer).
    """
    path = Path(path)
    if not path.is_file():
        raise PrimageInputError(f"{role} file does not exist: {path}")
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise PrimageInputError(f"cannot read {role} file {path}: {error}") from None
    if path.suffix.lower() == ".json":
        points = _markups_points(text, path, role)
    else:
        points = _csv_points(text, path, role)
    if len(points) == 0:
        raise PrimageInputError(f"{role} file {path} holds no point")
    if not np.all(np.isfinite(points)):
        raise PrimageInputError(f"{role} file {path} has non-finite coordinates")
    return points


def _csv_points(text: str, path: Path, role: str) -> np.ndarray:
    rows = list(csv.DictReader(line for line in text.splitlines() if not line.startswith("#")))
    if not rows or not {"x", "y", "z"} <= {str(k).strip().lower() for k in rows[0]}:
        raise PrimageInputError(f"{role} CSV {path} needs a header with columns x, y, z (LPS mm)")
    points = []
    for number, row in enumerate(rows, start=2):
        row = {str(k).strip().lower(): v for k, v in row.items()}
        try:
            points.append([float(row[axis]) for axis in ("x", "y", "z")])
        except (TypeError, ValueError):
            raise PrimageInputError(
                f"{role} CSV {path}: row {number} is not three numbers"
            ) from None
    return np.array(points, dtype=float).reshape(-1, 3)


def _markups_points(text: str, path: Path, role: str) -> np.ndarray:
    try:
        data = json.loads(text)
        markups = data["markups"]
        points = []
        for markup in markups:
            system = markup.get("coordinateSystem", "LPS")
            positions = np.array(
                [point["position"] for point in markup.get("controlPoints", [])], dtype=float
            ).reshape(-1, 3)
            if system == "RAS":
                from primage.mrml.geometry import ras_to_lps_points  # numpy only, no Slicer

                positions = ras_to_lps_points(positions)
            elif system != "LPS":
                raise ValueError(f"unknown coordinateSystem {system!r}")
            points.append(positions)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise PrimageInputError(
            f"{role} file {path} is not a Slicer markups JSON file ({error})"
        ) from None
    return np.concatenate(points) if points else np.zeros((0, 3))


def landmark_errors(
    fixed_points: np.ndarray, moving_points: np.ndarray, transform: sitk.Transform
) -> np.ndarray:
    """Distance (mm) between ``T(fixed point)`` and its paired moving point."""
    fixed_points = np.asarray(fixed_points, dtype=float)
    moving_points = np.asarray(moving_points, dtype=float)
    if fixed_points.shape != moving_points.shape:
        raise PrimageInputError(
            f"fixed and moving landmarks must pair up: {len(fixed_points)} fixed and "
            f"{len(moving_points)} moving points"
        )
    mapped = np.array([transform.TransformPoint(p.tolist()) for p in fixed_points])
    return np.linalg.norm(mapped - moving_points, axis=1)


# --- Jacobian -----------------------------------------------------------------------------


def has_deformable_part(transform: sitk.Transform) -> bool:
    """True when the transform holds a non-linear part (B-spline, displacement field)."""
    return any(not part.IsLinear() for part in flatten_transform(transform))


def jacobian_range(transform: sitk.Transform, fixed: sitk.Image) -> tuple[float, float]:
    """Minimum and maximum Jacobian determinant of ``transform`` over the fixed grid."""
    field = sitk.TransformToDisplacementField(
        transform,
        sitk.sitkVectorFloat64,
        fixed.GetSize(),
        fixed.GetOrigin(),
        fixed.GetSpacing(),
        fixed.GetDirection(),
    )
    determinant = sitk.DisplacementFieldJacobianDeterminant(field)
    values = sitk.GetArrayViewFromImage(determinant)
    return float(values.min()), float(values.max())


# --- the whole QC -------------------------------------------------------------------------


def quality_control(
    fixed: sitk.Image,
    moving: sitk.Image,
    transform: sitk.Transform,
    *,
    initial: sitk.Transform | None = None,
    fixed_mask: sitk.Image | None = None,
    moving_mask: sitk.Image | None = None,
    fixed_landmarks: np.ndarray | None = None,
    moving_landmarks: np.ndarray | None = None,
    thresholds: Mapping[str, Any] | None = None,
    masks_used: bool = False,
    acceptance: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Numbers before (``initial``, default identity) and after ``transform``, and a verdict.

    Returns a JSON-ready dict: ``metric_before`` / ``metric_after`` (MI, correlation,
    overlap), ``dice_before`` / ``dice_after`` and ``surface_distance_*_mm`` (both masks
    given), ``tre_before_mm`` / ``tre_after_mm`` (landmarks given: mean, max, count),
    ``jacobian_determinant`` (B-spline), ``verdict``, ``reasons``, ``reason``, ``advice``.
    With ``acceptance`` (``RegistrationResult.acceptance``) also ``start_returned`` (True
    when the optimisation was not better than the start, which was returned) and
    ``optimisation`` (that check: kept, metric at the start and after, reason, advice).
    """
    thresholds = validate_qc(thresholds)
    before_tx = initial if initial is not None else sitk.Transform(3, sitk.sitkIdentity)
    qc: dict[str, Any] = {
        "metric_before": similarity(fixed, moving, before_tx),
        "metric_after": similarity(fixed, moving, transform),
    }
    reasons: list[str] = []
    mi_before = qc["metric_before"]["mutual_information"]
    mi_after = qc["metric_after"]["mutual_information"]
    if mi_after is None:
        reasons.append("the images do not overlap after registration")
    elif mi_before is not None and mi_after < mi_before * (
        1.0 - thresholds["mutual_information_tolerance"]
    ):
        reasons.append(f"mutual information got worse ({mi_before:.3f} -> {mi_after:.3f} nats)")

    if fixed_mask is not None and moving_mask is not None:
        fixed_binary = mask_on_image_grid(fixed_mask, fixed, role="fixed mask")
        before = propagate_mask(moving_mask, fixed, before_tx)
        after = propagate_mask(moving_mask, fixed, transform)
        qc["dice_before"] = round(dice(fixed_binary, before), 4)
        qc["dice_after"] = round(dice(fixed_binary, after), 4)
        for key, propagated in (("before", before), ("after", after)):
            distance = mean_surface_distance(fixed_binary, propagated)
            qc[f"surface_distance_{key}_mm"] = None if distance is None else round(distance, 3)
        if qc["dice_after"] < thresholds["dice_min"]:
            reasons.append(
                f"Dice of the propagated mask {qc['dice_after']:.3f} is below "
                f"{thresholds['dice_min']:.2f}"
            )
        if qc["dice_after"] < qc["dice_before"] - 0.01:
            reasons.append(f"Dice got worse ({qc['dice_before']:.3f} -> {qc['dice_after']:.3f})")

    if fixed_landmarks is not None and moving_landmarks is not None:
        errors_before = landmark_errors(fixed_landmarks, moving_landmarks, before_tx)
        errors_after = landmark_errors(fixed_landmarks, moving_landmarks, transform)
        for key, errors in (("before", errors_before), ("after", errors_after)):
            qc[f"tre_{key}_mm"] = {
                "mean": round(float(errors.mean()), 3),
                "max": round(float(errors.max()), 3),
                "points": int(errors.size),
            }
        if errors_after.mean() > errors_before.mean():
            reasons.append("landmark error got worse")
        limit = thresholds["tre_max_mm"]
        if limit is not None and errors_after.mean() > limit:
            reasons.append(f"mean landmark error {errors_after.mean():.2f} mm is above {limit} mm")

    if has_deformable_part(transform):
        low, high = jacobian_range(transform, fixed)
        qc["jacobian_determinant"] = {"min": round(low, 4), "max": round(high, 4)}
        if low <= 0:
            reasons.append(f"the deformation folds (Jacobian determinant min {low:.3f} <= 0)")

    qc["verdict"] = "review" if reasons else "ok"
    qc["reasons"] = reasons
    qc["reason"] = "; ".join(reasons) if reasons else "all checks passed"
    start_returned = acceptance is not None and acceptance.get("kept") == "start"
    if acceptance is not None:
        qc["start_returned"] = start_returned
        qc["optimisation"] = dict(acceptance)
    if start_returned:
        # Not a failure by itself (an aligned pair has nothing to gain), but say so.
        qc["reason"] += f" (optimisation not kept: {acceptance['reason']})"
    if start_returned and not reasons:
        qc["advice"] = acceptance.get("advice", "")
    elif reasons:
        qc["advice"] = (
            "check the masks, the initialisation or the preset; an initial transform from a "
            "manual alignment can help"
            if masks_used
            else "rerun with a mask of the tumour and/or adjacent organs (fixed and moving "
            "masks restrict the metric to that region)"
        )
    else:
        qc["advice"] = ""
    qc["thresholds"] = thresholds
    return qc


def summary_text(qc: Mapping[str, Any]) -> str:
    """A few lines for a person: verdict, reasons, numbers before -> after."""

    def pair(before, after, digits=3) -> str:
        show = lambda v: "n/a" if v is None else f"{v:.{digits}f}"  # noqa: E731
        return f"{show(before)} -> {show(after)}"

    lines = [f"Verdict: {qc['verdict']} ({qc['reason']})"]
    if qc.get("advice"):
        lines.append(f"Advice: {qc['advice']}")
    before, after = qc["metric_before"], qc["metric_after"]
    lines.append(
        "Mutual information (nats): "
        + pair(before["mutual_information"], after["mutual_information"])
    )
    lines.append(
        "Normalised correlation: "
        + pair(before["normalised_correlation"], after["normalised_correlation"])
    )
    if "dice_after" in qc:
        lines.append("Dice: " + pair(qc["dice_before"], qc["dice_after"]))
        lines.append(
            "Mean surface distance (mm): "
            + pair(qc["surface_distance_before_mm"], qc["surface_distance_after_mm"], 2)
        )
    if "tre_after_mm" in qc:
        lines.append(
            "Landmark error, mean (mm): "
            + pair(qc["tre_before_mm"]["mean"], qc["tre_after_mm"]["mean"], 2)
        )
    if "jacobian_determinant" in qc:
        jac = qc["jacobian_determinant"]
        lines.append(f"Jacobian determinant: {jac['min']:.3f} .. {jac['max']:.3f}")
    return "\n".join(lines)


# --- snapshots ----------------------------------------------------------------------------


def _slice_grids(
    fixed: sitk.Image, centre: np.ndarray, size_px: int = 160
) -> dict[str, sitk.Image]:
    """2D (one-voxel-thick) grids of the axial, coronal and sagittal planes through
    ``centre`` (LPS mm), isotropic pixels, covering the fixed image's extent."""
    corners = np.array(
        [
            fixed.TransformIndexToPhysicalPoint([int(c) for c in corner])
            for corner in np.array(np.meshgrid(*[[0, n - 1] for n in fixed.GetSize()])).T.reshape(
                -1, 3
            )
        ]
    )
    extent = corners.max(axis=0) - corners.min(axis=0)
    pixel = max(float(min(fixed.GetSpacing())), float(extent.max()) / size_px)
    # Rows and columns of each view in LPS: image column direction, image row direction.
    # Axial: patient right on the left (radiological), anterior at the top.
    # Coronal: right on the left, head at the top. Sagittal: anterior on the left, head up.
    views = {
        "axial": (np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), (0, 1)),
        "coronal": (np.array([1.0, 0, 0]), np.array([0, 0, -1.0]), (0, 2)),
        "sagittal": (np.array([0, 1.0, 0]), np.array([0, 0, -1.0]), (1, 2)),
    }
    grids = {}
    for name, (column, row, (a, b)) in views.items():
        normal = np.cross(column, row)
        width = int(np.ceil(extent[a] / pixel)) + 1
        height = int(np.ceil(extent[b] / pixel)) + 1
        grid = sitk.Image([width, height, 1], sitk.sitkUInt8)
        grid.SetSpacing([pixel, pixel, pixel])
        grid.SetDirection(np.stack([column, row, normal], axis=1).ravel().tolist())
        origin = centre - column * pixel * (width - 1) / 2 - row * pixel * (height - 1) / 2
        grid.SetOrigin(origin.tolist())
        grids[name] = grid
    return grids


#: Voxels read for a display window: a regular subsample keeps the 1st/99th percentiles
#: of a 500 x 500 x 300 CT within a grey level while costing milliseconds, not seconds.
_WINDOW_SAMPLES = 1 << 20


def display_window(image_values: np.ndarray) -> tuple[float, float]:
    """(1st, 99th) percentile of the finite voxels of an image: its grey-level window."""
    flat = image_values.reshape(-1)
    flat = flat[:: max(1, flat.size // _WINDOW_SAMPLES)]
    body = flat[np.isfinite(flat)]
    low, high = (float(v) for v in np.percentile(body, [1, 99])) if body.size else (0.0, 1.0)
    return low, (high if high > low else low + 1.0)


def _window(values: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    low, high = window
    return np.clip(np.round((values - low) / (high - low) * 255.0), 0, 255).astype(np.uint8)


def _panels(fixed, moving, transform, grids) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    fixed_values = sitk.GetArrayViewFromImage(fixed)
    moving_values = sitk.GetArrayViewFromImage(moving)
    fixed_window, moving_window = display_window(fixed_values), display_window(moving_values)
    fixed_fill, moving_fill = float(fixed_values.min()), float(moving_values.min())
    panels = {}
    for name, grid in grids.items():
        f = sitk.GetArrayFromImage(
            sitk.Resample(
                fixed, grid, sitk.Transform(), sitk.sitkLinear, fixed_fill, sitk.sitkFloat32
            )
        )[0]
        m = sitk.GetArrayFromImage(
            sitk.Resample(moving, grid, transform, sitk.sitkLinear, moving_fill, sitk.sitkFloat32)
        )[0]
        panels[name] = (_window(f, fixed_window), _window(m, moving_window))
    return panels


def _row(images: Sequence[np.ndarray]) -> np.ndarray:
    height = max(image.shape[0] for image in images)
    channels = images[0].shape[2:]
    tiles = []
    for image in images:
        padded = np.zeros((height, image.shape[1], *channels), np.uint8)
        padded[: image.shape[0]] = image
        tiles.extend([padded, np.full((height, 3, *channels), 128, np.uint8)])
    return np.concatenate(tiles[:-1], axis=1)


def checkerboard(a: np.ndarray, b: np.ndarray, squares: int = 8) -> np.ndarray:
    """Alternate squares of two equally sized 2D images (``squares`` across the width)."""
    side = max(1, a.shape[1] // squares)
    rows, cols = np.indices(a.shape)
    return np.where(((rows // side) + (cols // side)) % 2 == 0, a, b)


def fusion(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """RGB overlay: fixed in magenta, moving in green (grey where they agree)."""
    return np.stack([a, b, a], axis=-1)


def _write_png(array: np.ndarray, path: Path) -> Path:
    image = sitk.GetImageFromArray(array, isVector=array.ndim == 3)
    # Temporary name keeps the .png ending so SimpleITK picks the PNG writer.
    temporary = path.with_name(f".{path.stem}.part.png")
    try:
        sitk.WriteImage(image, str(temporary))
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
    return path


def snapshot_centre(fixed: sitk.Image, fixed_mask: sitk.Image | None) -> np.ndarray:
    """Centre of the fixed mask (its voxels' mean position, mm) or of the fixed image."""
    if fixed_mask is not None:
        binary = mask_on_image_grid(fixed_mask, fixed, role="fixed mask")
        index = np.argwhere(sitk.GetArrayViewFromImage(binary) > 0)[:, ::-1].mean(axis=0)
        return np.array(fixed.TransformContinuousIndexToPhysicalPoint(index.tolist()))
    return image_centre(fixed)


def write_snapshots(
    fixed: sitk.Image,
    moving: sitk.Image,
    transform: sitk.Transform,
    prefix: str | os.PathLike,
    *,
    initial: sitk.Transform | None = None,
    fixed_mask: sitk.Image | None = None,
) -> dict[str, str]:
    """Write ``<prefix>_checkerboard_{before,after}.png`` and ``<prefix>_fusion_{before,after}.png``.

    Each PNG shows axial | coronal | sagittal slices through the fixed mask's centre (or
    the image centre), resampled to square pixels. Returns the file names by kind.
    """
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    grids = _slice_grids(fixed, snapshot_centre(fixed, fixed_mask))
    before_tx = initial if initial is not None else sitk.Transform(3, sitk.sitkIdentity)
    written = {}
    for when, tx in (("before", before_tx), ("after", compose([transform]))):
        panels = _panels(fixed, moving, tx, grids)
        board = _row([checkerboard(f, m) for f, m in panels.values()])
        overlay = _row([fusion(f, m) for f, m in panels.values()])
        for kind, array in (("checkerboard", board), ("fusion", overlay)):
            path = prefix.with_name(f"{prefix.name}_{kind}_{when}.png")
            _write_png(array, path)
            written[f"{kind}_{when}"] = path.name
    return written
