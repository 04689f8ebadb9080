"""DICOM series into real MRML nodes (slicer-core): roles on loaded nodes, sequence index
values from b-values and frame times, geometry to the voxel."""

from __future__ import annotations

import pydicom
import pytest
import SimpleITK as sitk
from _dicom_data import MR_T1, MR_T2, same_voxels

slicer = pytest.importorskip("slicer")

from primage.dicom.synthetic import (  # noqa: E402
    IDENTITIES,
    Study,
    flipped_slices,
    split_volumes,
    write_petct,
    write_series,
    write_tumour_seg,
)
from primage.errors import PrimageInputError  # noqa: E402
from primage.mrml.dicom import (  # noqa: E402
    ROLE_ATTRIBUTE,
    load_dicom_files,
    nodes_by_role,
    propose_scene_roles,
    series_uid_of_node,
    set_node_role,
)
from primage.mrml.segmentations import segment_binary_image  # noqa: E402
from primage.mrml.sequences import series_from_sequence_node  # noqa: E402
from primage.mrml.volumes import sitk_from_volume_node  # noqa: E402
from primage.synthetic import make_digital_patient  # noqa: E402

TIMES = (0.0, 7.5, 15.0, 30.0)
B_VALUES = (0.0, 400.0, 800.0)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A GE-style study: flipped T2w, DWI in the GE private tag, DCE split per time point."""
    root = tmp_path_factory.mktemp("mrml_dicom")
    patient = make_digital_patient(
        2, size=(16, 16, 4), spacing=(8.0, 8.0, 8.0), b_values=B_VALUES, frame_times_s=TIMES
    )
    info = Study(IDENTITIES["ge"], "GE MEDICAL SYSTEMS")
    files: dict[str, list] = {}
    t2 = flipped_slices(patient.t2w)
    files["t2w"] = write_series(
        root / "t2", info, [t2], description="Ax T2 FSE", series_number=2, attributes=MR_T2
    )
    dwi = split_volumes(patient.dwi)
    files["dwi"] = write_series(
        root / "dwi",
        info,
        dwi,
        description="Ax DWI",
        series_number=3,
        attributes={"EchoTime": "70", "RepetitionTime": "3000"},
        b_values=list(B_VALUES),
        b_convention="ge",
    )
    dce = split_volumes(patient.dce)
    files["dce"] = []
    for number, volume in enumerate(dce):
        files["dce"] += write_series(
            root / f"dce{number}",
            info,
            [volume],
            description="Ax LAVA",
            series_number=10 + number,
            attributes=MR_T1,
            times_s=[TIMES[number] - 60.0 * number],
        )
    truth: dict = {}
    write_petct(root / "petct", patient, truth)
    seg = write_tumour_seg(root / "seg", truth["petct/ct"].files, patient.tumour)
    return {"root": root, "files": files, "t2w": t2, "dwi": dwi, "dce": dce, "truth": truth,
            "seg": seg, "tumour": patient.tumour}  # fmt: skip


def _series_uid(path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)


def test_series_become_nodes_with_index_values_and_exact_geometry(study):
    scene = slicer.vtkMRMLScene()
    files = [f for group in study["files"].values() for f in group]
    nodes, skipped = load_dicom_files(scene, files)
    assert skipped == []
    assert sorted(nodes) == ["dce", "dwi", "t2w"]
    same_voxels(sitk_from_volume_node(nodes["t2w"]), study["t2w"])

    dwi = series_from_sequence_node(nodes["dwi"])
    assert (dwi.name, dwi.unit) == ("b", "s/mm2")
    assert dwi.values.tolist() == list(B_VALUES)
    for volume, source in zip(dwi.volumes, study["dwi"], strict=True):
        same_voxels(volume, source)
    assert nodes["dwi"].GetAttribute("PRIMAGE.bValueSource") == "GE private (0043,1039)"

    dce = series_from_sequence_node(nodes["dce"])
    assert (dce.name, dce.unit) == ("time", "s")
    assert dce.values.tolist() == list(TIMES)
    for volume, source in zip(dce.volumes, study["dce"], strict=True):
        same_voxels(volume, source)
    assert {role: [n.GetName() for n in found] for role, found in nodes_by_role(scene).items()} == {
        "t2w": ["t2w"],
        "dwi": ["dwi"],
        "dce": ["dce"],
    }


def test_pet_node_holds_suv(study):
    scene = slicer.vtkMRMLScene()
    pet = study["truth"]["petct/pet"]
    nodes, skipped = load_dicom_files(scene, pet.files + study["truth"]["petct/ct"].files)
    assert skipped == [] and sorted(nodes) == ["ct", "pet"]
    assert nodes["pet"].GetAttribute("PRIMAGE.units") == "SUVbw g/ml"
    suv = slicer.util.arrayFromVolume(nodes["pet"])
    assert suv.max() == pytest.approx(6.0, rel=1e-3)  # the tumour's SUV in the synthetic PET


def test_tumour_seg_becomes_a_segmentation_node_on_its_image(study):
    scene = slicer.vtkMRMLScene()
    nodes, skipped = load_dicom_files(scene, study["truth"]["petct/ct"].files + study["seg"])
    assert skipped == [] and sorted(nodes) == ["ct", "tumour_ct"]
    segmentation = nodes["tumour_ct"]
    assert segmentation.IsA("vtkMRMLSegmentationNode")
    assert segmentation.GetAttribute(ROLE_ATTRIBUTE) == "tumour"
    (segment_id,) = segmentation.GetSegmentation().GetSegmentIDs()
    assert segmentation.GetSegmentation().GetSegment(segment_id).GetName() == "Tumour"
    mask = segment_binary_image(segmentation, segment_id)
    on_grid = sitk.Resample(mask, study["tumour"], sitk.Transform(), sitk.sitkNearestNeighbor)
    same_voxels(on_grid, study["tumour"])
    # No tumour ROI by the pattern: the SEG is reported, the CT still loads.
    nodes, skipped = load_dicom_files(
        slicer.vtkMRMLScene(), study["truth"]["petct/ct"].files + study["seg"],
        tumour_pattern="liver",
    )  # fmt: skip
    assert sorted(nodes) == ["ct"] and skipped[0]["role"] == "seg"
    assert "tumour pattern 'liver'" in skipped[0]["reason"]


def test_roles_are_proposed_for_nodes_loaded_by_slicer(study):
    """Nodes traced back to their series through the subject hierarchy "DICOM" UID, as
    Slicer's DICOM plugins leave them; files come from a callable like
    slicer.dicomDatabase.filesForSeries."""
    scene = slicer.vtkMRMLScene()
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    by_series: dict[str, list[str]] = {}
    for path in (f for group in study["files"].values() for f in group):
        by_series.setdefault(_series_uid(path), []).append(str(path))
    loaded = {}
    for uid in by_series:
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Series")
        item = hierarchy.CreateItem(hierarchy.GetSceneItemID(), node)
        hierarchy.SetItemUID(item, "DICOM", uid)
        loaded[uid] = node
    scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "not from DICOM")

    rows = propose_scene_roles(scene, lambda uid: by_series.get(uid, []))
    assert len(rows) == len(by_series)
    roles = {uid: node.GetAttribute(ROLE_ATTRIBUTE) for uid, node in loaded.items()}
    assert roles[_series_uid(study["files"]["t2w"][0])] == "t2w"
    assert roles[_series_uid(study["files"]["dwi"][0])] == "dwi"
    # Each per-time-point series is recognised as part of the DCE acquisition.
    dce_uids = {_series_uid(f) for f in study["files"]["dce"]}
    assert {roles[uid] for uid in dce_uids} == {"dce"}
    assert all(row["rule"] == "dce-split-series" for row in rows if row["series_uid"] in dce_uids)
    assert series_uid_of_node(scene.GetFirstNodeByName("not from DICOM")) is None

    node = loaded[_series_uid(study["files"]["t2w"][0])]
    set_node_role(node, "skip")
    assert node.GetAttribute(ROLE_ATTRIBUTE) == "skip"
    with pytest.raises(PrimageInputError, match="unknown role"):
        set_node_role(node, "t9w")


def test_bad_file_lists_are_refused(study, tmp_path):
    scene = slicer.vtkMRMLScene()
    with pytest.raises(PrimageInputError, match="no DICOM files"):
        load_dicom_files(scene, [])
    text = tmp_path / "notes.txt"
    text.write_text("not dicom")
    with pytest.raises(PrimageInputError, match="none of the given files"):
        load_dicom_files(scene, [text])
    # A role override that cannot be met is reported, not raised: T2w as DWI has no b-values.
    uid = _series_uid(study["files"]["t2w"][0])
    nodes, skipped = load_dicom_files(scene, study["files"]["t2w"], roles={uid: "dwi"})
    assert nodes == {} and "b-value missing" in skipped[0]["reason"]
