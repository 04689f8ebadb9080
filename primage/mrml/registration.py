"""Registration and motion correction on MRML nodes (the logic behind PrimageRegistration).

Volumes are read in their own (local) coordinates. The result transform node is put under
the fixed volume's parent transform and, with ``apply=True``, the moving volume is put
under the result node (not hardened: the user can toggle it). The node holds the
registration's SimpleITK fixed -> moving transform as its "from parent", so that it
moves the moving volume onto the fixed one (:mod:`primage.mrml.transforms`). The QC
numbers and verdict are stored as JSON in the node attribute ``PRIMAGE.registration.qc``
and the settings as applied in ``PRIMAGE.registration.settings``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from primage.errors import PrimageInputError
from primage.mrml.plots import plot_chart_from_curves
from primage.mrml.segmentations import mask_from_node
from primage.mrml.sequences import (
    VolumeSeries,
    sequence_node_from_series,
    series_from_sequence_node,
)
from primage.mrml.tables import table_node_from_rows
from primage.mrml.transforms import sitk_from_transform_node, transform_node_from_sitk
from primage.mrml.volumes import (
    check_scalar_volume_node,
    node_label,
    sitk_from_volume_node,
    volume_node_from_sitk,
)
from primage.progress import ProgressCallback

QC_ATTRIBUTE = "PRIMAGE.registration.qc"
SETTINGS_ATTRIBUTE = "PRIMAGE.registration.settings"
MOTION_UNITS = {
    "tx_mm": "mm",
    "ty_mm": "mm",
    "tz_mm": "mm",
    "rx_deg": "deg",
    "ry_deg": "deg",
    "rz_deg": "deg",
    "framewise_displacement_mm": "mm",
}


@dataclass
class RegistrationNodes:
    """Result of :func:`register_volume_nodes`: the transform node, the resampled volume
    node (or None), the QC dict and the engine's result."""

    transform_node: Any
    volume_node: Any
    qc: dict
    result: Any


@dataclass
class MotionNodes:
    """Result of :func:`correct_sequence_motion`."""

    sequence_node: Any
    table_node: Any
    chart_node: Any
    result: Any


def _json(value: object) -> str:
    def default(item):
        if isinstance(item, np.generic):
            return item.item()
        if isinstance(item, np.ndarray):
            return item.tolist()
        raise TypeError(type(item).__name__)

    return json.dumps(value, default=default)


def register_volume_nodes(
    fixed_node,
    moving_node,
    *,
    preset: str | None = None,
    stages: str | Sequence[str] | None = None,
    initialisation: str | None = None,
    bspline_spacing_mm: float | None = None,
    fixed_mask_node=None,
    fixed_mask_segment: str | None = None,
    moving_mask_node=None,
    moving_mask_segment: str | None = None,
    initial_transform_node=None,
    output_transform_node=None,
    output_volume_node=None,
    resample: bool = False,
    apply: bool = True,
    progress: ProgressCallback | None = None,
) -> RegistrationNodes:
    """Register ``moving_node`` to ``fixed_node`` and return the nodes holding the result.

    ``preset`` (default ``mr-mr``) and ``stages`` (``"rigid,affine,bspline"``) choose the
    settings as on the command line (:func:`primage.registration.settings_for`). Masks are
    labelmap volumes or segmentations (``*_segment``: one segment ID or name; default all
    segments). ``initial_transform_node`` starts the registration from its transform
    (e.g. a manual alignment). The result goes to ``output_transform_node`` (refilled; a
    linear node cannot take a B-spline) or a new node "<moving> to <fixed>"; with
    ``resample`` (or an ``output_volume_node``) the moving volume resampled onto the fixed
    grid is written too (nearest neighbour for labelmaps, cubic B-spline otherwise).
    """
    from primage.registration import (
        register_images,
        resample_to_fixed,
        settings_for,
    )
    from primage.registration.qc import quality_control

    check_scalar_volume_node(fixed_node, role="fixed volume")
    check_scalar_volume_node(moving_node, role="moving volume")
    if fixed_node is moving_node:
        raise PrimageInputError("the fixed and moving volumes are the same node")
    scene = fixed_node.GetScene()
    if scene is None or moving_node.GetScene() is not scene:
        raise PrimageInputError("the fixed and moving volumes must be in the same scene")
    settings = settings_for(
        preset, stages, initialisation=initialisation, bspline_spacing_mm=bspline_spacing_mm
    )
    fixed = sitk_from_volume_node(fixed_node, role="fixed volume")
    moving = sitk_from_volume_node(moving_node, role="moving volume")
    fixed_mask = (
        mask_from_node(fixed_mask_node, fixed_node, fixed_mask_segment)
        if fixed_mask_node is not None
        else None
    )
    moving_mask = (
        _moving_mask(moving_mask_node, moving_node, moving_mask_segment, output_transform_node)
        if moving_mask_node is not None
        else None
    )
    initial = (
        sitk_from_transform_node(initial_transform_node, reference=fixed)
        if initial_transform_node is not None
        else None
    )
    result = register_images(
        fixed,
        moving,
        settings,
        fixed_mask=fixed_mask,
        moving_mask=moving_mask,
        initial_transform=initial,
        progress=progress,
    )
    qc = quality_control(
        fixed,
        moving,
        result.transform,
        initial=initial,
        fixed_mask=fixed_mask,
        moving_mask=moving_mask,
        thresholds=settings["qc"],
        masks_used=fixed_mask is not None or moving_mask is not None,
    )
    name = f"{moving_node.GetName()} to {fixed_node.GetName()}"
    transform_node = transform_node_from_sitk(
        result.transform, scene, name=name, node=output_transform_node
    )
    # The registration ran in the fixed volume's own coordinates: keep the result there.
    transform_node.SetAndObserveTransformNodeID(fixed_node.GetTransformNodeID())
    transform_node.SetAttribute(QC_ATTRIBUTE, _json(qc))
    transform_node.SetAttribute(
        SETTINGS_ATTRIBUTE,
        _json(
            {**settings, "initialisation_used": result.initialisation, "stages_run": result.stages}
        ),
    )
    if apply:
        moving_node.SetAndObserveTransformNodeID(transform_node.GetID())

    volume_node = None
    if resample or output_volume_node is not None:
        labelmap = moving_node.IsA("vtkMRMLLabelMapVolumeNode")
        resampled = resample_to_fixed(
            moving, fixed, result.transform, interpolation="nearest" if labelmap else "bspline"
        )
        volume_node = volume_node_from_sitk(
            resampled,
            scene,
            name=f"{moving_node.GetName()} registered",
            node=output_volume_node,
            labelmap=labelmap,
        )
        volume_node.SetAndObserveTransformNodeID(fixed_node.GetTransformNodeID())
    return RegistrationNodes(transform_node, volume_node, qc, result)


