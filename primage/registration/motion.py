"""Motion correction of a dynamic series (DWI b-series, DCE time series).

Every frame is registered to a reference (the first frame, the mean of the first
``baseline_frames`` frames, or a given frame) with a rigid or affine transform and Mattes
mutual information, since frame contrast changes with b and with contrast uptake. Each
frame starts from the previous frame's result (motion is continuous), and the corrected
frames are resampled onto the series grid with cubic B-spline interpolation.

Per frame the motion table gives the translation of the image centre (mm), the rotation
angles about x, y, z (degrees, of the rotation part; Euler3DTransform convention), the
framewise displacement to the previous frame (Power et al. 2012: sum of absolute
translation changes plus rotation changes as arc length on a 50 mm sphere, mm), and the
mutual information with the reference before and after correction.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk

from primage.errors import PrimageInputError
from primage.io import mask_on_image_grid, same_geometry
from primage.presetfiles import preset_folder
from primage.progress import ProgressCallback, no_progress, sub_progress
from primage.registration.core import check_volume, image_centre, register_images
from primage.registration.presets import TEXT_KEYS, validate_preset
from primage.registration.qc import similarity

MOTION_TRANSFORMS = ("rigid", "affine")
#: Radius (mm) turning rotation changes into displacement in the framewise displacement.
FD_RADIUS_MM = 50.0


@dataclass
class MotionResult:
    """Corrected frames (on the series grid), one fixed -> moving transform per frame
    (reference -> frame), the motion table rows and the reference used."""

    volumes: list[sitk.Image]
    transforms: list[sitk.Transform]
    table: list[dict[str, Any]]
    reference: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def motion_settings(transform: str = "rigid") -> dict[str, Any]:
    """The motion-correction settings (data file ``presets/registration/motion/<transform>.json``)."""
    if transform not in MOTION_TRANSFORMS:
        raise PrimageInputError(
            f"motion transform must be one of {', '.join(MOTION_TRANSFORMS)}; got {transform!r}"
        )
    entry = preset_folder("registration").joinpath("motion", f"{transform}.json")
    preset = validate_preset(
        json.loads(entry.read_text("utf-8")), f"motion/{transform}", builtin=True
    )
    settings = {k: v for k, v in preset.items() if k not in TEXT_KEYS}
    settings["preset"] = preset["name"]
    return settings


def parse_reference(reference: str | int, count: int, baseline_frames: int) -> dict[str, Any]:
    """``first``, ``mean-baseline`` or a frame index (0-based) -> a description dict."""
    if isinstance(reference, str) and reference.strip().lstrip("-").isdigit():
        reference = int(reference)
    if isinstance(reference, bool):
        raise PrimageInputError("reference must be first, mean-baseline or a frame number")
    if isinstance(reference, int):
        if not 0 <= reference < count:
            raise PrimageInputError(
                f"reference frame {reference} does not exist: the series has frames 0..{count - 1}"
            )
        return {"kind": "index", "index": reference}
    if reference == "first":
        return {"kind": "index", "index": 0}
    if reference == "mean-baseline":
        if not 1 <= baseline_frames <= count:
            raise PrimageInputError(
                f"baseline_frames must be between 1 and the number of frames ({count}); "
                f"got {baseline_frames}"
            )
        return {"kind": "mean-baseline", "frames": list(range(baseline_frames))}
    raise PrimageInputError(
        f"reference must be first, mean-baseline or a frame number; got {reference!r}"
    )


def _mean(volumes: Sequence[sitk.Image]) -> sitk.Image:
    arrays = [sitk.GetArrayFromImage(sitk.Cast(v, sitk.sitkFloat32)) for v in volumes]
    mean = sitk.GetImageFromArray(np.mean(arrays, axis=0).astype(np.float32))
    mean.CopyInformation(volumes[0])
    return mean


def linear_matrix(transform: sitk.Transform) -> np.ndarray:
    """4x4 matrix (LPS, fixed -> moving) of a linear transform or composite of them."""
    origin = np.array(transform.TransformPoint((0.0, 0.0, 0.0)))
    matrix = np.eye(4)
    for axis in range(3):
        unit = [0.0, 0.0, 0.0]
        unit[axis] = 1.0
        matrix[:3, axis] = np.array(transform.TransformPoint(unit)) - origin
    matrix[:3, 3] = origin
    return matrix


def as_single_linear(transform: sitk.Transform, centre: np.ndarray, kind: str) -> sitk.Transform:
    """One Euler3D (rigid) or Affine transform about ``centre`` equal to a linear composite."""
    matrix = linear_matrix(transform)
    result = sitk.Euler3DTransform() if kind == "rigid" else sitk.AffineTransform(3)
    result.SetCenter(centre.tolist())
    linear = matrix[:3, :3]
    if kind == "rigid":
        u, _, vt = np.linalg.svd(linear)  # nearest rotation (exact for a rigid composite)
        linear = u @ vt
    result.SetMatrix(linear.ravel().tolist())
    result.SetTranslation((matrix[:3, :3] @ centre + matrix[:3, 3] - centre).tolist())
    return result


def motion_parameters(transform: sitk.Transform, centre: np.ndarray) -> dict[str, float]:
    """Translation of ``centre`` (mm) and rotation angles (degrees) of a linear transform."""
    matrix = linear_matrix(transform)
    translation = matrix[:3, :3] @ centre + matrix[:3, 3] - centre
    u, _, vt = np.linalg.svd(matrix[:3, :3])
    euler = sitk.Euler3DTransform()
    euler.SetMatrix((u @ vt).ravel().tolist())
    angles = np.degrees([euler.GetAngleX(), euler.GetAngleY(), euler.GetAngleZ()])
    return {
        "tx_mm": float(translation[0]),
        "ty_mm": float(translation[1]),
        "tz_mm": float(translation[2]),
        "rx_deg": float(angles[0]),
        "ry_deg": float(angles[1]),
        "rz_deg": float(angles[2]),
    }


def framewise_displacement(rows: Sequence[dict[str, float]]) -> list[float]:
    """Power's framewise displacement (mm) of consecutive rows (first frame: 0)."""
    values = [0.0]
    for previous, current in zip(rows[:-1], rows[1:], strict=True):
        shift = sum(abs(current[k] - previous[k]) for k in ("tx_mm", "ty_mm", "tz_mm"))
        turn = sum(
            abs(np.radians(current[k] - previous[k])) for k in ("rx_deg", "ry_deg", "rz_deg")
        )
        values.append(float(shift + FD_RADIUS_MM * turn))
    return values


