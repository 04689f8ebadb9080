"""Agreement metrics and STAPLE consensus between segmentation nodes.

Segments are exported with :func:`~primage.mrml.segmentations.label_images_from_segmentation`
onto one grid — the reference volume's when given (parent transforms honoured), else the
reference segmentation's own reference geometry — and measured with
:mod:`primage.segmentation` (distances in mm, volumes in mL).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import SimpleITK as sitk

from primage.errors import PrimageInputError
from primage.mrml.segmentations import label_images_from_segmentation, segmentation_from_label_image
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
        raise PrimageInputError(
            f"segmentation {node_label(node)} has no segment {name!r} (segments: "
            + ", ".join(segments)
            + ")"
        )
    return name


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