def _moving_mask(mask_node, moving_node, segment, result_node):
    """The moving mask on the moving grid, with a previous result transform ignored.

    A rerun refills ``result_node``, under which the moving volume (and perhaps its mask)
    sits from the last run; the mask was drawn on the moving volume as it was before, so
    nodes under ``result_node`` are read as if under its parent instead.
    """
    if result_node is None:
        return mask_from_node(mask_node, moving_node, segment)
    parent = result_node.GetTransformNodeID()
    moved = [n for n in (moving_node, mask_node) if n.GetTransformNodeID() == result_node.GetID()]
    for item in moved:
        item.SetAndObserveTransformNodeID(parent)
    try:
        return mask_from_node(mask_node, moving_node, segment)
    finally:
        for item in moved:
            item.SetAndObserveTransformNodeID(result_node.GetID())


def qc_from_node(transform_node) -> dict | None:
    """The QC dict stored on a registration result node (None when absent)."""
    text = transform_node.GetAttribute(QC_ATTRIBUTE) if transform_node is not None else None
    return json.loads(text) if text else None


def qc_text(qc: dict | None) -> str:
    """Lines for the QC panel (verdict, reasons, numbers before -> after)."""
    from primage.registration.qc import summary_text

    return "No registration result yet." if not qc else summary_text(qc)


def correct_sequence_motion(
    sequence_node,
    *,
    reference: str | int = "first",
    baseline_frames: int = 3,
    transform: str = "rigid",
    mask_node=None,
    mask_segment: str | None = None,
    output_sequence_node=None,
    table_node=None,
    chart_node=None,
    progress: ProgressCallback | None = None,
) -> MotionNodes:
    """Motion-correct a sequence of volumes: a new sequence, a motion table and a plot.

    The corrected frames go to ``output_sequence_node`` or a new "<name> motion corrected"
    sequence with the same index name, unit and values; the per-frame table (translations
    mm, rotations degrees, framewise displacement mm, mutual information before/after) to
    ``table_node`` or a new table; translations, rotations and framewise displacement
    against the index value to ``chart_node`` or a new plot chart.
    """
    from primage.registration.motion import correct_motion

    series = series_from_sequence_node(sequence_node)
    scene = sequence_node.GetScene()
    if scene is None:
        raise PrimageInputError(f"sequence {node_label(sequence_node)} is not in a scene")
    mask = None
    if mask_node is not None:
        # The first item carries the series geometry (it is not itself in the scene).
        mask = mask_from_node(mask_node, sequence_node.GetNthDataNode(0), mask_segment)
    result = correct_motion(
        series.volumes,
        reference=reference,
        baseline_frames=baseline_frames,
        transform=transform,
        values=series.values.tolist(),
        mask=mask,
        progress=progress,
    )
    name = sequence_node.GetName()
    corrected = VolumeSeries(result.volumes, series.values, series.name, series.unit)
    output = sequence_node_from_series(
        corrected, scene, name=f"{name} motion corrected", node=output_sequence_node
    )
    index_column = f"{series.name} ({series.unit})"
    rows = [
        {(index_column if key == "value" else key): value for key, value in row.items()}
        for row in result.table
    ]
    table = table_node_from_rows(
        rows, scene, name=f"{name} motion", node=table_node, column_units=MOTION_UNITS
    )
    x = series.values
    curves = {
        label: (x, np.array([row[key] for row in result.table]))
        for label, key in (
            ("translation x (mm)", "tx_mm"),
            ("translation y (mm)", "ty_mm"),
            ("translation z (mm)", "tz_mm"),
            ("rotation x (deg)", "rx_deg"),
            ("rotation y (deg)", "ry_deg"),
            ("rotation z (deg)", "rz_deg"),
            ("framewise displacement (mm)", "framewise_displacement_mm"),
        )
    }
    chart = plot_chart_from_curves(
        curves,
        scene,
        title=f"{name} motion",
        x_label=f"{series.name} ({series.unit})",
        y_label="mm / degrees",
        chart_node=chart_node,
    )
    return MotionNodes(output, table, chart, result)
