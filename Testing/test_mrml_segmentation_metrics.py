"""Segmentation agreement through MRML (real slicer-core): tables and STAPLE nodes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("slicer")

from primage.errors import PrimageInputError  # noqa: E402
from primage.mrml.segmentation_metrics import (  # noqa: E402
    compare_segmentation_nodes,
    staple_from_segmentation_nodes,
)
from primage.mrml.segmentations import segmentation_from_label_image  # noqa: E402
from primage.mrml.selftest import segmentation_scenario  # noqa: E402
from primage.mrml.tables import rows_from_table_node  # noqa: E402
from primage.mrml.volumes import volume_node_from_sitk  # noqa: E402
from primage.segmentation.metrics import compare_label_images  # noqa: E402
from primage.synthetic import oblique_direction  # noqa: E402


def _labels(shift=0, direction=None) -> sitk.Image:
    array = np.zeros((10, 30, 30), np.uint8)
    array[3:7, 8 + shift : 20 + shift, 9:21] = 1
    array[4:6, 12:16, 12:16] = 2
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.9, 3.0))
    image.SetOrigin((10.0, -5.0, 7.0))
    if direction is not None:
        image.SetDirection(direction)
    return image


def test_shared_scenario(mrml_scene):
    segmentation_scenario(mrml_scene)


def test_table_contents_equal_the_engine_on_an_oblique_grid(mrml_scene):
    direction = oblique_direction((10.0, 20.0, 30.0))
    reference, test = _labels(0, direction), _labels(2, direction)
    names = {1: "rim", 2: "core"}
    ref_node = segmentation_from_label_image(reference, mrml_scene, names, name="observer 1")
    test_node = segmentation_from_label_image(test, mrml_scene, names, name="observer 2")
    volume = volume_node_from_sitk(sitk.Cast(reference, sitk.sitkFloat32), mrml_scene, name="grid")
    table = compare_segmentation_nodes(ref_node, test_node, reference_volume=volume)
    rows = rows_from_table_node(table)
    assert [(r["reference_segment"], r["test_segment"]) for r in rows] == [
        ("rim", "rim"),
        ("core", "core"),
    ]
    expected = {row["label"]: row for row in compare_label_images(reference, test)}
    for row, label in zip(rows, (1, 2), strict=True):
        for name in (
            "dice",
            "jaccard",
            "hausdorff",
            "hausdorff95",
            "assd",
            "volume_test_ml",
            "fnr",
        ):
            assert row[name] == pytest.approx(expected[label][name], rel=1e-9, abs=1e-12), name
    # A box shifted by two voxels of 0.9 mm: exactly 1.8 mm between the corner surfaces.
    corner = compare_segmentation_nodes(
        ref_node, test_node, reference_volume=volume, surface="corner"
    )
    assert rows_from_table_node(corner)[0]["hausdorff"] == pytest.approx(2 * 0.9)
    assert table.GetColumnUnitLabel("volume_reference_ml") == "mL"
    # Into an existing table, with explicit segment pairs.
    again = compare_segmentation_nodes(
        ref_node, test_node, pairs=[("rim", "core")], output_table=table
    )
    assert again is table and len(rows_from_table_node(table)) == 1


def test_empty_segment_gives_nan_with_a_note(mrml_scene):
    ref_node = segmentation_from_label_image(
        _labels(), mrml_scene, {1: "tumour", 2: "core", 3: "gone"}
    )
    test_node = segmentation_from_label_image(
        _labels(1), mrml_scene, {1: "tumour", 2: "core", 3: "gone"}
    )
    rows = rows_from_table_node(compare_segmentation_nodes(ref_node, test_node))
    gone = rows[-1]
    assert gone["reference_segment"] == "gone" and math.isnan(gone["dice"])
    assert "both masks are empty" in gone["notes"]


def test_bad_input(mrml_scene):
    one = segmentation_from_label_image(_labels(), mrml_scene, {1: "a", 2: "b"})
    other = segmentation_from_label_image(_labels(), mrml_scene, {1: "c", 2: "d"})
    with pytest.raises(PrimageInputError, match="no segment names in common"):
        compare_segmentation_nodes(one, other)
    with pytest.raises(PrimageInputError, match="no segment 'x'"):
        compare_segmentation_nodes(one, other, pairs=[("x", "c")])
    with pytest.raises(PrimageInputError, match="three or more"):
        staple_from_segmentation_nodes([one, other], "a")
    with pytest.raises(PrimageInputError, match="select a reference"):
        compare_segmentation_nodes(None, other)


def test_staple_node_holds_the_consensus(mrml_scene):
    nodes = [
        segmentation_from_label_image(_labels(shift), mrml_scene, {1: "tumour"}, name=f"obs{shift}")
        for shift in (0, 1, 2)
    ]
    consensus, table = staple_from_segmentation_nodes(nodes, "tumour")
    from primage.mrml.segmentations import label_images_from_segmentation

    mask = label_images_from_segmentation(consensus, reference=_labels())["tumour"][0]
    expected = sitk.GetArrayFromImage(_labels(1)) == 1
    assert np.array_equal(sitk.GetArrayFromImage(mask).astype(bool), expected)
    rows = rows_from_table_node(table)
    assert [r["observer"] for r in rows] == ["obs0", "obs1", "obs2"]
    assert rows[1]["dice_vs_consensus"] == pytest.approx(1.0)
