"""The "process this case" action on real MRML nodes (slicer-core): the chain on a scene."""

from __future__ import annotations

import pytest

from primage.errors import PrimageInputError


def test_process_case_nodes_scenario(mrml_scene):
    from primage.mrml.selftest import pipeline_scenario

    nodes = pipeline_scenario(mrml_scene)
    # Every result is in the scene.
    for node in [*nodes.volumes.values(), *nodes.sequences.values(), *nodes.maps.values()]:
        assert mrml_scene.IsNodePresent(node)
    assert nodes.qc_table.GetAttribute("PRIMAGE.pipeline")
    assert nodes.transforms["dwi"].GetAttribute("PRIMAGE.registration.qc")


def test_process_case_nodes_kept_folder_and_bad_input(mrml_scene, tmp_path):
    from primage.mrml.pipeline import process_case_nodes
    from primage.mrml.volumes import volume_node_from_sitk
    from primage.synthetic import make_digital_patient

    patient = make_digital_patient(2, size=(32, 32, 8), spacing=(4.5, 4.5, 20.0))
    t2w = volume_node_from_sitk(patient.t2w, mrml_scene, "T2w")
    ct = volume_node_from_sitk(patient.ct, mrml_scene, "CT")
    with pytest.raises(PrimageInputError, match="reference volume"):
        process_case_nodes({"ct": ct}, config={"steps": ["preprocess"]})
    # No tumour: the segment step fails, the message names it, and no node is added.
    count = mrml_scene.GetNumberOfNodes()
    with pytest.raises(PrimageInputError, match="segment failed: no tumour mask"):
        process_case_nodes({"t2w": t2w, "ct": ct}, config={"steps": ["segment"]})
    assert mrml_scene.GetNumberOfNodes() == count
    # With a kept folder a second run reuses what is up to date.
    config = {"steps": ["preprocess", "register"], "preprocess": {"presets": {"t2w": "t2w"}}}
    first = process_case_nodes({"t2w": t2w, "ct": ct}, config=config, output_folder=tmp_path)
    assert set(first.volumes) == {"t2w", "ct"} and "ct" in first.transforms
    second = process_case_nodes({"t2w": t2w, "ct": ct}, config=config, output_folder=tmp_path)
    states = {row["step"]: row["state"] for row in second.summary["steps"]}
    assert states["preprocess"] == states["register"] == "up-to-date"
