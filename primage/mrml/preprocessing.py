"""Run the preprocessing engine on volume nodes (the logic behind the Slicer module).

The input node is converted to SimpleITK, processed by :func:`primage.preprocessing.run_steps`
and the result is written to a new volume node (or ``output_node``). The steps as applied,
with all their parameters, are stored as JSON in the output node's attribute
``PRIMAGE.preprocessing``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from primage.errors import PrimageInputError
from primage.io import json_text
from primage.mrml.segmentations import mask_from_node
from primage.mrml.volumes import (
    check_scalar_volume_node,
    node_label,
    sitk_from_volume_node,
    volume_node_from_sitk,
)
from primage.preprocessing import load_preset, run_steps
from primage.progress import ProgressCallback

#: Node attribute holding the JSON list of applied steps.
RECORDS_ATTRIBUTE = "PRIMAGE.preprocessing"


def records_json(records: Sequence[Mapping]) -> str:
    """JSON text of the applied steps, as stored in :data:`RECORDS_ATTRIBUTE`."""
    return json_text(list(records))


def preprocess_volume_node(
    input_node,
    *,
    steps: Sequence[Mapping] | None = None,
    preset: str | Path | None = None,
    mask_node=None,
    mask_segment: str | None = None,
    reference_node=None,
    output_node=None,
    bias_field_node=None,
    progress: ProgressCallback | None = None,
):
    """Preprocess a scalar volume node and return the node holding the result.

    Give either ``steps`` (list of step dictionaries) or ``preset`` (a preset name or a
    preset file), not both. ``mask_node`` is a labelmap volume or a segmentation
    (``mask_segment``: one segment ID or name; default all segments), put on the input grid.
    ``reference_node`` is a reference volume for steps that need one (e.g. histogram
    matching). The result goes to a new scalar volume "<input> preprocessed" under the
    input's parent transform, or to ``output_node`` (the input is only changed when it is
    given as ``output_node``). ``bias_field_node``, when given, receives the estimated bias
    field; the steps must then estimate one (N4).
    """
    check_scalar_volume_node(input_node, role="input volume")
    scene = input_node.GetScene()
    if scene is None:
        raise PrimageInputError(f"input volume {node_label(input_node)} is not in a scene")
    if steps is not None and preset is not None:
        raise PrimageInputError("give either steps or a preset, not both")
    if steps is None and preset is None:
        raise PrimageInputError("no preprocessing steps given: choose a preset or give steps")
    if preset is not None:
        steps = load_preset(preset)["steps"]
    # The engine validates every step before running any; only catch the empty list here.
    if isinstance(steps, (list, tuple)) and not steps:
        raise PrimageInputError("the list of preprocessing steps is empty")

    image = sitk_from_volume_node(input_node, role="input volume")
    mask = mask_from_node(mask_node, input_node, mask_segment) if mask_node is not None else None
    reference = (
        sitk_from_volume_node(reference_node, role="reference volume")
        if reference_node is not None
        else None
    )
    result = run_steps(image, steps, mask=mask, reference=reference, progress=progress)
    if bias_field_node is not None and result.bias_field is None:
        raise PrimageInputError(
            "a bias field output was chosen but no step estimated a bias field (add N4 bias "
            "correction or clear the bias field output)"
        )

    if output_node is None:
        output_node = volume_node_from_sitk(
            result.image, scene, name=f"{input_node.GetName()} preprocessed"
        )
        # The result is on the input's own grid: keep it in the same coordinate frame.
        output_node.SetAndObserveTransformNodeID(input_node.GetTransformNodeID())
    else:
        volume_node_from_sitk(result.image, scene, node=output_node)
    output_node.SetAttribute(RECORDS_ATTRIBUTE, records_json(result.records))
    if bias_field_node is not None:
        volume_node_from_sitk(result.bias_field, scene, node=bias_field_node)
        bias_field_node.SetAndObserveTransformNodeID(input_node.GetTransformNodeID())
    return output_node
