"""Post-processing of label images: largest component, hole filling, closing, small parts.

Steps (run in the order given, on each label separately):

- ``largest``: keep the largest connected component (face connectivity);
- ``fill``: fill holes — background regions not connected to the image border;
- ``close:R``: morphological closing with an ellipsoidal structuring element of radius
  ``R`` mm (voxel offsets ``o`` with ``sum((o * spacing)^2) <= R^2``); the image is padded
  first so that closing never erodes a mask touching the border;
- ``min-volume:V``: remove connected components smaller than ``V`` mL.

Voxels added by ``fill`` or ``close`` are taken only from the background: a step on one
label never overwrites another label (a necrotic core is not a "hole" of the tumour rim).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from primage.errors import PrimageInputError
from primage.segmentation.metrics import label_array, labels_present

STEP_NAMES = ("largest", "fill", "close", "min-volume")
_FACES = None  # scipy's default structure: face connectivity


def parse_steps(text: str | Sequence[str]) -> list[dict[str, object]]:
    """Parse ``"largest,fill,close:2,min-volume:0.5"`` (or a list of such items) into steps."""
    items = text.split(",") if isinstance(text, str) else list(text)
    steps: list[dict[str, object]] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        name, _, value = item.partition(":")
        name = name.strip().lower()
        if name not in STEP_NAMES:
            raise PrimageInputError(
                f"unknown post-processing step {item!r}; use "
                + ", ".join(("largest", "fill", "close:RADIUS_MM", "min-volume:ML"))
            )
        if name in ("largest", "fill"):
            if value:
                raise PrimageInputError(f"step {name!r} takes no value, got {item!r}")
            steps.append({"step": name})
            continue
        try:
            number = float(value)
        except ValueError:
            raise PrimageInputError(
                f"step {name!r} needs a number ({'radius in mm' if name == 'close' else 'volume in mL'}), "
                f"e.g. {name}:{'2' if name == 'close' else '0.5'}; got {item!r}"
            ) from None
        if not np.isfinite(number) or number <= 0:
            raise PrimageInputError(f"step {item!r}: the value must be a positive number")
        key = "radius_mm" if name == "close" else "min_volume_ml"
        steps.append({"step": name, key: number})
    if not steps:
        raise PrimageInputError("no post-processing step given (e.g. largest,fill,close:2)")
    return steps


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labelled, count = ndimage.label(mask, structure=_FACES)
    sizes = np.bincount(labelled.ravel(), minlength=count + 1)
    sizes[0] = 0
    return labelled, sizes


def keep_largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest face-connected component of a boolean mask (ties: the first found)."""
    if not mask.any():
        return mask.copy()
    labelled, sizes = _components(mask)
    return labelled == int(np.argmax(sizes))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill background regions not connected to the image border (3D, face connectivity)."""
    return ndimage.binary_fill_holes(mask)


def ball(radius_mm: float, spacing_zyx: Sequence[float]) -> np.ndarray:
    """Ellipsoidal structuring element of ``radius_mm`` on a grid of ``spacing_zyx`` (mm)."""
    half = [int(np.floor(radius_mm / s + 1e-9)) for s in spacing_zyx]
    grids = np.meshgrid(
        *(np.arange(-h, h + 1) * s for h, s in zip(half, spacing_zyx, strict=True)), indexing="ij"
    )
    return sum(g**2 for g in grids) <= radius_mm**2 + 1e-9


def close_mm(mask: np.ndarray, radius_mm: float, spacing_zyx: Sequence[float]) -> np.ndarray:
    """Morphological closing with a ball of ``radius_mm`` (padding keeps border masks intact)."""
    structure = ball(radius_mm, spacing_zyx)
    pad = [(h // 2, h // 2) for h in structure.shape]
    padded = np.pad(mask, pad)
    closed = ndimage.binary_erosion(ndimage.binary_dilation(padded, structure), structure)
    return closed[tuple(slice(p, p + n) for (p, _), n in zip(pad, mask.shape, strict=True))]


def remove_small_components(
    mask: np.ndarray, min_volume_ml: float, spacing_zyx: Sequence[float]
) -> np.ndarray:
    """Remove face-connected components smaller than ``min_volume_ml`` (mL)."""
    if not mask.any():
        return mask.copy()
    labelled, sizes = _components(mask)
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    keep = sizes * voxel_ml >= min_volume_ml
    keep[0] = False
    return keep[labelled]


def postprocess_label_image(
    image: sitk.Image, steps: str | Sequence[dict[str, object]] | Sequence[str]
) -> tuple[sitk.Image, list[dict[str, object]]]:
    """Apply post-processing steps to every label of a label image.

    ``steps`` is a step string (``"largest,fill,close:2"``) or parsed steps. Returns the new
    label image (same grid and pixel type) and one record per (step, label) with the voxel
    counts before and after.
    """
    if isinstance(steps, str) or (steps and isinstance(steps[0], str)):
        steps = parse_steps(steps)
    steps = list(steps)
    labels = label_array(image, role="segmentation")
    present = labels_present(labels)
    if not present:
        raise PrimageInputError("segmentation is empty (no non-zero voxel)")
    spacing_zyx = tuple(reversed(image.GetSpacing()))
    result = labels.copy()
    records: list[dict[str, object]] = []
    for step in steps:
        for label in present:
            mask = result == label
            before = int(mask.sum())
            name = step["step"]
            if name == "largest":
                new = keep_largest_component(mask)
            elif name == "fill":
                new = fill_holes(mask)
            elif name == "close":
                new = close_mm(mask, float(step["radius_mm"]), spacing_zyx)
            elif name == "min-volume":
                new = remove_small_components(mask, float(step["min_volume_ml"]), spacing_zyx)
            else:
                raise PrimageInputError(f"unknown post-processing step {name!r}")
            # Removed voxels become background; added voxels come from the background only.
            result[mask & ~new] = 0
            result[new & (result == 0)] = label
            records.append(
                {
                    **step,
                    "label": label,
                    "voxels_before": before,
                    "voxels_after": int((result == label).sum()),
                }
            )
    output = sitk.GetImageFromArray(result.astype(sitk.GetArrayViewFromImage(image).dtype))
    output.CopyInformation(image)
    return output, records
