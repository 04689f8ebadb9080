"""Agreement between several observers: pairwise metric tables and a STAPLE consensus.

STAPLE (Warfield et al., IEEE TMI 2004) estimates, per label, the probability of each voxel
being truly inside and every observer's sensitivity and specificity, by expectation-
maximisation; SimpleITK's ``STAPLEImageFilter`` does the work on binary masks. Several labels
are handled one binary problem at a time; the consensus label of a voxel is the label of
highest probability when that probability reaches ``threshold`` (0.5 by default), else 0.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from primage.errors import PrimageInputError
from primage.progress import ProgressCallback, no_progress
from primage.segmentation.metrics import (
    check_same_grid,
    compare_masks,
    label_array,
    labels_present,
)


def _check_observers(masks: Sequence[sitk.Image], names: Sequence[str] | None, minimum: int):
    if len(masks) < minimum:
        raise PrimageInputError(f"at least {minimum} masks are needed, got {len(masks)}")
    names = list(names) if names is not None else [f"observer_{i + 1}" for i in range(len(masks))]
    if len(names) != len(masks) or len(set(names)) != len(names):
        raise PrimageInputError("give one distinct name per mask")
    arrays = [label_array(m, role=f"mask {n}") for m, n in zip(masks, names, strict=True)]
    for mask, name in zip(masks[1:], names[1:], strict=True):
        check_same_grid(masks[0], mask, names=(names[0], name))
    for array, name in zip(arrays, names, strict=True):
        if not array.any():
            raise PrimageInputError(f"mask {name} is empty (no non-zero voxel)")
    return arrays, names


def _labels(arrays, labels) -> list[int]:
    if labels is None:
        return sorted(set().union(*(labels_present(a) for a in arrays)))
    chosen = [int(label) for label in labels]
    present = set().union(*(labels_present(a) for a in arrays))
    for label in chosen:
        if label not in present:
            raise PrimageInputError(f"label {label} is in none of the masks")
    return chosen


def pairwise_agreement(
    masks: Sequence[sitk.Image],
    names: Sequence[str] | None = None,
    labels: Sequence[int] | None = None,
) -> list[dict[str, object]]:
    """Metrics for every pair of observers (the first of a pair acts as the reference).

    All masks must share one grid. Rows: ``{"observer_a", "observer_b", "label", <metrics>}``.
    """
    arrays, names = _check_observers(masks, names, 2)
    spacing_zyx = tuple(reversed(masks[0].GetSpacing()))
    rows = []
    for (i, a), (j, b) in itertools.combinations(enumerate(arrays), 2):
        for label in _labels(arrays, labels):
            row: dict[str, object] = {
                "observer_a": names[i],
                "observer_b": names[j],
                "label": label,
            }
            row.update(compare_masks(a == label, b == label, spacing_zyx))
            rows.append(row)
    return rows


@dataclass
class StapleResult:
    """STAPLE output: consensus label image, probability per label and observer estimates."""

    consensus: sitk.Image
    probabilities: dict[int, sitk.Image]
    observers: list[dict[str, object]] = field(default_factory=list)


def staple_consensus(
    masks: Sequence[sitk.Image],
    names: Sequence[str] | None = None,
    labels: Sequence[int] | None = None,
    *,
    threshold: float = 0.5,
    max_iterations: int = 100,
    progress: ProgressCallback | None = None,
) -> StapleResult:
    """STAPLE consensus of three or more masks on one grid.

    ``observers`` rows: ``{"observer", "label", "sensitivity", "specificity", "iterations"}``.
    The consensus is a UInt8/UInt16 label image on the masks' grid; probabilities are Float32.
    """
    if not 0.0 < threshold < 1.0:
        raise PrimageInputError(f"STAPLE threshold must be in (0, 1), got {threshold}")
    arrays, names = _check_observers(masks, names, 3)
    progress = progress or no_progress
    chosen = _labels(arrays, labels)
    probabilities: dict[int, sitk.Image] = {}
    observers: list[dict[str, object]] = []
    stack = []
    for index, label in enumerate(chosen):
        progress(index / len(chosen), f"STAPLE label {label}")
        binaries = []
        for array in arrays:
            binary = sitk.GetImageFromArray((array == label).astype(np.uint8))
            binary.CopyInformation(masks[0])
            binaries.append(binary)
        staple = sitk.STAPLEImageFilter()
        staple.SetForegroundValue(1.0)
        staple.SetMaximumIterations(int(max_iterations))
        probability = sitk.Cast(staple.Execute(binaries), sitk.sitkFloat32)
        probabilities[label] = probability
        # A copy, not a view: the image is kept, but the array outlives this loop too.
        stack.append(sitk.GetArrayFromImage(probability))
        for name, sensitivity, specificity in zip(
            names, staple.GetSensitivity(), staple.GetSpecificity(), strict=True
        ):
            observers.append(
                {
                    "observer": name,
                    "label": label,
                    "sensitivity": float(sensitivity),
                    "specificity": float(specificity),
                    "iterations": int(staple.GetElapsedIterations()),
                }
            )
    probability_stack = np.stack(stack)
    best = np.argmax(probability_stack, axis=0)
    consensus_array = np.where(
        np.max(probability_stack, axis=0) >= threshold, np.asarray(chosen)[best], 0
    ).astype(np.uint8 if max(chosen) < 256 else np.uint16)
    consensus = sitk.GetImageFromArray(consensus_array)
    consensus.CopyInformation(masks[0])
    progress(1.0, "STAPLE done")
    return StapleResult(consensus=consensus, probabilities=probabilities, observers=observers)