def correct_motion(
    volumes: Sequence[sitk.Image],
    *,
    reference: str | int = "first",
    baseline_frames: int = 3,
    transform: str = "rigid",
    values: Sequence[float] | None = None,
    mask: sitk.Image | None = None,
    settings: dict[str, Any] | None = None,
    progress: ProgressCallback | None = None,
) -> MotionResult:
    """Register every frame of a series to the reference; see the module docstring.

    ``volumes`` are the 3D frames (one grid); ``values`` their index values (b in
    s/mm^2, time in s) for the table; ``mask`` (on the series grid or resampled to it)
    restricts the metric, e.g. to the body or the tumour region. ``settings`` replaces
    the motion preset of ``transform``.
    """
    report = progress or no_progress
    start = time.perf_counter()
    volumes = list(volumes)
    if len(volumes) < 2:
        raise PrimageInputError("motion correction needs a series of at least 2 frames")
    frames = [check_volume(v, f"frame {i}") for i, v in enumerate(volumes)]
    for index, frame in enumerate(frames[1:], start=1):
        if not same_geometry(frames[0], frame):
            raise PrimageInputError(f"frame {index} is on another voxel grid than frame 0")
    if values is not None and len(values) != len(frames):
        raise PrimageInputError(f"{len(frames)} frames but {len(values)} index values")
    chosen = parse_reference(reference, len(frames), baseline_frames)
    settings = settings if settings is not None else motion_settings(transform)
    kind = settings["stages"][-1]["stage"] if "stages" in settings else transform
    if kind not in MOTION_TRANSFORMS:
        raise PrimageInputError("motion correction takes rigid or affine stages only")
    fixed = (
        frames[chosen["index"]]
        if chosen["kind"] == "index"
        else _mean([frames[i] for i in chosen["frames"]])
    )
    centre = image_centre(fixed)

    identity = sitk.Euler3DTransform() if kind == "rigid" else sitk.AffineTransform(3)
    identity.SetCenter(centre.tolist())
    transforms: list[sitk.Transform] = []
    corrected: list[sitk.Image] = []
    rows: list[dict[str, Any]] = []
    previous = None
    for index, frame in enumerate(frames):
        step = sub_progress(report, index / len(frames), (index + 1) / len(frames))
        if chosen["kind"] == "index" and index == chosen["index"]:
            result_tx = sitk.Transform(identity)
            moved = frame  # the reference itself: unchanged, not interpolated
        else:
            result = register_images(
                fixed,
                frame,
                settings,
                fixed_mask=mask,
                initial_transform=previous,
                progress=lambda f, m, s=step, i=index: s(f, f"frame {i}: {m}"),
            )
            result_tx = as_single_linear(result.transform, centre, kind)
            moved = sitk.Resample(frame, fixed, result_tx, sitk.sitkBSpline, 0.0, sitk.sitkFloat32)
        previous = result_tx
        transforms.append(result_tx)
        corrected.append(sitk.Cast(moved, sitk.sitkFloat32))
        row: dict[str, Any] = {"frame": index}
        if values is not None:
            row["value"] = float(values[index])
        row.update({k: round(v, 4) for k, v in motion_parameters(result_tx, centre).items()})
        before = similarity(
            fixed, frame, sitk.Transform(3, sitk.sitkIdentity), mask_region(mask, fixed)
        )
        after = similarity(fixed, frame, result_tx, mask_region(mask, fixed))
        row["mutual_information_before"] = before["mutual_information"]
        row["mutual_information_after"] = after["mutual_information"]
        rows.append(row)
    for row, value in zip(rows, framewise_displacement(rows), strict=True):
        row["framewise_displacement_mm"] = round(value, 4)
    report(1.0, "motion correction done")
    return MotionResult(
        volumes=corrected,
        transforms=transforms,
        table=rows,
        reference=chosen,
        settings=settings,
        seconds=round(time.perf_counter() - start, 3),
    )


def mask_region(mask: sitk.Image | None, fixed: sitk.Image) -> sitk.Image | None:
    """The mask on the fixed grid (nearest neighbour), or None."""
    if mask is None:
        return None
    return mask_on_image_grid(mask, fixed, role="motion mask")


#: Column order and units of the motion table (CSV and Slicer table).
TABLE_COLUMNS = (
    "frame",
    "value",
    "tx_mm",
    "ty_mm",
    "tz_mm",
    "rx_deg",
    "ry_deg",
    "rz_deg",
    "framewise_displacement_mm",
    "mutual_information_before",
    "mutual_information_after",
)


def table_csv(rows: Sequence[dict[str, Any]]) -> str:
    """The motion table as CSV text (columns of :data:`TABLE_COLUMNS` that are present)."""
    columns = [c for c in TABLE_COLUMNS if any(c in row for row in rows)]
    lines = [",".join(columns)]
    for row in rows:
        lines.append(",".join("" if row.get(c) is None else str(row[c]) for c in columns))
    return "\n".join(lines) + "\n"
