"""Kinetics on MRML nodes (real slicer-core): sequences, DWI volume nodes, outputs as nodes."""

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk
from vtk.util import numpy_support

from primage.errors import PrimageInputError
from primage.mrml.kinetics import (
    adc_from_nodes,
    fcf_from_nodes,
    index_values_text,
    ivim_from_nodes,
    series_from_node,
    tofts_from_nodes,
)
from primage.mrml.segmentations import segmentation_from_label_image
from primage.mrml.selftest import KINETICS_TRUTH, kinetics_inputs, kinetics_scenario
from primage.mrml.sequences import VolumeSeries, sequence_node_from_series
from primage.mrml.volumes import sitk_from_volume_node, volume_node_from_sitk
from primage.synthetic import make_digital_patient


def test_kinetics_scenario_on_a_bare_scene():
    scene = slicer.vtkMRMLScene()
    result = kinetics_scenario(scene)
    assert result["adc"].volumes["adc"].GetAttribute("PRIMAGE.unit") == "mm^2/s"
    names = [
        result["fcf"].segmentation.GetSegmentation().GetNthSegment(i).GetName() for i in range(2)
    ]
    assert names[0].startswith("Habitat 1") and names[1].startswith("Habitat 2")


def test_index_values_and_edited_values(mrml_scene):
    dwi, dce, segmentation = kinetics_inputs(mrml_scene)
    assert index_values_text(dwi) == "0, 50, 100, 200, 400, 600, 800, 1000"
    assert index_values_text(dce).startswith("0, 3, 6, 9")
    assert index_values_text(None) == ""
    # Edited b-values override the node's (here: all doubled, so the ADC halves).
    doubled = ", ".join(str(2 * b) for b in KINETICS_TRUTH["b_values"])
    result = adc_from_nodes(dwi, b_values=doubled, mask_node=segmentation)
    adc = slicer.util.arrayFromVolume(result.volumes["adc"])[:, 2:10, 2:6]
    assert np.median(adc) == pytest.approx(KINETICS_TRUTH["adc_low"] / 2, rel=0.02)
    count = mrml_scene.GetNumberOfNodes()
    with pytest.raises(PrimageInputError, match="3 b-values given but the DWI series has 8"):
        adc_from_nodes(dwi, b_values="0, 500, 1000")
    with pytest.raises(PrimageInputError, match="neither a sequence node nor a diffusion"):
        adc_from_nodes(segmentation)
    assert mrml_scene.GetNumberOfNodes() == count  # nothing added on failure


def _dwi_volume_node(scene, image4d: sitk.Image, b_values):
    """A vtkMRMLDiffusionWeightedVolumeNode with one component per b-value."""
    volumes = [image4d[:, :, :, i] for i in range(image4d.GetSize()[3])]
    node = scene.AddNewNodeByClass("vtkMRMLDiffusionWeightedVolumeNode", "DWI volume")
    first = slicer.vtkMRMLScalarVolumeNode()
    volume_node_from_sitk(volumes[0], None, node=first)
    matrix = vtk.vtkMatrix4x4()
    first.GetIJKToRASMatrix(matrix)
    node.SetIJKToRASMatrix(matrix)
    stacked = np.stack([sitk.GetArrayFromImage(v) for v in volumes], axis=-1).astype(np.float32)
    image_data = vtk.vtkImageData()
    image_data.SetDimensions(stacked.shape[2], stacked.shape[1], stacked.shape[0])
    array = numpy_support.numpy_to_vtk(stacked.reshape(-1, stacked.shape[-1]), deep=True)
    image_data.GetPointData().SetScalars(array)
    node.SetAndObserveImageData(image_data)
    node.SetNumberOfGradients(len(b_values))
    for index, b in enumerate(b_values):
        node.SetBValue(index, b)
        node.SetDiffusionGradient(index, [0.0, 0.0, 1.0 if b else 0.0])
    return node


