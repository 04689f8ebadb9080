"""Radiomics on MRML nodes (primage.mrml.radiomics) with real slicer-core: tables checked."""

import csv
import tempfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk

from primage.errors import PrimageInputError
from primage.mrml.radiomics import (
    export_table_csv,
    extract_features_from_nodes,
    harmonize_table_node,
    regions_for_volume,
    robustness_cases_from_volumes,
    robustness_table_from_nodes,
    start_extraction_job,
    start_robustness_job,
)
from primage.mrml.segmentations import segmentation_from_label_image
from primage.mrml.selftest import radiomics_job_scenario, radiomics_scenario, synthetic_t2w
from primage.mrml.tables import rows_from_table_node, table_node_from_rows
from primage.mrml.volumes import volume_node_from_sitk

pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")

FAST = "setting:\n  binWidth: 25\nfeatureClass:\n  shape:\n  firstorder:\n  glcm: [Contrast]\n"


@pytest.fixture
def fast_params(tmp_path):
    path = tmp_path / "fast.yaml"
    path.write_text(FAST)
    return path


def _job_folders() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("primage-radiomics-*")}


def test_radiomics_scenario_on_a_bare_scene():
    scene = slicer.vtkMRMLScene()
    table = radiomics_scenario(scene)
    assert scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == 2  # features + diagnostics
    assert table.GetName() == "Radiomics features"


def test_background_job_scenario():
    before = _job_folders()
    radiomics_job_scenario(slicer.vtkMRMLScene())
    assert _job_folders() == before  # every job folder was removed


