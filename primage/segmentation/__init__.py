"""Segmentation engine: agreement metrics, multi-observer STAPLE and mask post-processing.

:mod:`~primage.segmentation.metrics` (overlap and surface-distance metrics per label),
:mod:`~primage.segmentation.agreement` (pairwise tables and STAPLE consensus),
:mod:`~primage.segmentation.postprocess` (largest component, hole filling, closing in mm,
small-component removal) and :mod:`~primage.segmentation.demo` (the demo section).
Imports only numpy, scipy and SimpleITK.
"""

from primage.segmentation.agreement import StapleResult, pairwise_agreement, staple_consensus
from primage.segmentation.metrics import (
    METRIC_NAMES,
    compare_label_images,
    compare_masks,
    label_array,
    surface_distances,
)
from primage.segmentation.postprocess import parse_steps, postprocess_label_image

__all__ = [
    "METRIC_NAMES",
    "StapleResult",
    "compare_label_images",
    "compare_masks",
    "label_array",
    "pairwise_agreement",
    "parse_steps",
    "postprocess_label_image",
    "staple_consensus",
    "surface_distances",
]
