"""Segmentation methods of the pipeline's ``segment`` step (pluggable).

A segmenter is a function ``segmenter(request) -> sitk.Image`` returning a binary UInt8
tumour mask on the reference grid. :class:`SegmentationRequest` gives it the reference
image, the case's mask files and the registration transforms. Two methods exist:
``given`` (the case's own masks) and ``model`` (a trained model folder run on the reference
series); others are added with :func:`register_segmenter` and selected with
``segment.method`` in the configuration. Each method has a version string that enters the
step's content hash; the model's files are inputs of the step, so changing a model reruns
the segmentation and everything after it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from primage.errors import PrimageInputError


@dataclass
class SegmentationRequest:
    """What a segmenter gets: the reference image (and its role), the case's mask files by
    role (``"reference"`` for ``tumour.nii.gz``), registration transforms by role (fixed =
    reference -> moving, files) and the current image of every role (paths)."""

    reference: sitk.Image
    reference_role: str
    masks: dict[str, Path] = field(default_factory=dict)
    transforms: dict[str, Path] = field(default_factory=dict)
    images: dict[str, Path] = field(default_factory=dict)
    #: The ``segment`` section of the configuration (model folder, device, post-processing).
    options: dict = field(default_factory=dict)
    #: Mask roles drawn in the reference's frame of reference (case.json tokens): usable
    #: on the reference grid as they are, even without a registration of their series.
    same_frame: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Segmenter:
    """A segmentation method: its function and the version of its code (or model)."""

    function: Callable[[SegmentationRequest], sitk.Image]
    version: str
    description: str = ""


SEGMENTERS: dict[str, Segmenter] = {}


def register_segmenter(
    name: str,
    function: Callable[[SegmentationRequest], sitk.Image],
    version: str,
    description: str = "",
) -> None:
    """Make a segmentation method available as ``segment.method: <name>``."""
    SEGMENTERS[name] = Segmenter(function, version, description)


def _binary_on_reference(mask: sitk.Image, reference: sitk.Image, transform=None) -> sitk.Image:
    binary = sitk.Cast(sitk.NotEqual(mask, 0), sitk.sitkUInt8)
    result = sitk.Resample(
        binary,
        reference,
        transform if transform is not None else sitk.Transform(),
        sitk.sitkNearestNeighbor,
        0,
        sitk.sitkUInt8,
    )
    if not np.any(sitk.GetArrayViewFromImage(result)):
        raise PrimageInputError("the tumour mask is empty on the reference grid")
    return result


def given_masks(request: SegmentationRequest) -> sitk.Image:
    """The case's tumour mask on the reference grid.

    ``tumour.nii.gz`` (drawn on the reference series) wins; otherwise the first
    ``tumour_<role>.nii.gz`` whose role has a registration transform is carried onto the
    reference through it (nearest neighbour), else the first one in the reference's frame
    of reference is resampled onto it as it is. Any non-zero voxel is tumour.
    """
    from primage.io import read_image
    from primage.registration.core import read_transform

    if "reference" in request.masks:
        mask = read_image(request.masks["reference"], role="tumour mask")
        return _binary_on_reference(mask, request.reference)
    if request.reference_role in request.masks:
        mask = read_image(request.masks[request.reference_role], role="tumour mask")
        return _binary_on_reference(mask, request.reference)
    for role, path in sorted(request.masks.items()):
        if role in request.transforms:
            mask = read_image(path, role=f"tumour mask of {role}")
            transform = read_transform(request.transforms[role], role=f"transform of {role}")
            return _binary_on_reference(mask, request.reference, transform)
    for role, path in sorted(request.masks.items()):
        if role in request.same_frame:
            mask = read_image(path, role=f"tumour mask of {role}")
            return _binary_on_reference(mask, request.reference)
    if request.masks:
        raise PrimageInputError(
            f"tumour mask(s) of {', '.join(sorted(request.masks))} cannot be carried onto the "
            "reference: that series was not registered (give tumour.nii.gz on the reference)"
        )
    raise PrimageInputError(
        "no tumour mask: give tumour.nii.gz (on the reference series) or tumour_<role>.nii.gz"
    )


register_segmenter(
    "given",
    given_masks,
    "2",
    "the case's tumour.nii.gz, or tumour_<role>.nii.gz carried onto the reference",
)


def model_mask(request: SegmentationRequest) -> sitk.Image:
    """Run the configured model folder on the reference image; every label is tumour.

    The prediction comes back on the reference grid (nearest neighbour); the configured
    post-processing (e.g. ``largest,fill``) runs before the labels are merged.
    """
    from primage.segmentation.models import load_model
    from primage.segmentation.postprocess import postprocess_label_image

    options = request.options
    model = load_model(options["model"], device=options.get("device", "cpu"))
    labels = model.predict([request.reference])
    if options.get("postprocess"):
        labels, _ = postprocess_label_image(labels, options["postprocess"])
    return _binary_on_reference(labels, request.reference)


register_segmenter(
    "model",
    model_mask,
    "1",
    "a trained model folder (primage DynUNet or nnU-Net v2) run on the reference series",
)
