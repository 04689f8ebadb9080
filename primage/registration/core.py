"""Register one 3D image to another: rigid -> affine -> B-spline, multi-resolution.

Convention (as everywhere in PRIMAGE): the resulting transform maps points of the FIXED
image to the MOVING image (LPS, mm), so ``sitk.Resample(moving, fixed, transform)`` puts
the moving image on the fixed grid. It is a ``CompositeTransform`` whose parts are, from
outermost to innermost: the user's initial transform (if any), the initialisation
translation (only when the first stage is a B-spline), then one transform per stage
(``Euler3DTransform``, ``AffineTransform``, ``BSplineTransform``). Each stage optimises
its own transform with the stages before it held fixed, as elastix and ANTs do.

Method choices (why):

* The metric gradient is taken with central differences at each sample instead of
  SimpleITK's default pre-smoothed gradient images: on anisotropic MR (4 mm slices) the
  smoothed gradient biased mutual-information registrations by about 1 mm.
* Samples are counted, not a percentage (``samples`` per level, inside the fixed mask when
  one is given), so a large CT costs the same as a small MR and a small mask still gets
  enough samples. Random samples use a fixed seed: the same inputs give the same result.
* Masks restrict the metric (the PRIMAGE re-registration route); they are dilated by
  ``mask_dilation_mm`` first so the edges that carry the alignment are inside.
* Never worse than the start: the candidate starts (the headers' alignment, the preset's
  centres of mass or image centres, a user's initial transform) are compared by the
  metric and the best one is used; after the optimisation the result is kept only when
  the metric on fresh, denser samples at full resolution is better than at the start by
  more than its sampling noise. Otherwise the start is returned and
  ``RegistrationResult.acceptance`` says so (and why).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk

from primage.errors import PrimageInputError
from primage.io import count_nonfinite, mask_on_image_grid, same_geometry
from primage.progress import ProgressCallback, no_progress
from primage.registration.stages import validate_settings


class RegistrationFailed(RuntimeError):
    """The optimisation failed on valid input (e.g. the images drifted apart)."""


@dataclass
class RegistrationResult:
    """Outcome of :func:`register_images`.

    ``transform`` maps fixed to moving points (LPS, mm). ``stages`` holds one record per
    stage (parameters as applied, iterations and metric value per level, optimiser stop
    condition, seconds); ``initialisation`` the start (method, centre and translation in
    mm, and every candidate start with its metric value); ``settings`` every setting as
    applied. ``acceptance`` is the "never worse" check: ``kept`` (``"optimised"`` or
    ``"start"``), the metric at the start and after the optimisation on fresh samples
    (``cost_start``, ``cost_optimised``: lower is better), the ``improvement`` and the
    ``noise`` it had to exceed, ``reason`` and, when the start was kept, ``advice``.
    """

    transform: sitk.CompositeTransform
    settings: dict[str, Any]
    stages: list[dict[str, Any]] = field(default_factory=list)
    initialisation: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    identical_inputs: bool = False
    acceptance: dict[str, Any] = field(default_factory=dict)

    @property
    def kept_start(self) -> bool:
        """True when the optimisation was not better than the start and the start was returned."""
        return self.acceptance.get("kept") == "start"

    @property
    def stage_transforms(self) -> list[sitk.Transform]:
        """The optimised transform of each stage, in stage order."""
        count = len(self.stages)
        parts = flatten_transform(self.transform)
        return parts[len(parts) - count :] if count else []


def flatten_transform(transform: sitk.Transform) -> list[sitk.Transform]:
    """Parts of a (nested) composite, outermost first; other transforms as a one-item list."""
    transform = transform.Downcast() if hasattr(transform, "Downcast") else transform
    if isinstance(transform, sitk.CompositeTransform):
        parts: list[sitk.Transform] = []
        for index in range(transform.GetNumberOfTransforms()):
            parts.extend(flatten_transform(transform.GetNthTransform(index)))
        return parts
    return [transform]


def compose(parts: Sequence[sitk.Transform]) -> sitk.CompositeTransform:
    """One flat ``CompositeTransform`` applying ``parts[0](parts[1](...(x)))``."""
    flat = [part for item in parts for part in flatten_transform(item)]
    composite = sitk.CompositeTransform(3)
    for part in flat:
        composite.AddTransform(part)
    return composite


#: Transforms that map a box onto the hull of its mapped corners (no deformation).
_LINEAR_TRANSFORMS = {
    sitk.sitkIdentity, sitk.sitkTranslation, sitk.sitkScale, sitk.sitkScaleLogarithmic,
    sitk.sitkEuler, sitk.sitkSimilarity, sitk.sitkQuaternionRigid, sitk.sitkVersor,
    sitk.sitkVersorRigid, sitk.sitkScaleSkewVersor, sitk.sitkScaleVersor, sitk.sitkAffine,
}  # fmt: skip
#: Voxels kept around the viewed region: cubic B-spline support (2) plus the decay of its
#: prefilter (pole 0.268: 0.268^10 < 2e-6), so interpolated values do not change.
_VIEW_SUPPORT_VOXELS = 12
#: Crop only when it saves at least this fraction of the moving voxels.
_VIEW_MIN_SAVING = 0.3


def crop_to_view(
    moving: sitk.Image,
    fixed: sitk.Image,
    transforms: Sequence[sitk.Transform],
    margin_mm: float = 0.0,
) -> sitk.Image:
    """The part of ``moving`` that the fixed grid sees through any of ``transforms``
    (fixed -> moving points), grown by ``margin_mm`` and by the interpolators' support.

    Resampling or registering with the crop gives the result of the whole image (linear
    transforms map the fixed box inside the crop), while smoothing and B-spline
    prefiltering work on far fewer voxels: a 1 mm whole-body CT seen by an abdominal
    MR. ``moving`` itself is returned when a transform deforms (B-spline, displacement
    field), when the crop would save little, or when nothing of it is seen.
    """
    region = view_region(moving, fixed, transforms, margin_mm)
    return moving if region is None else sitk.RegionOfInterest(moving, region[1], region[0])


def view_region(
    moving: sitk.Image,
    fixed: sitk.Image,
    transforms: Sequence[sitk.Transform],
    margin_mm: float = 0.0,
    shrinks: Sequence[int] = (),
) -> tuple[list[int], list[int]] | None:
    """(first index, size) of :func:`crop_to_view`'s region of ``moving``, or None when
    the whole image is to be used. With ``shrinks`` (a pyramid's factors) the region is
    placed so that its shrunk levels are parts of the whole image's."""
    parts = [part for t in transforms for part in flatten_transform(t)]
    if not parts or any(part.GetTransformEnum() not in _LINEAR_TRANSFORMS for part in parts):
        return None
    size = np.array(fixed.GetSize(), float)
    corners = [
        fixed.TransformContinuousIndexToPhysicalPoint(
            [-0.5 + corner[k] * size[k] for k in range(3)]
        )
        for corner in np.ndindex(2, 2, 2)
    ]
    indices = np.array(
        [
            moving.TransformPhysicalPointToContinuousIndex(transform.TransformPoint(point))
            for transform in transforms
            for point in corners
        ]
    )
    grow = margin_mm / np.array(moving.GetSpacing()) + _VIEW_SUPPORT_VOXELS
    moving_size = np.array(moving.GetSize())
    low = np.maximum(np.floor(indices.min(axis=0) - grow), 0).astype(int)
    high = np.minimum(np.ceil(indices.max(axis=0) + grow), moving_size - 1).astype(int)
    if np.any(high < low):
        return None
    factors = sorted({int(f) for f in shrinks if int(f) > 1})
    first, crop = [], []
    for axis in range(3):
        if factors:
            start, count = _shrink_aligned(
                int(low[axis]), int(high[axis]), int(moving_size[axis]), factors
            )
        else:
            start, count = int(low[axis]), int(high[axis] - low[axis] + 1)
        first.append(start)
        crop.append(count)
    if np.prod(crop) > (1.0 - _VIEW_MIN_SAVING) * np.prod(moving_size):
        return None
    return first, crop


def check_volume(image: sitk.Image, role: str) -> sitk.Image:
    """A 3D scalar image without NaN/inf as Float32 (refuses anything else, clearly)."""
    if not isinstance(image, sitk.Image):
        raise PrimageInputError(f"{role} is not an image")
    if image.GetDimension() != 3:
        what = "a 4D series" if image.GetDimension() == 4 else f"{image.GetDimension()}D"
        raise PrimageInputError(
            f"{role} is {what}; registration needs a 3D volume (extract one volume of a "
            "series, or use 'primage register motion' for a series)"
        )
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise PrimageInputError(
            f"{role} has several components per voxel; a scalar image is needed"
        )
    if min(image.GetSize()) < 4:
        raise PrimageInputError(
            f"{role} has size {image.GetSize()}; registration needs at least 4 voxels along "
            "every axis"
        )
    bad = count_nonfinite(image)
    if bad:
        raise PrimageInputError(
            f"{role} has {bad} NaN or infinite voxels; replace them first (e.g. '--nonfinite zero')"
        )
    return sitk.Cast(image, sitk.sitkFloat32)


def dilate_mask(mask: sitk.Image, radius_mm: float) -> sitk.Image:
    """Binary mask grown by ``radius_mm`` in physical distance (exact for any spacing)."""
    if radius_mm <= 0:
        return mask
    distance = sitk.SignedMaurerDistanceMap(
        mask, insideIsPositive=False, squaredDistance=False, useImageSpacing=True
    )
    return sitk.Cast(distance <= radius_mm, sitk.sitkUInt8)


def image_centre(image: sitk.Image) -> np.ndarray:
    """Physical centre (mm, LPS) of an image grid."""
    return np.array(
        image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in image.GetSize()])
    )


