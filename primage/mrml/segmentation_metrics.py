"""Agreement metrics and STAPLE consensus between segmentation nodes.

Segments are exported with :func:`~primage.mrml.segmentations.label_images_from_segmentation`
onto one grid — the reference volume's when given (parent transforms honoured), else the
reference segmentation's own reference geometry — and measured with
:mod:`primage.segmentation` (distances in mm, volumes in mL).
:func:`surface_distance_model` shows the signed distance on the test segment's surface as
a colour map (a model node with a point-data array).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtk.util import numpy_support

from primage.errors import PrimageInputError
from primage.mrml.geometry import ras_to_lps_points
from primage.mrml.segmentations import (
    BINARY_LABELMAP,
    label_images_from_segmentation,
    oriented_image_from_sitk,
    segmentation_from_label_image,
)
from primage.mrml.tables import table_node_from_rows
from primage.mrml.volumes import node_label

#: Unit labels of the metric columns in the table nodes.
METRIC_UNITS = {
    "hausdorff": "mm",
    "hausdorff95": "mm",
    "assd": "mm",
    "volume_reference_ml": "mL",
    "volume_test_ml": "mL",
    "volume_difference_percent": "%",
}


def _segments_on_grid(node, reference_volume, grid: sitk.Image | None) -> dict[str, sitk.Image]:
    reference = reference_volume if reference_volume is not None else grid
    return {
        name: mask for name, (mask, _) in label_images_from_segmentation(node, reference).items()
    }


def _pick(segments: dict[str, sitk.Image], name: str | None, node) -> str:
    if name is None:
        if len(segments) == 1:
            return next(iter(segments))
        raise PrimageInputError(
            f"segmentation {node_label(node)} has {len(segments)} segments; choose one"
        )
    if name not in segments:
        name = _key_of_segment_id(segments, name, node)
    if name not in segments:
        raise PrimageInputError(
            f"segmentation {node_label(node)} has no segment {name!r} (segments: "
            + ", ".join(segments)
            + ")"
        )
    return name


def _key_of_segment_id(segments: dict[str, sitk.Image], segment_id: str, node) -> str:
    """The key of a segment given by ID (its name, or "name [ID]"); unchanged if no such ID."""
    segment = node.GetSegmentation().GetSegment(segment_id)
    if segment is None:
        return segment_id
    for key in (f"{segment.GetName()} [{segment_id}]", segment.GetName()):
        if key in segments:
            return key
    return segment_id


def segment_pairs(reference: dict, test: dict, pairs=None) -> list[tuple[str, str]]:
    """Pairs to compare: as given, else segments of equal name, else the only two segments."""
    if pairs:
        return [(str(a), str(b)) for a, b in pairs]
    common = [name for name in reference if name in test]
    if common:
        return [(name, name) for name in common]
    if len(reference) == 1 and len(test) == 1:
        return [(next(iter(reference)), next(iter(test)))]
    raise PrimageInputError(
        "no segment names in common between the two segmentations; choose the segments to compare"
    )


def segment_pairs_by_name(reference_node, test_node) -> list[tuple[str, str]]:
    """(reference, test) segment names compared by default: equal names, else the only two."""

    def names(node):
        segmentation = node.GetSegmentation()
        return {
            segmentation.GetNthSegment(i).GetName(): None
            for i in range(segmentation.GetNumberOfSegments())
        }

    return segment_pairs(names(reference_node), names(test_node))


def compare_segmentation_nodes(
    reference_node,
    test_node,
    *,
    pairs: Sequence[tuple[str, str]] | None = None,
    reference_volume=None,
    output_table=None,
    name: str = "segmentation agreement",
    surface: str = "subvoxel",
):
    """Table node of agreement metrics, one row per (reference segment, test segment).

    ``pairs`` lists (reference segment name, test segment name); by default segments with
    the same name are paired (or the only segment of each). Columns: ``reference_segment``,
    ``test_segment``, the metrics of :data:`primage.segmentation.METRIC_NAMES`, voxel counts
    and ``notes`` (why a value is NaN). An empty segment gives NaN with a note, not an error.
    ``surface`` is the surface definition (:func:`primage.segmentation.surface_distances`).
    """
    from primage.segmentation.metrics import compare_masks, label_array

    if reference_node is None or test_node is None:
        raise PrimageInputError("select a reference and a test segmentation")
    reference = _segments_on_grid(reference_node, reference_volume, None)
    grid = next(iter(reference.values()))
    test = _segments_on_grid(test_node, reference_volume, grid)
    rows = []
    spacing_zyx = tuple(reversed(grid.GetSpacing()))
    for ref_name, test_name in segment_pairs(reference, test, pairs):
        ref_name = _pick(reference, ref_name, reference_node)
        test_name = _pick(test, test_name, test_node)
        row: dict[str, object] = {"reference_segment": ref_name, "test_segment": test_name}
        metrics = compare_masks(
            label_array(reference[ref_name]) > 0,
            label_array(test[test_name]) > 0,
            spacing_zyx,
            surface=surface,
        )
        metrics["notes"] = "; ".join(metrics["notes"])
        row.update(metrics)
        rows.append(row)
    scene = reference_node.GetScene()
    return table_node_from_rows(
        rows, scene, name=name, node=output_table, column_units=METRIC_UNITS
    )


def staple_from_segmentation_nodes(
    segmentation_nodes: Sequence,
    segment: str | None = None,
    *,
    reference_volume=None,
    threshold: float = 0.5,
    output_segmentation=None,
    output_table=None,
    name: str = "STAPLE consensus",
):
    """STAPLE consensus of one segment from three or more segmentation nodes.

    ``segment`` names the segment in every node (default: each node's only segment).
    Returns ``(segmentation node with one segment, table node)``; the table has one row per
    observer (node name) with ``sensitivity``, ``specificity``, ``dice_vs_consensus``.
    """
    from primage.segmentation.agreement import staple_consensus
    from primage.segmentation.metrics import compare_masks, label_array

    nodes = list(segmentation_nodes)
    if len(nodes) < 3:
        raise PrimageInputError(f"STAPLE needs three or more segmentations, got {len(nodes)}")
    grid = None
    masks, names = [], []
    for node in nodes:
        segments = _segments_on_grid(node, reference_volume, grid)
        chosen = _pick(segments, segment, node)
        mask = segments[chosen]
        grid = grid if grid is not None else mask
        masks.append(mask)
        names.append(node.GetName() if node.GetName() not in names else node.GetID())
    result = staple_consensus(masks, names, threshold=threshold)
    consensus = label_array(result.consensus) > 0
    if not consensus.any():
        raise PrimageInputError("the STAPLE consensus is empty; lower the threshold")
    spacing_zyx = tuple(reversed(grid.GetSpacing()))
    rows = []
    for observer, mask in zip(result.observers, masks, strict=True):
        dice = compare_masks(consensus, label_array(mask) > 0, spacing_zyx)["dice"]
        rows.append(
            {
                "observer": observer["observer"],
                "sensitivity": observer["sensitivity"],
                "specificity": observer["specificity"],
                "dice_vs_consensus": dice if not math.isnan(dice) else None,
            }
        )
    scene = nodes[0].GetScene()
    label_image = sitk.Cast(result.consensus > 0, sitk.sitkUInt8)
    segmentation = segmentation_from_label_image(
        label_image,
        scene,
        {1: segment or "consensus"},
        {1: (0.9, 0.7, 0.1)},
        reference_volume,
        name=name,
        node=output_segmentation,
    )
    table = table_node_from_rows(rows, scene, name=f"{name} observers", node=output_table)
    segmentation.SetAttribute("PRIMAGE.segmentation.staple_threshold", str(float(threshold)))
    return segmentation, table


# --- surface-distance colour map -------------------------------------------------------

#: Point-data array of :func:`surface_distance_model`: signed distance to the reference (mm).
DISTANCE_ARRAY = "Distance (mm)"
#: Slicer's diverging blue-white-red colour table (present in the application's scenes).
SLICER_DIVERGING_COLOR_ID = "vtkMRMLColorTableNodeFileDivergingBlueRed.txt"
#: Name of the blue-white-red table PRIMAGE adds where Slicer's is missing (e.g. slicer-core).
PRIMAGE_DIVERGING_COLOR_NAME = "PRIMAGE DivergingBlueRed"


def _check_same_scene(reference_segmentation, test_segmentation, *others):
    if reference_segmentation is None or test_segmentation is None:
        raise PrimageInputError("select a reference and a test segmentation")
    scene = reference_segmentation.GetScene()
    if scene is None:
        raise PrimageInputError(f"segmentation {node_label(reference_segmentation)} is in no scene")
    for node in (test_segmentation, *others):
        if node is not None and node.GetScene() is not scene:
            raise PrimageInputError(
                f"{node_label(node)} is not in the scene of {node_label(reference_segmentation)}"
            )
    return scene


def _nonempty_mask(segments, name, node) -> tuple[str, sitk.Image]:
    key = _pick(segments, name, node)
    if not np.any(sitk.GetArrayViewFromImage(segments[key])):
        raise PrimageInputError(
            f"segment {key!r} of {node_label(node)} is empty on the comparison grid"
        )
    return key, segments[key]


def _segment_surface(mask: sitk.Image, conversion_source) -> vtk.vtkPolyData:
    """Closed surface (RAS mm) of a binary mask, made by Slicer's labelmap-to-surface rule.

    Conversion parameters (smoothing, decimation) are copied from ``conversion_source``
    (a vtkSegmentation), so the surface looks like the segment in Slicer's 3D view.
    """
    segmentation = slicer.vtkSegmentation()
    segmentation.SetSourceRepresentationName(BINARY_LABELMAP)
    segmentation.CopyConversionParameters(conversion_source)
    segment = slicer.vtkSegment()
    segment.AddRepresentation(BINARY_LABELMAP, oriented_image_from_sitk(mask))
    segmentation.AddSegment(segment, "surface")
    surface = None
    if segmentation.CreateRepresentation("Closed surface"):
        surface = segmentation.GetSegment("surface").GetRepresentation("Closed surface")
    if surface is None or surface.GetNumberOfPoints() == 0:
        raise PrimageInputError("could not make a closed surface of the test segment")
    polydata = vtk.vtkPolyData()
    polydata.DeepCopy(surface)
    point_data = polydata.GetPointData()
    for index in reversed(range(point_data.GetNumberOfArrays())):
        if not point_data.GetArrayName(index):  # the converter's unnamed label array
            point_data.RemoveArray(index)
    return polydata


def _diverging_color_node(scene):
    """Slicer's DivergingBlueRed table if the scene has it, else a PRIMAGE blue-white-red one."""
    node = scene.GetNodeByID(SLICER_DIVERGING_COLOR_ID)
    if node is not None:
        return node
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLColorTableNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLColorTableNode")
        if node.GetName() == PRIMAGE_DIVERGING_COLOR_NAME:
            return node
    node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", PRIMAGE_DIVERGING_COLOR_NAME)
    node.SetTypeToUser()
    count = 256
    node.SetNumberOfColors(count)
    blue, white, red = np.array([0.0, 0.2, 0.8]), np.ones(3), np.array([0.8, 0.05, 0.05])
    for index, t in enumerate(np.linspace(-1.0, 1.0, count)):
        rgb = white + t * (red - white) if t >= 0 else white - t * (blue - white)
        node.SetColor(index, "", *rgb.tolist(), 1.0)
    return node


def _show_distances(model_node, scene, limit_mm: float) -> None:
    if model_node.GetDisplayNode() is None:
        model_node.CreateDefaultDisplayNodes()
    display = model_node.GetDisplayNode()
    display.SetActiveScalar(DISTANCE_ARRAY, vtk.vtkAssignAttribute.POINT_DATA)
    display.SetAndObserveColorNodeID(_diverging_color_node(scene).GetID())
    display.SetScalarRangeFlag(slicer.vtkMRMLDisplayNode.UseManualScalarRange)
    display.SetScalarRange(-limit_mm, limit_mm)
    display.SetScalarVisibility(True)
    display.SetVisibility2D(True)


def surface_distance_model(
    reference_segmentation,
    test_segmentation,
    reference_segment: str | None,
    test_segment: str | None,
    *,
    reference_volume=None,
    model_node=None,
    name: str | None = None,
):
    """Model node: the test segment's surface coloured by signed distance to the reference.

    Both segments are exported onto the grid of :func:`compare_segmentation_nodes` (the
    reference volume's, else the reference segmentation's geometry); segments are given by
    name or ID (None: the only segment). The surface is Slicer's closed surface of the test
    mask (RAS mm, the test segmentation's smoothing settings), placed under the grid
    owner's parent transform. Point array :data:`DISTANCE_ARRAY` (active scalars) holds the
    signed distance to the reference's ``"subvoxel"`` surface in mm
    (:func:`primage.segmentation.metrics.signed_surface_distances`): negative inside the
    reference, positive outside. Colours: a diverging blue-white-red table over
    ±max |distance| (white at 0, the extremes at the largest distance). ``model_node`` is
    refilled if given; on bad input no node is created.
    """
    from primage.segmentation.metrics import signed_surface_distances

    scene = _check_same_scene(
        reference_segmentation, test_segmentation, reference_volume, model_node
    )
    if model_node is not None and not model_node.IsA("vtkMRMLModelNode"):
        raise PrimageInputError(f"output node {node_label(model_node)} is not a model node")
    reference = _segments_on_grid(reference_segmentation, reference_volume, None)
    grid = next(iter(reference.values()))
    test = _segments_on_grid(test_segmentation, reference_volume, grid)
    ref_key, reference_mask = _nonempty_mask(reference, reference_segment, reference_segmentation)
    test_key, test_mask = _nonempty_mask(test, test_segment, test_segmentation)
    polydata = _segment_surface(test_mask, test_segmentation.GetSegmentation())
    points_ras = numpy_support.vtk_to_numpy(polydata.GetPoints().GetData()).astype(float)
    distances = signed_surface_distances(reference_mask, ras_to_lps_points(points_ras))
    array = numpy_support.numpy_to_vtk(distances.astype(np.float32), deep=True)
    array.SetName(DISTANCE_ARRAY)
    polydata.GetPointData().AddArray(array)
    polydata.GetPointData().SetActiveScalars(DISTANCE_ARRAY)
    frame_owner = reference_volume if reference_volume is not None else reference_segmentation
    if model_node is None:
        model_node = scene.AddNewNodeByClass("vtkMRMLModelNode")
    model_node.SetName(name or f"{test_key} to {ref_key} surface distance")
    model_node.SetAndObservePolyData(polydata)
    model_node.SetAndObserveTransformNodeID(frame_owner.GetTransformNodeID())
    _show_distances(model_node, scene, max(float(np.abs(distances).max()), 0.01))
    return model_node
