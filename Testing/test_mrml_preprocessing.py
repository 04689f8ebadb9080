"""Preprocessing on volume nodes: the MRML layer around primage.preprocessing.run_steps."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
import slicer

from primage.errors import PrimageInputError
from primage.mrml.preprocessing import RECORDS_ATTRIBUTE, preprocess_volume_node
from primage.mrml.selftest import preprocessing_scenario, synthetic_t2w
from primage.mrml.volumes import sitk_from_volume_node, volume_node_from_sitk
from primage.preprocessing import run_steps

FAST_STEPS = [
    {"step": "curvature_flow", "iterations": 1},
    {"step": "percentile", "low": 2, "high": 98},
]


def _volume_count(scene) -> int:
    return scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")


def test_preprocessing_scenario_on_a_bare_scene():
    scene = slicer.vtkMRMLScene()
    output = preprocessing_scenario(scene)
    assert _volume_count(scene) == 2  # the input and the output, no temporary volumes left
    assert output.GetScene() is scene


def test_result_equals_the_engine_run_directly(mrml_scene):
    image, mask = synthetic_t2w()
    node = volume_node_from_sitk(image, mrml_scene, name="T2")
    labelmap = volume_node_from_sitk(mask, mrml_scene, name="tumour", labelmap=True)
    output = preprocess_volume_node(node, steps=FAST_STEPS, mask_node=labelmap)

    expected = run_steps(image, FAST_STEPS, mask=mask)
    np.testing.assert_array_equal(
        slicer.util.arrayFromVolume(output), sitk.GetArrayFromImage(expected.image)
    )
    records = json.loads(output.GetAttribute(RECORDS_ATTRIBUTE))
    for record, reference in zip(records, expected.records, strict=True):
        assert {k: v for k, v in record.items() if k != "seconds"} == {
            k: v for k, v in reference.items() if k != "seconds"
        }
    assert records[1]["mask"] == "given"


def test_preset_file_and_name_errors(tmp_path, mrml_scene):
    image, _ = synthetic_t2w()
    node = volume_node_from_sitk(image, mrml_scene, name="T2")
    preset = tmp_path / "fast.json"
    preset.write_text(json.dumps({"steps": FAST_STEPS}))
    output = preprocess_volume_node(node, preset=preset)
    assert [r["step"] for r in json.loads(output.GetAttribute(RECORDS_ATTRIBUTE))] == [
        "curvature_flow",
        "percentile",
    ]
    count = _volume_count(mrml_scene)
    with pytest.raises(PrimageInputError, match="not both"):
        preprocess_volume_node(node, steps=FAST_STEPS, preset="t2w")
    with pytest.raises(PrimageInputError, match="no preprocessing steps"):
        preprocess_volume_node(node)
    with pytest.raises(PrimageInputError, match="empty"):
        preprocess_volume_node(node, steps=[])
    with pytest.raises(PrimageInputError):
        preprocess_volume_node(node, steps=[{"step": "no_such_step"}])
    with pytest.raises(PrimageInputError, match="no image data"):
        preprocess_volume_node(
            mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode"), steps=FAST_STEPS
        )
    with pytest.raises(PrimageInputError, match="not in a scene"):
        preprocess_volume_node(
            volume_node_from_sitk(image, None, node=slicer.vtkMRMLScalarVolumeNode()),
            steps=FAST_STEPS,
        )
    assert _volume_count(mrml_scene) == count + 1  # only the empty node added above


def test_output_node_given_and_in_place(mrml_scene):
    image, _ = synthetic_t2w()
    node = volume_node_from_sitk(image, mrml_scene, name="T2")
    target = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "my output")
    assert preprocess_volume_node(node, steps=FAST_STEPS, output_node=target) is target
    assert target.GetName() == "my output"
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(sitk_from_volume_node(node)), sitk.GetArrayFromImage(image)
    )

    assert preprocess_volume_node(node, steps=FAST_STEPS, output_node=node) is node
    np.testing.assert_array_equal(
        slicer.util.arrayFromVolume(node), slicer.util.arrayFromVolume(target)
    )
    assert node.GetAttribute(RECORDS_ATTRIBUTE)


def test_output_follows_the_input_transform_and_resampling_changes_the_grid(mrml_scene):
    image, _ = synthetic_t2w()
    node = volume_node_from_sitk(image, mrml_scene, name="T2")
    transform = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    node.SetAndObserveTransformNodeID(transform.GetID())
    output = preprocess_volume_node(
        node, steps=[{"step": "resample", "spacing_mm": [1.6, 1.8, 3.0]}]
    )
    assert output.GetTransformNodeID() == transform.GetID()
    resampled = sitk_from_volume_node(output)
    assert resampled.GetSize() == (16, 16, 16)
    np.testing.assert_allclose(resampled.GetSpacing(), (1.6, 1.8, 3.0))
    np.testing.assert_allclose(resampled.GetDirection(), image.GetDirection(), atol=1e-9)


def test_bias_field_and_reference_outputs(mrml_scene):
    image, mask = synthetic_t2w()
    node = volume_node_from_sitk(image, mrml_scene, name="T2")
    bias = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "bias")
    n4 = [{"step": "n4", "iterations": [3], "control_point_spacing_mm": 20.0}]
    output = preprocess_volume_node(node, steps=n4, bias_field_node=bias)
    field = sitk_from_volume_node(bias)
    assert field.GetSize() == image.GetSize()
    values = sitk.GetArrayFromImage(field)
    assert np.all(values > 0) and values.std() > 0
    # corrected = input / bias field, voxel by voxel
    np.testing.assert_allclose(
        slicer.util.arrayFromVolume(output) * values,
        sitk.GetArrayFromImage(image),
        rtol=1e-3,
        atol=1e-2,
    )
    count = _volume_count(mrml_scene)
    with pytest.raises(PrimageInputError, match="bias field"):
        preprocess_volume_node(node, steps=FAST_STEPS, bias_field_node=bias)
    assert _volume_count(mrml_scene) == count  # nothing written on failure

    reference = volume_node_from_sitk(sitk.Cast(image * 2.0 + 10.0, sitk.sitkFloat32), mrml_scene)
    matched = preprocess_volume_node(
        node, steps=[{"step": "histogram_match"}], reference_node=reference
    )
    assert (
        slicer.util.arrayFromVolume(matched).mean() > 1.5 * slicer.util.arrayFromVolume(node).mean()
    )
    with pytest.raises(PrimageInputError, match="reference"):
        preprocess_volume_node(node, steps=[{"step": "histogram_match"}])
    del mask