#: Voxels enough for a centre of mass: a larger image is subsampled (every k-th voxel
#: per axis, at its own position), which moves the centre by far less than a voxel.
_MOMENTS_VOXELS = 4_000_000


def centre_of_mass(image: sitk.Image) -> np.ndarray | None:
    """Intensity-weighted centre (mm, LPS) of ``image``, weights shifted to be >= 0 (CT
    air, -1000 HU, weighs 0); None when every weight is 0."""
    factor = math.ceil((image.GetNumberOfPixels() / _MOMENTS_VOXELS) ** (1.0 / 3.0))
    values = sitk.GetArrayViewFromImage(image)[::factor, ::factor, ::factor]
    weights = values.astype(np.float64)
    low = float(weights.min())
    if low < 0:
        weights -= low
    total = float(weights.sum())
    if not np.isfinite(total) or total <= 0:
        return None
    index = []
    for axis in (2, 1, 0):  # x, y, z from the (z, y, x) array
        others = tuple(a for a in range(3) if a != axis)
        marginal = weights.sum(axis=others)
        index.append(factor * float(np.dot(marginal, np.arange(marginal.size))) / total)
    return np.array(image.TransformContinuousIndexToPhysicalPoint(index))


def initialise(fixed: sitk.Image, moving: sitk.Image, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Centre (mm, fixed space) and start translation (mm) for ``none``, ``geometry``
    (image centres), ``moments`` (centres of mass, as ITK's CenteredTransformInitializer)."""
    if method == "none":
        return image_centre(fixed), np.zeros(3)
    if method == "geometry":
        centre = image_centre(fixed)
        return centre, image_centre(moving) - centre
    if method != "moments":
        raise PrimageInputError(f"unknown initialisation {method!r}")
    centres = [centre_of_mass(fixed), centre_of_mass(moving)]
    if centres[0] is None or centres[1] is None:
        raise PrimageInputError(
            f"'{method}' initialisation failed (an image with no signal?); use another "
            "initialisation or an initial transform"
        )
    return centres[0], centres[1] - centres[0]


def overlap_fraction(
    fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform, mask: sitk.Image | None
) -> float:
    """Fraction of (masked) fixed voxels that ``transform`` maps inside the moving grid,
    estimated on a sub-grid of at most ~32^3 voxels."""
    factor = max(1, int(math.ceil(max(fixed.GetSize()) / 32)))
    coarse = sitk.Shrink(sitk.Cast(fixed, sitk.sitkUInt8) * 0, [factor] * 3)
    ones = sitk.Image(moving.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(moving)
    # Keep the resampled image referenced: a view of a temporary is freed memory.
    mapped = sitk.Resample(ones, coarse, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    inside = sitk.GetArrayFromImage(mapped)
    if mask is not None:
        region = sitk.Resample(mask, coarse, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        selected = sitk.GetArrayFromImage(region) > 0
        if not np.any(selected):
            return 1.0  # a mask thinner than the sub-grid: leave the check to the metric
        return float(np.count_nonzero(inside[selected]) / np.count_nonzero(selected))
    return float(np.count_nonzero(inside) / inside.size)


def _mesh_size(fixed: sitk.Image, spacing_mm: float) -> list[int]:
    extent = np.array(fixed.GetSize()) * np.array(fixed.GetSpacing())
    return [max(1, int(round(e / spacing_mm))) for e in extent]


def _identity_stage(kind: str, centre: np.ndarray, fixed: sitk.Image, stage: dict):
    if kind == "rigid":
        tx = sitk.Euler3DTransform()
        tx.SetCenter(centre.tolist())
        return tx
    if kind == "affine":
        tx = sitk.AffineTransform(3)
        tx.SetCenter(centre.tolist())
        return tx
    mesh = _mesh_size(fixed, stage["control_point_spacing_mm"])
    return sitk.BSplineTransformInitializer(fixed, mesh, 3)


class Pyramid:
    """Smoothed and shrunk copies of an image, computed once per (shrink, sigma).

    Every stage, level and sampling round at the same resolution shares them (SimpleITK
    would rebuild its pyramid at each run). Smoothing: recursive Gaussian of ``sigma``
    voxels per axis; shrinking: every ``shrink``-th voxel, as ITK's registration does.
    """

    def __init__(self, image: sitk.Image) -> None:
        self.image = image
        self._levels: dict[tuple[int, float], sitk.Image] = {}

    def level(self, shrink: int, sigma_voxels: float) -> sitk.Image:
        key = (int(shrink), float(sigma_voxels))
        if key not in self._levels:
            image = self.image
            if sigma_voxels > 0 and shrink > 1 and image.GetPixelID() == sitk.sitkFloat32:
                image = smooth_and_shrink(image, sigma_voxels, shrink_factors(image, shrink))
            elif sigma_voxels > 0:
                sigma = [sigma_voxels * s for s in image.GetSpacing()]
                image = sitk.SmoothingRecursiveGaussian(image, sigma)
            elif shrink > 1:
                image = sitk.Shrink(image, shrink_factors(image, shrink))
            self._levels[key] = image
        return self._levels[key]


def smooth_and_shrink(image: sitk.Image, sigma_voxels: float, factors: Sequence[int]) -> sitk.Image:
    """``Shrink(SmoothingRecursiveGaussian(image, sigma_voxels x spacing), factors)``, the
    same voxels bit for bit, for a fraction of the work: the Gaussian is one recursive
    filter per axis, and an axis can be thinned out as soon as it is filtered (the
    filters of the other axes act on each of its lines apart). ITK's order is kept (the
    last axis, then the others in order; Float32 between the passes), so only the first
    pass runs on the whole image: a CT pyramid's coarsest level 1.7x faster. The voxels
    kept and the geometry are those of ITK's one-go shrink (its grid, centred on the
    image, is taken from a UInt8 stand-in). Float32 images."""
    if image.GetPixelID() != sitk.sitkFloat32:
        raise ValueError("smooth_and_shrink takes Float32 images")
    dimension = image.GetDimension()
    factors = [int(f) for f in factors]
    stand_in = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    stand_in.CopyInformation(image)
    grid = sitk.Shrink(stand_in, factors)
    del stand_in
    # ITK's shrink keeps input voxel first + k x factor on each axis, first being the
    # input index of the shrunk grid's origin (rounded, at least 0).
    first = [max(0, i) for i in image.TransformPhysicalPointToIndex(grid.GetOrigin())]
    out = image
    for axis in [dimension - 1, *range(dimension - 1)]:
        gaussian = sitk.RecursiveGaussianImageFilter()
        gaussian.SetSigma(float(sigma_voxels) * image.GetSpacing()[axis])
        gaussian.SetDirection(axis)
        gaussian.SetOrder(sitk.RecursiveGaussianImageFilter.ZeroOrder)
        gaussian.SetNormalizeAcrossScale(False)
        out = gaussian.Execute(out)
        if factors[axis] > 1:
            cut = [slice(None)] * dimension
            stop = first[axis] + factors[axis] * grid.GetSize()[axis]
            cut[axis] = slice(first[axis], stop, factors[axis])
            out = out[tuple(cut)]
    out.CopyInformation(grid)
    return out


def shrink_factors(image: sitk.Image, shrink: int) -> list[int]:
    """Per-axis factors of a pyramid level: ``shrink``, at most half the axis."""
    return [max(1, min(int(shrink), n // 2)) for n in image.GetSize()]


def _shrunk_axis(size: int, factor: int) -> tuple[np.ndarray, float]:
    """What ITK's ShrinkImageFilter keeps of one axis of ``size`` voxels: the input
    indices it picks and the input index its first output voxel is placed at."""
    ramp = sitk.GetImageFromArray(np.arange(size, dtype=np.float32)[None, :])
    shrunk = sitk.Shrink(ramp, [max(1, min(factor, size // 2)), 1])
    return sitk.GetArrayViewFromImage(shrunk)[0].copy(), shrunk.GetOrigin()[0]


def _shrink_aligned(low: int, high: int, size: int, factors: Sequence[int]) -> tuple[int, int]:
    """(first, count) of a crop of one axis containing [low, high] whose ITK shrinks by
    every factor pick the same voxels at the same places as the shrinks of the whole
    axis (ITK centres its shrunk grid, so a crop anywhere would shift the picks); the
    whole axis when no such crop is near."""
    wholes = {f: _shrunk_axis(size, f) for f in factors}
    reach = 2 * max(factors, default=1)
    for first in range(low, max(0, low - reach) - 1, -1):
        for stop in range(high + 1, min(size, high + 1 + reach) + 1):
            count = stop - first
            for f, (picks, origin) in wholes.items():
                mine, my_origin = _shrunk_axis(count, f)
                mine = mine + first
                where = np.searchsorted(picks, mine[0])
                if (
                    min(f, count // 2) != min(f, size // 2)
                    or where + mine.size > picks.size
                    or not np.array_equal(picks[where : where + mine.size], mine)
                    or abs((my_origin + first) - (origin + where * max(1, min(f, size // 2))))
                    > 1e-6
                ):
                    break
            else:
                return first, count
    return 0, size


def register_images(
    fixed: sitk.Image,
    moving: sitk.Image,
    settings: Mapping[str, Any],
    *,
    fixed_mask: sitk.Image | None = None,
    moving_mask: sitk.Image | None = None,
    initial_transform: sitk.Transform | None = None,
    progress: ProgressCallback | None = None,
) -> RegistrationResult:
    """Register ``moving`` to ``fixed`` with the stages of ``settings`` (see
    :func:`primage.registration.stages.validate_settings`; a loaded preset works as is).

    Masks (any grid; put on their image's grid with nearest neighbour, empty masks
    refused) restrict the metric. The start is the best by the metric of: the headers'
    alignment (identity), the preset's ``initialisation`` (``moments``: centres of mass,
    ``geometry``: image centres; ``none`` adds nothing) and ``initial_transform``
    (fixed -> moving), which stays the outermost part of the result when it is chosen.
    The optimised result is returned only when it is better than the start on fresh
    samples; otherwise the start (see ``RegistrationResult.acceptance``). A moving image
    identical to the fixed one (same grid and voxels) gives the identity without
    optimising. ``progress(fraction, message)`` may raise to cancel; the exception is
    re-raised once the optimiser has stopped.
    """
    settings = validate_settings(settings)
    report = progress or no_progress
    start_time = time.perf_counter()
    fixed = check_volume(fixed, "fixed image")
    moving = check_volume(moving, "moving image")
    if fixed_mask is not None:
        fixed_mask = mask_on_image_grid(fixed_mask, fixed, role="fixed mask")
    if moving_mask is not None:
        moving_mask = mask_on_image_grid(moving_mask, moving, role="moving mask")
    if initial_transform is not None and initial_transform.GetDimension() != 3:
        raise PrimageInputError(
            f"the initial transform is {initial_transform.GetDimension()}D; a 3D transform is needed"
        )
    stages = settings["stages"]

    identical = (
        initial_transform is None
        and same_geometry(fixed, moving, tolerance=1e-6)
        and np.array_equal(sitk.GetArrayViewFromImage(fixed), sitk.GetArrayViewFromImage(moving))
    )
    sample_fixed_mask = (
        dilate_mask(fixed_mask, settings["mask_dilation_mm"]) if fixed_mask is not None else None
    )
    sample_moving_mask = (
        dilate_mask(moving_mask, settings["mask_dilation_mm"]) if moving_mask is not None else None
    )
    sample_domain = float(
        np.count_nonzero(sitk.GetArrayViewFromImage(sample_fixed_mask))
        if sample_fixed_mask is not None
        else np.prod(fixed.GetSize())
    )
    candidates = [] if identical else _start_candidates(fixed, moving, settings, initial_transform)
    # Only the part of the moving image that the fixed image can see from any start, with
    # room for the optimiser to move: the same metric, far less smoothing of a large CT.
    region = view_region(
        moving,
        fixed,
        [c.transform() for c in candidates],
        view_margin_mm(fixed),
        shrinks=[f for stage in stages for f in stage["shrink_factors"]],
    )
    if region is not None:
        moving = sitk.RegionOfInterest(moving, region[1], region[0])
        if sample_moving_mask is not None:
            sample_moving_mask = sitk.RegionOfInterest(sample_moving_mask, region[1], region[0])
    pyramids = (Pyramid(fixed), Pyramid(moving))
    scorer = _Scorer(pyramids, stages, sample_fixed_mask, sample_moving_mask)

    if identical:
        chosen = Candidate("identical inputs", [], image_centre(fixed), np.zeros(3))
        initialisation = chosen.record()
    else:
        chosen, initialisation = _choose_start(
            candidates, fixed, moving, settings, initial_transform, sample_fixed_mask, scorer
        )
    if region is not None:
        initialisation["moving_region"] = {"index": region[0], "size": region[1]}
    centre, translation = chosen.centre, chosen.translation

    def start_parts() -> list[sitk.Transform]:
        """The outer parts and one transform per stage as they are before optimising."""
        parts = list(chosen.outer)
        if np.any(translation != 0) and stages[0]["stage"] == "bspline":
            parts.append(chosen.euler())  # a B-spline cannot hold the start: its own part
        for index, stage in enumerate(stages):
            transform = _identity_stage(stage["stage"], centre, fixed, stage)
            if index == 0 and stage["stage"] != "bspline":
                transform.SetTranslation(translation.tolist())
            parts.append(transform)
        return parts

    initial_parts = start_parts()
    fixed_parts_count = len(initial_parts) - len(stages)
    outer = initial_parts[:fixed_parts_count]
    parts: list[sitk.Transform] = []
    records: list[dict[str, Any]] = []
    for index, stage in enumerate(stages):
        stage_start = time.perf_counter()
        transform = initial_parts[fixed_parts_count + index]
        record: dict[str, Any] = {**stage, "levels": []}
        if identical:
            record.update(skipped="moving image equals fixed image: identity", seconds=0.0)
            parts.append(transform)
            records.append(record)
            continue
        moving_initial = compose([*outer, *parts]) if (outer or parts) else None
        transform = _run_stage(
            pyramids,
            stage,
            transform,
            moving_initial,
            sample_fixed_mask,
            sample_moving_mask,
            sample_domain,
            settings["seed"],
            record,
            lambda fraction, message, i=index: report(
                (i + fraction) / len(stages), f"{stages[i]['stage']}: {message}"
            ),
        )
        record["seconds"] = round(time.perf_counter() - stage_start, 3)
        parts.append(transform)
        records.append(record)

    result_transform = compose([*outer, *parts])
    if identical:
        acceptance = {
            "kept": "start",
            "reason": "the moving image equals the fixed image: the identity, nothing to optimise",
        }
    else:
        acceptance = _accept(scorer, compose(start_parts()), result_transform, settings["seed"])
        if acceptance["kept"] == "start":
            result_transform = compose(start_parts())
    report(1.0, "registration done")
    return RegistrationResult(
        transform=result_transform,
        settings=settings,
        stages=records,
        initialisation=initialisation,
        seconds=round(time.perf_counter() - start_time, 3),
        identical_inputs=identical,
        acceptance=acceptance,
    )


@dataclass
class Candidate:
    """One start: outer parts (a user's initial transform) and a rigid start (centre and
    translation, mm) held by the first stage."""

    method: str
    outer: list[sitk.Transform]
    centre: np.ndarray
    translation: np.ndarray
    cost: float | None = None

    def euler(self) -> sitk.Euler3DTransform:
        start = sitk.Euler3DTransform()
        start.SetCenter(self.centre.tolist())
        start.SetTranslation(self.translation.tolist())
        return start

    def transform(self) -> sitk.CompositeTransform:
        return compose([*self.outer, self.euler()])

    def record(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "centre_mm": self.centre.round(4).tolist(),
            "translation_mm": self.translation.round(4).tolist(),
        }


#: Fresh samples of the "never worse" check: ``_CHECK_SETS`` disjoint sets of voxels of
#: the full-resolution fixed image, each a sub-grid (every f-th voxel along each axis, at
#: a different offset) of at most about ``_CHECK_SAMPLES`` voxels (all of them when the
#: fixed image, or its dilated mask, is smaller) and at least ``_CHECK_FACTOR`` times the
#: largest per-level sample count of the optimisation.
_CHECK_SETS = 3
_CHECK_SAMPLES = 150000
_CHECK_FACTOR = 4
#: The optimised result must beat the start by this many standard errors of the paired
#: difference over the sets (and by a relative ``_CHECK_MIN_GAIN``): a gain within the
#: sampling noise is not evidence that the optimiser improved anything.
_CHECK_SIGMAS = 2.0
_CHECK_MIN_GAIN = 1e-3


class _Scorer:
    """The metric of the registration (a stage's kind and bins, its masks) evaluated for
    a fixed -> moving transform on given images.

    ``MetricEvaluate`` ignores SimpleITK's sampling settings and uses every voxel of the
    fixed image (inside the fixed mask), so a sample is chosen by the fixed image given:
    a pyramid level, or a sub-grid of the full-resolution image.
    """

    def __init__(self, pyramids, stages, fixed_mask, moving_mask) -> None:
        self.pyramids = pyramids
        self.stages = stages
        self.fixed_mask = fixed_mask
        self.moving_mask = moving_mask

    def cost(self, transform, fixed, moving, stage: dict | None = None) -> float | None:
        """Metric value (lower is better); None when too few voxels fall in the overlap."""
        stage = stage or self.stages[-1]
        method = sitk.ImageRegistrationMethod()
        if stage["metric"] == "mattes":
            method.SetMetricAsMattesMutualInformation(stage["histogram_bins"])
        elif stage["metric"] == "correlation":
            method.SetMetricAsCorrelation()
        else:
            method.SetMetricAsMeanSquares()
        method.MetricUseFixedImageGradientFilterOff()
        method.MetricUseMovingImageGradientFilterOff()
        method.SetMetricSamplingStrategy(method.NONE)
        method.SetInterpolator(sitk.sitkLinear)
        if self.fixed_mask is not None:
            method.SetMetricFixedMask(self.fixed_mask)
        if self.moving_mask is not None:
            method.SetMetricMovingMask(self.moving_mask)
        method.SetMovingInitialTransform(transform)
        method.SetInitialTransform(sitk.TranslationTransform(3), inPlace=False)
        try:
            value = method.MetricEvaluate(fixed, moving)
        except RuntimeError:
            return None
        return float(value) if math.isfinite(value) else None

    def level_cost(self, transform, shrink: int, sigma: float, stage: dict) -> float | None:
        """The metric on one pyramid level (every voxel of it)."""
        return self.cost(
            transform,
            self.pyramids[0].level(shrink, sigma),
            self.pyramids[1].level(shrink, sigma),
            stage,
        )

    def check_sets(self, minimum: int, seed: int) -> list[sitk.Image]:
        """Disjoint sub-grids of the full-resolution fixed image (fresh samples)."""
        fixed = self.pyramids[0].image
        count = (
            np.count_nonzero(sitk.GetArrayViewFromImage(self.fixed_mask))
            if self.fixed_mask is not None
            else fixed.GetNumberOfPixels()
        )
        target = max(_CHECK_SAMPLES, minimum)
        factor = max(1, math.ceil((count / target) ** (1.0 / 3.0)))
        while factor > 1 and count / factor**3 < minimum:
            factor -= 1
        if factor == 1:
            factor = 2 if count >= 8 * minimum else 1
        if factor == 1:
            return [fixed]  # small: every voxel, one set (no noise estimate needed)
        offsets = [(i, j, k) for i in range(factor) for j in range(factor) for k in range(factor)]
        picks = np.random.default_rng(seed).choice(len(offsets), _CHECK_SETS, replace=False)
        return [fixed[i::factor, j::factor, k::factor] for i, j, k in (offsets[p] for p in picks)]


def view_margin_mm(fixed: sitk.Image) -> float:
    """Room (mm) left around the moving region a registration sees from its starts: a
    quarter of the fixed image's largest extent, at least 30 mm."""
    extent = np.array(fixed.GetSize()) * np.array(fixed.GetSpacing())
    return max(30.0, 0.25 * float(extent.max()))


def _start_candidates(fixed, moving, settings, initial_transform) -> list[Candidate]:
    """The starts to score: the headers, the user's initial transform, the preset's
    initialisation."""
    candidates = [Candidate("headers", [], image_centre(fixed), np.zeros(3))]
    if initial_transform is not None:
        candidates.insert(
            0, Candidate("initial transform", [initial_transform], image_centre(fixed), np.zeros(3))
        )
    if settings["initialisation"] != "none":
        centre, translation = initialise(fixed, moving, settings["initialisation"])
        candidates.append(Candidate(settings["initialisation"], [], centre, translation))
    return candidates


def _choose_start(candidates, fixed, moving, settings, initial_transform, fixed_mask, scorer):
    """The candidate starts, each scored by the metric on the first stage's coarsest level
    (smoothed, so a start a few voxels off is not penalised for detail); the best one."""
    first = settings["stages"][0]
    coarse = {
        "shrink": first["shrink_factors"][0],
        "sigma": first["smoothing_sigmas_voxels"][0],
        "stage": first,
    }
    usable = []
    for candidate in candidates:
        if overlap_fraction(fixed, moving, candidate.transform(), fixed_mask) == 0.0:
            continue
        candidate.cost = scorer.level_cost(candidate.transform(), **coarse)
        if candidate.cost is not None:
            usable.append(candidate)
    if not usable:
        raise PrimageInputError(
            "the fixed and moving images do not overlap in physical space"
            + (
                " after the initial transform; check that it maps fixed to moving points"
                if initial_transform is not None
                else f" (initialisation '{settings['initialisation']}'); use initialisation "
                "'geometry' or 'moments', or give an initial transform"
            )
        )
    chosen = min(usable, key=lambda c: c.cost)
    record = chosen.record()
    record["candidates"] = [
        {"method": c.method, "cost": None if c.cost is None else round(c.cost, 6)}
        for c in candidates
    ]
    record["chosen_because"] = (
        "the only candidate"
        if len(candidates) == 1
        else "the only start that overlaps"
        if len(usable) == 1
        else "lowest metric value of the candidates"
    )
    return chosen, record


def _accept(scorer: _Scorer, start: sitk.Transform, result: sitk.Transform, seed: int) -> dict:
    """Keep the optimised ``result`` only when its metric on fresh, denser samples at full
    resolution is lower than the ``start``'s by more than the sampling noise."""
    stage = scorer.stages[-1]
    sets = scorer.check_sets(_CHECK_FACTOR * max(stage["samples"]), seed + 104729)
    moving = scorer.pyramids[1].image
    before = [scorer.cost(start, grid, moving) for grid in sets]
    after = [scorer.cost(result, grid, moving) for grid in sets]
    record: dict[str, Any] = {
        "metric": stage["metric"],
        "samples_per_set": int(sets[0].GetNumberOfPixels()),
        "sets": len(sets),
    }
    if any(value is None for value in before + after):
        if all(value is not None for value in before) and any(value is None for value in after):
            record.update(
                kept="start",
                reason="after the optimisation too little of the image overlaps to measure "
                "the metric: the start is returned",
                advice="give masks or an initial transform, or check the images",
            )
            return record
        record.update(kept="optimised", reason="the metric could not be measured at the start")
        return record
    gains = np.array(before) - np.array(after)
    gain = float(gains.mean())
    noise = float(gains.std(ddof=1) / math.sqrt(len(gains))) if len(gains) > 1 else 0.0
    needed = max(_CHECK_SIGMAS * noise, _CHECK_MIN_GAIN * abs(float(np.mean(before))))
    record.update(
        cost_start=round(float(np.mean(before)), 6),
        cost_optimised=round(float(np.mean(after)), 6),
        improvement=round(gain, 6),
        noise=round(noise, 6),
        needed=round(needed, 6),
    )
    if gain > needed:
        record.update(
            kept="optimised",
            reason=f"the metric improved by {gain:.4g} (needed > {needed:.2g}) on fresh samples",
        )
    else:
        record.update(
            kept="start",
            reason=f"the optimisation did not improve the metric on fresh samples "
            f"({record['cost_start']:.4f} -> {record['cost_optimised']:.4f}, gain "
            f"{gain:.2g}, needed > {needed:.2g}): the start is returned",
            advice="the start may already be aligned; otherwise give masks of the tumour "
            "and/or adjacent organs, an initial transform, or another preset",
        )
    return record


def _run_stage(
    pyramids: tuple[Pyramid, Pyramid],
    stage: dict,
    transform: sitk.Transform,
    moving_initial: sitk.Transform | None,
    fixed_mask: sitk.Image | None,
    moving_mask: sitk.Image | None,
    sample_domain: float,
    seed: int,
    record: dict,
    report: ProgressCallback,
) -> sitk.Transform:
    fixed = pyramids[0].image
    levels = len(stage["shrink_factors"])

    def images(level: int) -> tuple[sitk.Image, sitk.Image]:
        shrink = stage["shrink_factors"][level]
        sigma = stage["smoothing_sigmas_voxels"][level]
        return pyramids[0].level(shrink, sigma), pyramids[1].level(shrink, sigma)

    if stage["stage"] == "bspline":
        # One run per level on a fixed control-point grid (L-BFGS-B cannot follow a grid
        # refined between levels).
        transform = sitk.BSplineTransformInitializer(
            fixed, _mesh_size(fixed, stage["control_point_spacing_mm"]), 3
        )
        for level in range(levels):
            method = _method(stage, level, sample_domain, seed + 1009 * level, 1.0)
            method.SetInitialTransform(transform, inPlace=True)
            _execute(
                method,
                *images(level),
                stage,
                moving_initial,
                fixed_mask,
                moving_mask,
                record,
                report,
                level,
                levels,
                level=level,
            )
        return transform
    # Linear stages: each level runs in "rounds", each on a fresh random sample set with a
    # smaller first step (learning_rate x round_decay^round). Fresh samples average out the
    # sampling noise of the metric, as elastix's new samples every iteration do, at a
    # fraction of the cost of sampling every voxel.
    total_rounds = sum(stage["rounds"])
    done = 0
    for level in range(levels):
        step = stage["learning_rate"]
        for round_index in range(stage["rounds"][level]):
            round_seed = seed + 1009 * level + 7919 * round_index
            last_round = round_index == stage["rounds"][level] - 1
            method = _method(stage, level, sample_domain, round_seed, step, last_round)
            method.SetInitialTransform(transform, inPlace=True)
            _execute(
                method,
                *images(level),
                stage,
                moving_initial,
                fixed_mask,
                moving_mask,
                record,
                report,
                done,
                total_rounds,
                level=level,
                round_index=round_index,
            )
            done += 1
            step *= stage["round_decay"]
    return transform


def _method(
    stage: dict,
    level: int,
    sample_domain: float,
    seed: int,
    step: float,
    last_round: bool = True,
) -> sitk.ImageRegistrationMethod:
    """A registration method for one resolution level of ``stage``, run on that level's
    images from :class:`Pyramid` (so SimpleITK itself neither smooths nor shrinks)."""
    method = sitk.ImageRegistrationMethod()
    metric = stage["metric"]
    if metric == "mattes":
        method.SetMetricAsMattesMutualInformation(stage["histogram_bins"])
    elif metric == "correlation":
        method.SetMetricAsCorrelation()
    else:
        method.SetMetricAsMeanSquares()
    method.MetricUseFixedImageGradientFilterOff()
    method.MetricUseMovingImageGradientFilterOff()
    factor = stage["shrink_factors"][level]
    if stage["sampling"] == "none":
        method.SetMetricSamplingStrategy(method.NONE)
    else:
        strategy = method.RANDOM if stage["sampling"] == "random" else method.REGULAR
        method.SetMetricSamplingStrategy(strategy)
        percentage = min(1.0, stage["samples"][level] / max(sample_domain / factor**3, 1.0))
        method.SetMetricSamplingPercentagePerLevel([percentage], seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetShrinkFactorsPerLevel([1])
    method.SetSmoothingSigmasPerLevel([0.0])
    iterations = stage["iterations"][level]
    if stage["stage"] == "bspline":
        method.SetOptimizerAsLBFGSB(
            gradientConvergenceTolerance=1e-5,
            numberOfIterations=iterations,
            maximumNumberOfCorrections=5,
            maximumNumberOfFunctionEvaluations=4 * iterations,
            costFunctionConvergenceFactor=1e7,
        )
    else:
        # An intermediate round ends when its step has shrunk 20-fold; the last one
        # goes down to minimum_step (or its iterations).
        method.SetOptimizerAsRegularStepGradientDescent(
            learningRate=step,
            minStep=stage["minimum_step"]
            if last_round
            else max(stage["minimum_step"], 0.05 * step),
            numberOfIterations=iterations,
            relaxationFactor=stage["relaxation"],
            gradientMagnitudeTolerance=1e-8,
        )
        method.SetOptimizerScalesFromPhysicalShift()
    return method


def _execute(
    method: sitk.ImageRegistrationMethod,
    fixed: sitk.Image,
    moving: sitk.Image,
    stage: dict,
    moving_initial: sitk.Transform | None,
    fixed_mask: sitk.Image | None,
    moving_mask: sitk.Image | None,
    record: dict,
    report: ProgressCallback,
    done: int,
    total: int,
    *,
    level: int,
    round_index: int = 0,
) -> None:
    """Run one ``Execute`` with progress, cancel and per-level records."""
    if moving_initial is not None:
        method.SetMovingInitialTransform(moving_initial)
    if fixed_mask is not None:
        method.SetMetricFixedMask(fixed_mask)
    if moving_mask is not None:
        method.SetMetricMovingMask(moving_mask)
    failure: list[BaseException] = []
    levels = len(stage["shrink_factors"])

    def entry() -> dict:
        number = level
        while len(record["levels"]) <= number:
            index = len(record["levels"])
            record["levels"].append(
                {
                    "level": index,
                    "shrink_factor": stage["shrink_factors"][index],
                    "iterations": 0,
                    "rounds": 0,
                }
            )
        return record["levels"][number]

    def on_start() -> None:
        if failure:
            method.StopRegistration()
            return
        entry()["rounds"] += 1

    def on_iteration() -> None:
        if failure:
            method.StopRegistration()
            return
        item = entry()
        item["iterations"] += 1
        item["metric"] = round(float(method.GetMetricValue()), 6)
        iterations = stage["iterations"][level]
        within = min(method.GetOptimizerIteration() + 1, iterations) / iterations
        fraction = (done + within) / total
        try:
            report(
                fraction,
                f"level {level + 1}/{levels}"
                + (
                    f", round {round_index + 1}"
                    if stage.get("rounds", [1] * levels)[level] > 1
                    else ""
                )
                + f", metric {method.GetMetricValue():.4f}",
            )
        except BaseException as error:  # noqa: BLE001 - a cancel request, re-raised below
            failure.append(error)
            method.StopRegistration()

    method.AddCommand(sitk.sitkMultiResolutionIterationEvent, on_start)
    method.AddCommand(sitk.sitkIterationEvent, on_iteration)
    try:
        method.Execute(fixed, moving)
    except RuntimeError as error:
        text = str(error)
        if "overlap" in text.lower() or "outside" in text.lower():
            raise RegistrationFailed(
                f"{stage['stage']} stage failed: the images stopped overlapping during the "
                "optimisation (try an initialisation, an initial transform or masks)"
            ) from None
        last = text.strip().splitlines()[-1] if text.strip() else repr(error)
        raise RegistrationFailed(f"{stage['stage']} stage failed: {last[:300]}") from None
    if failure:
        raise failure[0]
    record["stop_condition"] = method.GetOptimizerStopConditionDescription()
    record["final_metric"] = round(float(method.GetMetricValue()), 6)


def resample_to_fixed(
    moving: sitk.Image,
    fixed: sitk.Image,
    transform: sitk.Transform,
    *,
    interpolation: str = "bspline",
    default_value: float | None = None,
) -> sitk.Image:
    """The moving image on the fixed grid through ``transform`` (fixed -> moving).

    ``interpolation``: ``bspline`` (cubic, images; Float32 out), ``linear`` (Float32) or
    ``nearest`` (label maps; pixel type kept). Outside the moving image the value is
    ``default_value``, by default the moving image's minimum (air in CT, 0 in MR) for
    images and 0 for label maps.
    """
    interpolators = {
        "bspline": sitk.sitkBSpline,
        "linear": sitk.sitkLinear,
        "nearest": sitk.sitkNearestNeighbor,
    }
    if interpolation not in interpolators:
        raise PrimageInputError(f"interpolation must be one of {', '.join(interpolators)}")
    if interpolation == "nearest":
        value = 0.0 if default_value is None else float(default_value)
        return sitk.Resample(
            crop_to_view(moving, fixed, [transform]),
            fixed,
            transform,
            sitk.sitkNearestNeighbor,
            value,
            moving.GetPixelID(),
        )
    if default_value is None:
        default_value = float(np.min(sitk.GetArrayViewFromImage(moving)))
    return sitk.Resample(
        crop_to_view(moving, fixed, [transform]),
        fixed,
        transform,
        interpolators[interpolation],
        float(default_value),
        sitk.sitkFloat32,
    )


def looks_like_label_map(image: sitk.Image) -> bool:
    """True for integer images with at most 256 distinct values (masks, label maps)."""
    if image.GetPixelID() not in (
        sitk.sitkUInt8,
        sitk.sitkInt8,
        sitk.sitkUInt16,
        sitk.sitkInt16,
        sitk.sitkUInt32,
        sitk.sitkInt32,
    ):
        return False
    return np.unique(sitk.GetArrayViewFromImage(image)).size <= 256


#: File endings ITK writes transforms to (HDF5 or text).
TRANSFORM_SUFFIXES = (".h5", ".hdf5", ".tfm", ".txt")


def read_transform(path, *, role: str = "initial transform") -> sitk.Transform:
    """Read an ITK transform file (fixed -> moving, LPS); clear errors for bad files."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise PrimageInputError(f"{role} file does not exist: {path}")
    try:
        transform = sitk.ReadTransform(str(path))
    except RuntimeError as error:
        lines = str(error).strip().splitlines()
        detail = f" ({lines[-1][:160]})" if lines else ""
        raise PrimageInputError(
            f"{role} {path} is not an ITK transform file SimpleITK can read{detail}"
        ) from None
    if transform.GetDimension() != 3:
        raise PrimageInputError(
            f"{role} {path} is a {transform.GetDimension()}D transform; a 3D transform is needed"
        )
    return transform


def write_transform(transform: sitk.Transform, path) -> None:
    """Write an ITK transform file atomically (temporary file with the same ending, then rename)."""
    import os
    import tempfile
    from pathlib import Path

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TRANSFORM_SUFFIXES:
        raise PrimageInputError(
            f"transform file {path} must end with one of {', '.join(TRANSFORM_SUFFIXES)}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=f".part{suffix}", dir=path.parent
    )
    os.close(handle)
    try:
        sitk.WriteTransform(transform, temporary)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def settings_for(
    preset: str | None = None,
    stages: str | Sequence[str] | None = None,
    *,
    initialisation: str | None = None,
    bspline_spacing_mm: float | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """Registration settings from a preset (default ``mr-mr``) and optional overrides.

    ``stages`` (``"rigid,affine,bspline"`` or names) picks the stages: a stage the preset
    defines keeps the preset's parameters, others take the defaults (so does a preset
    stage that stops above full resolution when it becomes the last linear stage). ``initialisation``,
    ``bspline_spacing_mm`` (control-point spacing of the B-spline stage) and ``seed``
    replace the preset's values. Returns validated settings plus ``preset`` (name).
    """
    from primage.registration.presets import load_preset
    from primage.registration.stages import stages_from_names

    loaded = load_preset(preset or "mr-mr")
    settings = {
        k: v for k, v in loaded.items() if k not in ("name", "description", "reference", "source")
    }
    if stages is not None:
        by_kind = {stage["stage"]: stage for stage in loaded["stages"]}
        chosen = stages_from_names(stages)
        linear = [s["stage"] for s in chosen if s["stage"] != "bspline"]
        picked = []
        for stage in chosen:
            preset_stage = by_kind.get(stage["stage"])
            # A preset stage that stops above full resolution (because a later stage of
            # the preset refines) must not end the linear part: take the defaults then.
            coarse_only = preset_stage is not None and min(preset_stage["shrink_factors"]) > 1
            last_linear = bool(linear) and stage["stage"] == linear[-1]
            picked.append(
                stage if preset_stage is None or (coarse_only and last_linear) else preset_stage
            )
        settings["stages"] = picked
    if bspline_spacing_mm is not None:
        if not any(stage["stage"] == "bspline" for stage in settings["stages"]):
            raise PrimageInputError("a B-spline spacing was given but there is no bspline stage")
        for stage in settings["stages"]:
            if stage["stage"] == "bspline":
                stage["control_point_spacing_mm"] = bspline_spacing_mm
    if initialisation is not None:
        settings["initialisation"] = initialisation
    if seed is not None:
        settings["seed"] = seed
    result = validate_settings(settings)
    result["preset"] = loaded["name"]
    return result
