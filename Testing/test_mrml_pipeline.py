"""The "process this case" action on real MRML nodes (slicer-core): the chain on a scene,
in this process (``process_case_nodes``) and as the module runs it, in a separate process
(``start_case_job``: progress, cancel, results imported by ``CaseJob.finish``)."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time

import numpy as np
import pytest

from primage.errors import PrimageInputError


@pytest.fixture(scope="module")
def in_process():
    """The shared pipeline scenario run once in this process: (scene, result nodes)."""
    import slicer

    from primage.mrml.selftest import pipeline_scenario

    scene = slicer.vtkMRMLScene()
    return scene, pipeline_scenario(scene)


@pytest.fixture
def small_case(mrml_scene):
    """A tiny T2w + CT case (fast to export)."""
    from primage.mrml.volumes import volume_node_from_sitk
    from primage.synthetic import make_digital_patient

    patient = make_digital_patient(2, size=(32, 32, 8), spacing=(4.5, 4.5, 20.0))
    t2w = volume_node_from_sitk(patient.t2w, mrml_scene, "T2w")
    ct = volume_node_from_sitk(patient.ct, mrml_scene, "CT")
    return mrml_scene, t2w, ct, patient


def test_process_case_nodes_scenario(in_process):
    mrml_scene, nodes = in_process
    # Every result is in the scene.
    for node in [*nodes.volumes.values(), *nodes.sequences.values(), *nodes.maps.values()]:
        assert mrml_scene.IsNodePresent(node)
    assert nodes.qc_table.GetAttribute("PRIMAGE.pipeline")
    assert nodes.transforms["dwi"].GetAttribute("PRIMAGE.registration.qc")


def _names(nodes) -> dict[str, list[str]]:
    groups = ("volumes", "sequences", "transforms", "maps", "habitats")
    names = {group: sorted(n.GetName() for n in getattr(nodes, group).values()) for group in groups}
    names["segmentation"] = [nodes.segmentation.GetName()]
    return names


def test_case_job_gives_the_same_nodes_as_in_process(in_process):
    """The same scenario as a background job: the same nodes, features and map voxels."""
    import SimpleITK as sitk
    import slicer

    from primage.mrml.selftest import pipeline_scenario
    from primage.mrml.tables import rows_from_table_node
    from primage.mrml.volumes import sitk_from_volume_node

    _, local = in_process
    scene = slicer.vtkMRMLScene()
    job = pipeline_scenario(scene, background=True)  # the scenario's checks hold as well
    assert _names(job) == _names(local)
    for table in ("features_table", "qc_table"):  # repr: NaN cells compare equal too
        rows = [rows_from_table_node(getattr(nodes, table)) for nodes in (job, local)]
        assert repr(rows[0]) == repr(rows[1]), table
    assert len(rows_from_table_node(job.features_table)[0]) > 100  # every feature compared
    for key in ("status", "series", "registration", "kinetics"):
        assert job.summary[key] == local.summary[key]
    for key in local.maps:  # ADC, DCE maps: voxel for voxel
        a = sitk.GetArrayFromImage(sitk_from_volume_node(job.maps[key]))
        b = sitk.GetArrayFromImage(sitk_from_volume_node(local.maps[key]))
        assert np.array_equal(a, b), key
    for node in [*job.volumes.values(), *job.sequences.values(), *job.maps.values()]:
        assert scene.IsNodePresent(node)


def test_case_job_cancel(in_process, tmp_path):
    """Cancel while the chain works: the process group is killed, the temporary folder is
    removed and no node is added. A user's output folder is kept."""
    from primage.mrml.pipeline import start_case_job

    scene, _ = in_process
    inputs = {role: scene.GetFirstNodeByName(name) for role, name in
              (("t2w", "T2w"), ("dwi", "DWI"), ("dce", "DCE"))}  # fmt: skip
    tumour = scene.GetFirstNodeByName("Tumour")
    assert all(inputs.values()) and tumour is not None
    count = scene.GetNumberOfNodes()
    job = start_case_job(inputs, tumour, config={"preprocess": {"presets": {"t2w": "t2w"}}})
    assert job.folder.is_dir() and job.poll().running
    status, deadline = job.poll(), time.monotonic() + 120
    while status.running and status.fraction == 0 and time.monotonic() < deadline:
        time.sleep(0.02)  # until the chain reports progress: it is working then
        status = job.poll()
    assert status.running, f"the job ended before it could be cancelled: {status.error}"
    job.cancel()
    assert job.process.returncode == -9
    with pytest.raises(ProcessLookupError):
        os.killpg(job.process.pid, 0)  # no process of the group is left
    assert not job.folder.exists()
    assert not job.poll().running
    assert scene.GetNumberOfNodes() == count
    # With an output folder the exported case stays there; only the job's own folder goes.
    job = start_case_job(inputs, tumour, output_folder=tmp_path, case_name="kept")
    job.cancel()
    assert not job.folder.exists()
    assert (tmp_path / "input" / "kept" / "t2w.nii.gz").is_file()
    assert scene.GetNumberOfNodes() == count


def test_case_job_bad_input_refused_before_a_process_starts(small_case, tmp_path, monkeypatch):
    from primage.mrml.pipeline import start_case_job
    from primage.mrml.segmentations import segmentation_from_label_image

    scene, t2w, ct, patient = small_case
    tumour = segmentation_from_label_image(patient.tumour, scene, {1: "tumour"}, name="Tumour")

    def no_process(*args, **kwargs):
        raise AssertionError("a process was started for bad input")

    monkeypatch.setattr(subprocess, "Popen", no_process)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    count = scene.GetNumberOfNodes()
    with pytest.raises(PrimageInputError, match="reference volume"):
        start_case_job({"ct": ct})
    with pytest.raises(PrimageInputError, match="case identifier"):
        start_case_job({"t2w": t2w}, case_name="../elsewhere")
    with pytest.raises(PrimageInputError):
        start_case_job({"t2w": t2w}, config={"steps": ["no-such-step"]})
    # Refused during the export: the job folder made for it is removed.
    with pytest.raises(PrimageInputError, match="no-such-segment"):
        start_case_job({"t2w": t2w, "ct": ct}, tumour, tumour_segment="no-such-segment")
    assert list(tmp_path.iterdir()) == []
    assert scene.GetNumberOfNodes() == count


def test_case_job_failure_adds_no_node(small_case):
    """A step that fails in the job: finish raises its message, no node, folder removed."""
    from primage.mrml.pipeline import start_case_job

    scene, t2w, ct, _ = small_case
    count = scene.GetNumberOfNodes()
    job = start_case_job({"t2w": t2w, "ct": ct}, config={"steps": ["segment"]})
    status = job.wait(timeout=120)
    assert status.returncode == 2 and "segment failed: no tumour mask" in status.error
    with pytest.raises(PrimageInputError, match="segment failed: no tumour mask"):
        job.finish()
    assert not job.folder.exists()
    assert scene.GetNumberOfNodes() == count


def test_process_case_nodes_kept_folder_and_bad_input(small_case, tmp_path):
    from primage.mrml.pipeline import process_case_nodes

    mrml_scene, t2w, ct, _ = small_case
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
