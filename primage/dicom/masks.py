"""Tumour masks from RT Structure Sets and DICOM SEG, on the grid of the series they were
drawn on.

A structure set (role ``rtstruct``) or SEG (role ``seg``) of a study is matched to the
image it references: the series in its referenced-series sequence, else the series that
holds one of its referenced instances, else the only assembled 3D image of the study in its
frame of reference (noted in ``case.json``). It becomes ``tumour_<image>.nii.gz`` (e.g.
``tumour_ct.nii.gz`` beside ``ct.nii.gz``) on that image's grid. Its ROIs / segments whose
name matches the tumour pattern (:data:`DEFAULT_TUMOUR_PATTERN`, a case-insensitive
regular expression searched in the name; ``primage dicom assemble --tumour-roi``) get one
label each, 1, 2, ... in ROI / segment number order; the others are listed as not used.
One mask object per image is written; a second one on the same image is reported (skip
the first in the inventory to use it instead).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from primage.errors import PrimageInputError

if TYPE_CHECKING:  # scan imports this module
    from primage.dicom.scan import Plan, SeriesInfo

#: Roles of mask objects.
MASK_ROLES = ("rtstruct", "seg")
#: ROI / segment names taken as tumour by default.
DEFAULT_TUMOUR_PATTERN = r"gtv|tumou?r|lesion"

RASTER_METHOD = (
    "contours rasterised on the image grid: voxel centres inside the closed planar contours "
    "of their slice by the even-odd rule (holes and overlaps XOR)"
)


def tumour_pattern(pattern: str | None = None) -> re.Pattern:
    """The compiled tumour-name pattern (default :data:`DEFAULT_TUMOUR_PATTERN`)."""
    text = DEFAULT_TUMOUR_PATTERN if pattern is None else pattern
    try:
        return re.compile(text, re.IGNORECASE)
    except re.error as error:
        raise PrimageInputError(
            f"tumour ROI pattern {text!r} is not a regular expression: {error}"
        ) from None


@dataclass
class MaskPlan:
    """One mask output: the mask series, the image plan it lies on and the chosen ROIs."""

    info: SeriesInfo
    image: Plan | None = None
    name: str | None = None  # output stem, e.g. "tumour_ct"
    labels: list[tuple[int, int, str]] = field(default_factory=list)  # (label, index, name)
    unused: list[str] = field(default_factory=list)  # names that do not match the pattern
    problem: str | None = None
    matched_by: str = ""  # how the image was found

    @property
    def kind(self) -> str:
        return self.info.role


def _image_plan(info: SeriesInfo, infos: list[SeriesInfo], plans: list[Plan]):
    """(plan, problem, how): the image plan the mask object refers to."""
    references = info.series.first.references
    by_uid = {other.uid: other for other in infos}
    target = next((by_uid[uid] for uid in references.get("series", []) if uid in by_uid), None)
    how = "referenced series"
    if target is None and references.get("instances"):
        how = "referenced instances"
        wanted = set(references["instances"])
        target = next(
            (
                other
                for other in infos
                if any(frame.sop_uid in wanted for frame in other.series.frames)
            ),
            None,
        )
    if target is None:
        return (*_plan_by_frame_of_reference(info, plans), "frame of reference")
    plan = next((p for p in plans if any(m is target for m in p.members)), None)
    if plan is None or plan.problem is not None or plan.name is None:
        why = plan.problem if plan is not None and plan.problem else f"role {target.role}"
        problem = f"the series it was drawn on ({target.series_id}) is not assembled ({why})"
        return None, problem, how
    return plan, None, how


def _plan_by_frame_of_reference(info: SeriesInfo, plans: list[Plan]):
    """(plan, problem) when the referenced series is absent: the one assembled 3D image of
    the study in the mask's frame of reference (contours and SEG voxels are in patient
    coordinates, so they still fall on that grid), or why there is none."""
    frame = info.series.first.frame_of_reference
    candidates = [
        p
        for p in plans
        if p.problem is None
        and p.name is not None
        and p.layout is not None
        and p.layout.axis == "none"
        and frame
        and p.members[0].series.first.frame_of_reference == frame
    ]
    if len(candidates) == 1:
        return candidates[0], None
    if not candidates:
        return None, "the series it was drawn on is not in this study's files"
    names = ", ".join(p.name for p in candidates)
    return None, (
        f"the series it was drawn on is not in this study's files, and {len(candidates)} "
        f"images share its frame of reference ({names}); set the role of the others to skip"
    )


def plan_masks(
    infos: list[SeriesInfo], plans: list[Plan], pattern: str | None = None
) -> list[MaskPlan]:
    """Mask plans of one study for its series with a mask role and its image ``plans``."""
    regex = tumour_pattern(pattern)
    result, taken = [], {}
    for info in infos:
        if info.role not in MASK_ROLES:
            continue
        mask = MaskPlan(info)
        result.append(mask)
        problems = info.series.problems
        if problems:
            mask.problem = problems[0]
            continue
        mask.image, mask.problem, mask.matched_by = _image_plan(info, infos, plans)
        if mask.problem:
            continue
        names = info.series.first.references.get("names", [])
        for index, name in enumerate(names):
            if regex.search(name):
                mask.labels.append((len(mask.labels) + 1, index, name))
            else:
                mask.unused.append(name)
        if not mask.labels:
            mask.problem = (
                f"no ROI / segment name matches the tumour pattern {regex.pattern!r} "
                f"({', '.join(names) or 'none named'}); choose one with --tumour-roi"
            )
            continue
        name = f"tumour_{mask.image.name}"
        if name in taken:
            mask.problem = (
                f"{taken[name]} already gives {name}; set the role of one of them to skip"
            )
            continue
        taken[name] = info.series_id
        mask.name = name
    return result


def mask_labels(mask: MaskPlan) -> tuple[np.ndarray, dict]:
    """The label array [k, j, i] (uint8: 0 outside, 1.. per chosen ROI) of a good mask
    plan on its image's grid, and its description for case.json.

    Raises ``ContourProblem`` / ``SegProblem`` when the object cannot be placed.
    """
    geometry = mask.image.layout.geometry
    path = mask.info.series.first.path
    columns, rows, slices = geometry.size
    labels = np.zeros((slices, rows, columns), np.uint8 if len(mask.labels) < 256 else np.uint16)
    record: dict = {"matched_by": mask.matched_by, "notes": []}
    if mask.kind == "rtstruct":
        from primage.dicom.rtstruct import rasterise, read_structure_set

        rois = read_structure_set(path)
        inside = {}
        for label, index, _name in mask.labels:
            roi = rois[index]
            inside[label], notes = rasterise(roi.contours, geometry)
            record["notes"] += [f"{roi.name}: {note}" for note in notes]
            if roi.ignored:
                record["notes"].append(
                    f"{roi.name}: {roi.ignored} open or point contour(s) ignored"
                )
        record["method"] = RASTER_METHOD
    else:
        from primage.dicom.seg_in import FRACTION_THRESHOLD, read_segments, segment_mask

        segmentation, segments, kind = read_segments(path)
        inside, same = {}, True
        for label, index, _name in mask.labels:
            inside[label], on_grid = segment_mask(
                segmentation, segments[index].number, kind, geometry
            )
            same = same and on_grid
        record["seg_type"] = kind
        record["method"] = "DICOM SEG read with highdicom" + (
            f", fractions >= {FRACTION_THRESHOLD} inside" if kind == "FRACTIONAL" else ""
        )
        if not same:
            record["notes"].append("SEG grid differs from the image's: placed by nearest neighbour")
    overlap = np.zeros(labels.shape, np.int32)
    for label, voxels in inside.items():
        labels[voxels] = label  # a later ROI wins where two overlap (counted below)
        overlap += voxels
    record["labels"] = {str(label): name for label, _index, name in mask.labels}
    record["voxels"] = {str(label): int(voxels.sum()) for label, voxels in inside.items()}
    voxel_ml = float(np.prod(geometry.spacing)) / 1000.0
    record["volume_ml"] = {
        str(label): round(int(voxels.sum()) * voxel_ml, 6) for label, voxels in inside.items()
    }
    if (overlap > 1).any():
        record["notes"].append(
            f"{int((overlap > 1).sum())} voxels in more than one ROI: the later ROI's label kept"
        )
    if mask.unused:
        record["rois_not_used"] = list(mask.unused)
    empty = [name for label, _index, name in mask.labels if not inside[label].any()]
    if empty:
        record["notes"].append(f"no voxel on this grid: {', '.join(empty)}")
    if not record["notes"]:
        del record["notes"]
    return labels, record