def test_overlapping_segments_are_each_measured_whole(mrml_scene, fast_params):
    image, mask = synthetic_t2w()
    volume = volume_node_from_sitk(image, mrml_scene, name="T2")
    tumour = sitk.GetArrayFromImage(mask)
    segmentation = segmentation_from_label_image(
        mask, mrml_scene, {1: "tumour"}, reference_volume_node=volume
    )
    # A second segment overlapping the first: Slicer keeps it in another layer.
    half = tumour.copy()
    half[:, :, : tumour.shape[2] // 2 + 3] = 0
    other = sitk.GetImageFromArray(half)
    other.CopyInformation(mask)
    extra = segmentation_from_label_image(
        other, mrml_scene, {1: "half"}, reference_volume_node=volume
    )
    segmentation.GetSegmentation().CopySegmentFromSegmentation(
        extra.GetSegmentation(), extra.GetSegmentation().GetNthSegmentID(0)
    )
    table, side = extract_features_from_nodes([volume], segmentation, params_file=fast_params)
    rows = rows_from_table_node(table)
    assert [r["segment"] for r in rows] == ["tumour", "half"]
    voxels = [int(r["diagnostics_primage_voxels"]) for r in rows_from_table_node(side)]
    assert voxels == [int(tumour.sum()), int(half.sum())]
    assert rows[0]["original_shape_VoxelVolume"] == pytest.approx(tumour.sum() * 0.8 * 0.9 * 3.0)


def test_labelmap_volume_as_regions_and_diagnostics_columns(mrml_scene, fast_params):
    image, mask = synthetic_t2w()
    volume = volume_node_from_sitk(image, mrml_scene, name="T2")
    labels = sitk.GetArrayFromImage(mask).astype(np.uint8) * 4
    labels[0, 0, :3] = 9
    label_image = sitk.GetImageFromArray(labels)
    label_image.CopyInformation(mask)
    labelmap = volume_node_from_sitk(label_image, mrml_scene, name="labels", labelmap=True)
    assert [r.name for r in regions_for_volume(labelmap, volume)] == ["label 4", "label 9"]
    table, side = extract_features_from_nodes(
        [volume], labelmap, ["4"], params_file=fast_params, diagnostics="columns"
    )
    assert side is None
    (row,) = rows_from_table_node(table)
    assert row["segment"] == "label 4" and row["error"] == ""
    assert row["diagnostics_primage_voxels"] == str(int((labels == 4).sum()))
    # Features are numeric columns (sortable, plottable), text columns stay text.
    features = table.GetTable().GetColumnByName("original_firstorder_Mean")
    assert isinstance(features, vtk.vtkDoubleArray)
    assert isinstance(table.GetTable().GetColumnByName("error"), vtk.vtkStringArray)


def _cases_scene(scene):
    """Three volumes (cases), each with two observers' segmentations made on it."""
    volumes = []
    for index, radius in enumerate((4.0, 5.5, 7.0)):
        image, _ = synthetic_t2w(seed=index)
        volume = volume_node_from_sitk(image, scene, name=f"case{index}")
        k, j, i = np.indices((16, 32, 32))
        for observer, grow in ((1, 0.0), (2, 0.8)):
            inside = ((i - 16) / (radius + grow)) ** 2 + ((j - 16) / (radius + grow)) ** 2 + (
                (k - 8) / 3.0
            ) ** 2 <= 1
            mask = sitk.GetImageFromArray(inside.astype(np.uint8))
            mask.CopyInformation(image)
            segmentation_from_label_image(
                mask,
                scene,
                {1: "tumour"},
                reference_volume_node=volume,
                name=f"case{index} observer {observer}",
            )
        volumes.append(volume)
    return volumes


def test_robustness_through_mrml(mrml_scene, fast_params):
    volumes = _cases_scene(mrml_scene)
    cases = robustness_cases_from_volumes(volumes)
    assert [(name, [m.GetName() for m, _ in masks]) for name, _, masks in cases] == [
        (f"case{i}", [f"case{i} observer 1", f"case{i} observer 2"]) for i in range(3)
    ]
    table = robustness_table_from_nodes(cases, params_file=fast_params)
    rows = rows_from_table_node(table)
    assert list(rows[0]) == ["feature", "icc", "ci_low", "ci_high", "class"]
    volume = next(r for r in rows if r["feature"] == "original_shape_VoxelVolume")
    assert volume["icc"] > 0.75 and volume["class"] in ("good", "excellent")
    assert volume["ci_low"] <= volume["icc"] <= volume["ci_high"]

    # The same through a background job, with perturbations.
    job = start_robustness_job(
        cases, perturbations=["translate"], params_file=fast_params, workers=1
    )
    status = job.wait(120)
    assert not status.error, status.error
    icc_table, _ = job.finish()
    by_feature = {r["feature"]: r for r in rows_from_table_node(icc_table)}
    assert by_feature["original_shape_VoxelVolume"]["icc"] == 1.0  # translation keeps the volume

    with pytest.raises(PrimageInputError, match="at least 3 cases"):
        start_robustness_job(cases[:2], params_file=fast_params)
    with pytest.raises(PrimageInputError, match="has no segment 'core'"):
        robustness_cases_from_volumes(volumes, "core")


def test_harmonise_and_export_table_nodes(mrml_scene, tmp_path):
    rng = np.random.default_rng(0)
    rows = [
        {"image": f"{site}{i}", "site": site, "f": float(rng.normal(3.0 * (site == "B"), 1.0)),
         "g": float(rng.normal(5.0 - 2.0 * (site == "B"), 1.0))}
        for site in "AB"
        for i in range(6)
    ]  # fmt: skip
    table = table_node_from_rows(rows, mrml_scene, name="cohort")
    harmonised = harmonize_table_node(table, "site")
    assert harmonised.GetName() == "cohort harmonised" and harmonised is not table
    values = rows_from_table_node(harmonised)
    means = [np.mean([r["f"] for r in values if r["site"] == s]) for s in "AB"]
    assert abs(means[0] - means[1]) < 0.5
    assert [r["f"] for r in rows_from_table_node(table)] == [r["f"] for r in rows]  # unchanged
    path = export_table_csv(harmonised, tmp_path / "h.csv")
    with open(path, newline="") as stream:
        exported = list(csv.DictReader(stream))
    assert [float(r["f"]) for r in exported] == [r["f"] for r in values]


def test_bad_input_is_refused_before_any_work(mrml_scene, tmp_path):
    image, mask = synthetic_t2w()
    volume = volume_node_from_sitk(image, mrml_scene, name="T2")
    segmentation = segmentation_from_label_image(
        mask, mrml_scene, {1: "tumour"}, reference_volume_node=volume
    )
    labelmap = volume_node_from_sitk(mask, mrml_scene, name="mask", labelmap=True)
    before = _job_folders()
    bad = tmp_path / "bad.yaml"
    bad.write_text("setting:\n  binwidth: 25\n")
    with pytest.raises(PrimageInputError, match="unknown key 'binwidth'"):
        start_extraction_job([volume], segmentation, params_file=bad)
    with pytest.raises(PrimageInputError, match="no volume selected"):
        extract_features_from_nodes([], segmentation)
    with pytest.raises(PrimageInputError, match="is a labelmap"):
        extract_features_from_nodes([labelmap], segmentation)
    twin = volume_node_from_sitk(image, mrml_scene, name="T2")
    with pytest.raises(PrimageInputError, match="two volumes are called 'T2'"):
        start_extraction_job([volume, twin], segmentation)
    with pytest.raises(PrimageInputError, match="no segment 'liver'"):
        extract_features_from_nodes([volume], segmentation, ["liver"])
    with pytest.raises(PrimageInputError, match="no segmentation or labelmap"):
        extract_features_from_nodes([volume], None)
    assert _job_folders() == before
    tables = mrml_scene.GetNumberOfNodesByClass("vtkMRMLTableNode")
    assert tables == 0


def test_job_table_keeps_failed_rows_numeric(mrml_scene, fast_params):
    """A failed (empty) segment's row in a job's table: NaN features, numeric columns."""
    image, mask = synthetic_t2w()
    volume = volume_node_from_sitk(image, mrml_scene, name="T2")
    segmentation = segmentation_from_label_image(
        mask, mrml_scene, {1: "tumour", 2: "empty"}, reference_volume_node=volume
    )
    job = start_extraction_job([volume], segmentation, params_file=fast_params, workers=1)
    assert not job.wait(120).error
    table, side = job.finish(diagnostics="none")
    assert side is None
    rows = rows_from_table_node(table)
    assert [r["segment"] for r in rows] == ["tumour", "empty"]
    assert "empty" in rows[1]["error"] and np.isnan(rows[1]["original_firstorder_Mean"])
    column = table.GetTable().GetColumnByName("original_firstorder_Mean")
    assert isinstance(column, vtk.vtkDoubleArray)