def test_diffusion_weighted_volume_node_and_ivim(mrml_scene):
    patient = make_digital_patient(0, size=(24, 24, 6), spacing=(6.0, 6.0, 20.0), ivim=True)
    node = _dwi_volume_node(mrml_scene, patient.dwi, patient.b_values)
    image, values, name = series_from_node(node)
    assert name == "b" and values.tolist() == patient.b_values
    np.testing.assert_allclose(image.GetOrigin()[:3], patient.dwi.GetOrigin()[:3], atol=1e-6)
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(patient.dwi)
    )
    assert index_values_text(node) == "0, 50, 100, 200, 400, 600, 800, 1000"
    reference = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    volume_node_from_sitk(sitk.Cast(patient.tissues, sitk.sitkFloat32), None, node=reference)
    tumour = segmentation_from_label_image(
        patient.tissues, mrml_scene, {8: "tumour"}, reference_volume_node=reference
    )
    adc = adc_from_nodes(node, mask_node=tumour, mask_segment="tumour", bmin=200)
    assert adc.summary["roi"]["adc"]["median"] == pytest.approx(0.8e-3, rel=0.05)
    ivim = ivim_from_nodes(node, mask_node=tumour, mask_segment="tumour")
    assert ivim.summary["roi"]["ivim_d"]["median"] == pytest.approx(0.8e-3, rel=0.05)
    assert ivim.summary["roi"]["ivim_f"]["median"] == pytest.approx(0.10, abs=0.03)
    assert ivim.chart.GetNumberOfPlotSeriesNodes() == 2
    back = sitk_from_volume_node(ivim.volumes["ivim_d"])
    assert back.GetSize() == patient.dwi.GetSize()[:3]


def test_tofts_and_fcf_iauc60_on_the_digital_patient(mrml_scene):
    patient = make_digital_patient(1, size=(32, 32, 8), spacing=(4.5, 4.5, 15.0))
    dce = sequence_node_from_series(
        VolumeSeries.from_image4d(patient.dce, patient.frame_times, "time", "s"), mrml_scene, "DCE"
    )
    labels = segmentation_from_label_image(
        patient.tissues, mrml_scene, {7: "vessel", 8: "tumour", 9: "necrosis"}
    )
    tumour = segmentation_from_label_image(patient.tumour, mrml_scene, {1: "tumour"})
    parker = tofts_from_nodes(dce, mask_node=labels, mask_segment="tumour", extended=True)
    assert parker.summary["aif"]["delay_s"] == pytest.approx(20.0, abs=1.0)
    assert parker.summary["roi"]["ktrans"]["median"] == pytest.approx(0.25, rel=0.1)
    assert parker.summary["roi"]["ve"]["median"] == pytest.approx(0.30, abs=0.05)
    assert set(parker.volumes) >= {"ktrans", "kep", "ve", "vp"}
    measured = tofts_from_nodes(
        dce,
        mask_node=labels,
        mask_segment="tumour",
        aif="segment",
        aif_node=labels,
        aif_segment="vessel",
        extended=True,
    )
    assert measured.summary["aif"]["kind"] == "sampled"
    # A 6 s sampled vessel curve misses the first-pass peak: Ktrans is biased, but bounded.
    assert measured.summary["roi"]["ktrans"]["median"] == pytest.approx(0.25, rel=0.25)
    with pytest.raises(PrimageInputError, match="AIF vessel"):
        tofts_from_nodes(dce, aif="segment")
    fcf = fcf_from_nodes(dce, "iauc60", mask_node=tumour)
    habitats = fcf.summary["habitats"]
    assert [h["label"] for h in habitats] == [1, 2]
    assert habitats[0]["value"] < habitats[1]["value"]  # necrosis enhances least
    truth = sitk.GetArrayFromImage(patient.tissues)
    confidence = slicer.util.arrayFromVolume(fcf.volumes["confidence"])
    assert confidence[truth == 0].max() == 0.0
    assert fcf.chart.GetNumberOfPlotSeriesNodes() == 2
    assert fcf.table.GetNumberOfRows() == 2
