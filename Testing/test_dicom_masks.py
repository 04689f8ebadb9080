"""Tumour masks in: the RT Structure Set rasteriser (even-odd rule, holes, oblique grids),
structure sets and DICOM SEG (binary, fractional, label map; written with highdicom from a known
mask) assembled as tumour_<image>.nii.gz with the chosen ROIs as labels."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from _dicom_data import SECRET, winding_inside, write_structure_set
from _shared_data import ibsi_sts_dicom, ibsi_sts_nifti

from primage.cli import main
from primage.dicom import scan_folder
from primage.dicom.inventory import inventory_rows
from primage.dicom.pseudonym import Pseudonymiser
from primage.dicom.rtstruct import ContourProblem, fill_polygons, rasterise
from primage.dicom.series import Geometry
from primage.dicom.synthetic import IDENTITIES, Study, write_series


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


def _circle(centre, radius, n=64) -> np.ndarray:
    angle = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.column_stack([centre[0] + radius * np.cos(angle), centre[1] + radius * np.sin(angle)])


# --- the rasteriser -----------------------------------------------------------------------


def test_voxel_centres_inside_a_polygon_match_the_winding_number():
    shape = (40, 50)
    polygon = np.array([[3.3, 4.1], [40.7, 2.2], [30.2, 20.5], [46.1, 35.8], [8.4, 30.3]])
    j, i = np.mgrid[0 : shape[0], 0 : shape[1]]
    expected = winding_inside(np.column_stack([i.ravel(), j.ravel()]).astype(float), polygon)
    inside = fill_polygons([polygon], shape)
    assert inside.sum() > 500
    np.testing.assert_array_equal(inside.ravel(), expected)


def test_a_contour_inside_another_is_a_hole_and_overlaps_cancel():
    outer = np.array([[2.0, 2.0], [12.0, 2.0], [12.0, 12.0], [2.0, 12.0]])
    hole = np.array([[5.5, 5.5], [8.5, 5.5], [8.5, 8.5], [5.5, 8.5]])
    ring = fill_polygons([outer, hole], (16, 16))
    # Half-open rule: an integer-aligned square of side 10 holds exactly 10 x 10 centres.
    assert fill_polygons([outer], (16, 16)).sum() == 100
    assert ring.sum() == 100 - 9 and not ring[6:9, 6:9].any()
    other = outer + 5.0
    both = fill_polygons([outer, other], (20, 20))
    assert both.sum() == 100 + 100 - 2 * 25  # the 5 x 5 overlap is XOR'ed out


def test_rasterise_on_a_rotated_left_handed_grid_follows_physical_points():
    angle = np.deg2rad(30)
    row = np.array([np.cos(angle), np.sin(angle), 0.0])
    column = np.array([-np.sin(angle), np.cos(angle), 0.0])
    direction = np.column_stack([row, column, [0.0, 0.0, -1.0]])  # slices head to feet
    geometry = Geometry((10.0, -20.0, 50.0), (0.8, 1.3, 2.5), tuple(direction.ravel()), (40, 36, 7))
    # A circle of radius 9 mm in the plane z = 50 - 3 x 2.5 (slice 3), drawn in LPS.
    centre = np.array([22.0, -3.0])
    polygon = _circle(centre, 9.0, 200)
    contour = np.column_stack([polygon, np.full(len(polygon), 50.0 - 7.5)])
    mask, notes = rasterise([contour], geometry)
    assert notes == [] and mask[3].sum() > 100 and not np.delete(mask, 3, axis=0).any()
    j, i = np.mgrid[0:36, 0:40]
    points = np.asarray(geometry.origin)[:2] + (
        np.column_stack([i.ravel() * 0.8, j.ravel() * 1.3]) @ direction[:2, :2].T
    )
    np.testing.assert_array_equal(mask[3].ravel(), winding_inside(points, polygon))


def test_contours_not_parallel_to_the_slices_are_refused():
    geometry = Geometry((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (10, 10, 10))
    tilted = np.array([[1.0, 1.0, 2.0], [8.0, 1.0, 2.0], [8.0, 8.0, 4.0], [1.0, 8.0, 4.0]])
    with pytest.raises(ContourProblem, match="not drawn on slices parallel"):
        rasterise([tilted], geometry)


# --- structure sets through scan and assemble ---------------------------------------------


@pytest.fixture(scope="module")
def ct_with_contours(tmp_path_factory):
    """A small synthetic CT and a structure set with a GTV (with a hole), a lesion and a body."""
    root = tmp_path_factory.mktemp("rtstruct")
    image = sitk.Image([24, 20, 6], sitk.sitkInt16) - 1000
    image.SetSpacing((2.0, 2.5, 3.0))
    image.SetOrigin((-20.0, -30.0, 100.0))
    study = Study(IDENTITIES["petct"], "SIEMENS")
    files = write_series(
        root / "in" / "ct", study, [image], modality="CT", description="CT abdomen",
        series_number=2, image_type=("ORIGINAL", "PRIMARY", "AXIAL"), rescale=(1.0, -1024.0),
    )  # fmt: skip

    def on_slice(polygon, k):  # voxel indices (i, j) -> LPS contour on slice k
        xy = np.asarray(image.GetOrigin())[:2] + polygon * np.asarray(image.GetSpacing())[:2]
        return np.column_stack([xy, np.full(len(xy), 100.0 + 3.0 * k)])

    outer, hole = _circle((10.2, 9.6), 6.0), _circle((10.2, 9.6), 2.0)
    rois = {
        "GTV primary": [on_slice(outer, k) for k in (1, 2, 3)] + [on_slice(hole, 2)],
        "Body": [on_slice(np.array([[0.5, 0.5], [22.5, 0.5], [22.5, 18.5], [0.5, 18.5]]), 2)],
        "lesion 2": [on_slice(_circle((19.0, 15.0), 2.5), 4)],
    }
    write_structure_set(root / "in" / "rs" / "RS.dcm", files, rois)
    inventory = root / "inventory.csv"
    assert main(["dicom", "scan", "-i", str(root / "in"), "-o", str(inventory), "-q"]) == 0
    (root / "secret").write_text(SECRET)
    case = Pseudonymiser(secret=SECRET.encode())(IDENTITIES["petct"]["PatientID"])
    return {"root": root, "inventory": inventory, "image": image, "case": case, "on": on_slice,
            "outer": outer, "hole": hole}  # fmt: skip


def _assemble(setup, name, *extra, inventory=None) -> tuple[int, Path]:
    cohort = setup["root"] / name
    code = main(
        ["dicom", "assemble", "-i", str(setup["root"] / "in"), "--inventory",
         str(inventory or setup["inventory"]), "-o", str(cohort), "--secret-file",
         str(setup["root"] / "secret"), "-q", *extra]
    )  # fmt: skip
    return code, cohort


def test_structure_set_becomes_a_labelled_tumour_mask(ct_with_contours):
    setup = ct_with_contours
    rows = {r["modality"]: r for r in _rows(setup["inventory"]) if r["series_uid"]}
    assert rows["RTSTRUCT"]["proposed_role"] == "rtstruct"
    assert rows["RTSTRUCT"]["output"] == "tumour_ct"
    assert "labels 1: GTV primary, 2: lesion 2; not used: Body" in rows["RTSTRUCT"]["reason"]
    code, cohort = _assemble(setup, "cohort")
    assert code == 0
    folder = cohort / setup["case"]
    mask = sitk.ReadImage(str(folder / "tumour_ct.nii.gz"))
    ct = sitk.ReadImage(str(folder / "ct.nii.gz"))
    assert mask.GetSize() == ct.GetSize() and mask.GetOrigin() == ct.GetOrigin()
    labels = sitk.GetArrayFromImage(mask)
    j, i = np.mgrid[0:20, 0:24]
    centres = np.column_stack([i.ravel(), j.ravel()]).astype(float)
    disc = winding_inside(centres, setup["outer"]).reshape(20, 24)
    ring = disc & ~winding_inside(centres, setup["hole"]).reshape(20, 24)
    for k, expected in ((1, disc), (2, ring), (3, disc)):
        np.testing.assert_array_equal(labels[k] == 1, expected)
    assert (labels == 2).sum() == winding_inside(centres, _circle((19.0, 15.0), 2.5)).sum() > 0
    assert set(np.unique(labels[4])) == {0, 2} and not labels[[0, 5]].any()
    entry = json.loads((folder / "case.json").read_text())["files"]["tumour_ct.nii.gz"]
    assert entry["labels"] == {"1": "GTV primary", "2": "lesion 2"}
    assert entry["rois_not_used"] == ["Body"] and entry["image"] == "ct.nii.gz"
    assert entry["frame_of_reference"] == "FoR-1"
    assert (
        json.loads((folder / "case.json").read_text())["files"]["ct.nii.gz"]["frame_of_reference"]
        == "FoR-1"
    )


def test_the_tumour_roi_pattern_is_configurable(ct_with_contours):
    code, cohort = _assemble(ct_with_contours, "body", "--tumour-roi", "^body$")
    assert code == 0
    folder = cohort / ct_with_contours["case"]
    entry = json.loads((folder / "case.json").read_text())["files"]["tumour_ct.nii.gz"]
    assert entry["labels"] == {"1": "Body"}
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "tumour_ct.nii.gz")))
    assert (labels[2] == 1).sum() == 22 * 18 and labels.sum() == 22 * 18


def test_a_mask_that_cannot_be_used_is_skipped_with_its_reason(ct_with_contours, capsys):
    code, cohort = _assemble(ct_with_contours, "nomatch", "--tumour-roi", "liver")
    assert code == 1  # something was skipped
    report = {r["role"]: r for r in _rows(cohort / "dicom_assembly.csv")}
    assert report["rtstruct"]["status"] == "skipped"
    assert (
        "no ROI / segment name matches the tumour pattern 'liver'" in report["rtstruct"]["reason"]
    )
    assert "GTV primary, Body, lesion 2" in report["rtstruct"]["reason"]
    assert not (cohort / ct_with_contours["case"] / "tumour_ct.nii.gz").exists()
    # The structure set's image left out: the mask says why it was not written.
    rows = _rows(ct_with_contours["inventory"])
    for row in rows:
        if row["modality"] == "CT":
            row["role"] = "skip"
    edited = ct_with_contours["root"] / "edited.csv"
    with open(edited, "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    code, cohort = _assemble(ct_with_contours, "noimage", inventory=edited)
    report = {r["role"]: r for r in _rows(cohort / "dicom_assembly.csv")}
    assert report["rtstruct"]["status"] == "skipped"
    assert "is not assembled (role skip)" in report["rtstruct"]["reason"]
    assert report["skip"]["status"] == "not assembled"
    assert report["skip"]["reason"] == "skip: set in the inventory"


def test_a_bad_tumour_pattern_is_refused_before_anything_is_written(ct_with_contours, capsys):
    code, cohort = _assemble(ct_with_contours, "badpattern", "--tumour-roi", "gtv(")
    assert code == 2 and not cohort.exists()
    assert "not a regular expression" in capsys.readouterr().err


# --- DICOM SEG in ---------------------------------------------------------------------------


def _write_seg(path: Path, image_folder: Path, segments: dict[str, np.ndarray], kind: str):
    """A SEG of ``kind`` (BINARY, FRACTIONAL, LABELMAP) written with highdicom on the series
    of ``image_folder`` (arrays [k, j, i] in the order of the slices along the normal, as
    the reference NIfTI; a label map is made from the segments in order, later on top)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    sources = [pydicom.dcmread(f) for f in sorted(image_folder.glob("*.dcm"))]
    sources.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label,
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Neoplasm,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for number, label in enumerate(segments, start=1)
    ]
    pixels = np.stack(list(segments.values()), axis=-1)
    if kind == "LABELMAP":
        pixels = np.zeros(pixels.shape[:3], np.uint8)
        for number, array in enumerate(segments.values(), start=1):
            pixels[array > 0] = number
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels.astype(np.float32 if kind == "FRACTIONAL" else np.uint8),
        segmentation_type=kind,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=50,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="PRIMAGE test",
        manufacturer_model_name="test",
        software_versions="1",
        device_serial_number="1",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path)


@pytest.mark.filterwarnings("ignore::UserWarning")  # the archive's SH / PN values
@pytest.mark.parametrize("kind", ["BINARY", "FRACTIONAL", "LABELMAP"])
def test_dicom_seg_becomes_the_tumour_mask_it_was_made_from(tmp_path, kind):
    """A SEG made from IBSI's reference PET mask (real PET series) is read back onto the PET
    grid voxel for voxel; a second tumour segment gets label 2, other segments are not used."""
    from scipy import ndimage

    case = "STS_003"
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(ibsi_sts_nifti(case, "PET", "mask")))) > 0
    second = np.zeros_like(truth)
    second[2:5, 3:8, 4:9] = True
    body = ndimage.binary_dilation(truth, iterations=2)
    if kind == "FRACTIONAL":  # the tumour at 0.8 with a 0.3 halo: thresholded at 0.5
        tumour = np.where(truth, 0.8, np.where(body, 0.3, 0.0))
        segments = {"GTV": tumour, "Body": body * 0.9, "Lesion 2": second * 0.6}
    elif kind == "LABELMAP":  # one label per voxel: the body around the tumour
        segments = {"Body": body, "GTV": truth, "Lesion 2": second}
    else:
        segments = {"GTV": truth, "Body": body, "Lesion 2": second}
    folder = tmp_path / "in"
    folder.mkdir()
    os.symlink(ibsi_sts_dicom(case) / "PET" / "image", folder / "pet", target_is_directory=True)
    _write_seg(folder / "seg" / "seg.dcm", ibsi_sts_dicom(case) / "PET" / "image", segments, kind)
    inventory = tmp_path / "inventory.csv"
    assert main(["dicom", "scan", "-i", str(folder), "-o", str(inventory), "-q"]) == 0
    rows = {r["modality"]: r for r in _rows(inventory) if r["series_uid"]}
    assert rows["SEG"]["proposed_role"] == "seg" and rows["SEG"]["output"] == "tumour_pet"
    (tmp_path / "secret").write_text(SECRET)
    cohort = tmp_path / "cohort"
    code = main(
        ["dicom", "assemble", "-i", str(folder), "--inventory", str(inventory), "-o",
         str(cohort), "--secret-file", str(tmp_path / "secret"), "-q"]
    )  # fmt: skip
    assert code == 0
    result = cohort / Pseudonymiser(secret=SECRET.encode())(case)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(result / "tumour_pet.nii.gz")))
    assert not (truth & second).any()  # the tumour lies on slices 15-34
    np.testing.assert_array_equal(labels == 1, truth)
    np.testing.assert_array_equal(labels == 2, second)
    entry = json.loads((result / "case.json").read_text())["files"]["tumour_pet.nii.gz"]
    assert entry["labels"] == {"1": "GTV", "2": "Lesion 2"}
    assert [n for n in entry["rois_not_used"] if n != "Background"] == ["Body"]
    assert entry["seg_type"] == kind
    assert entry["source"] == "DICOM SEG" and "notes" not in entry  # same grid, no overlap
    assert entry["voxels"] == {"1": int(truth.sum()), "2": int(second.sum())}


def test_frames_of_reference_become_tokens_in_order_of_first_appearance(tmp_path):
    """CT and PET share one FrameOfReferenceUID, the MR of the same study has its own."""
    petct = Study(IDENTITIES["petct"], "SIEMENS")
    mr = Study(IDENTITIES["petct"], "SIEMENS", study_uid=petct.study_uid)
    assert mr.frame_of_reference != petct.frame_of_reference
    image = sitk.Image([8, 8, 4], sitk.sitkInt16) + 10
    image.SetSpacing((3.0, 3.0, 3.0))
    pet = {"units": "GML"}
    write_series(tmp_path / "in" / "mr", mr, [image], description="t2_tse", series_number=2,
                 attributes={"EchoTime": "100", "RepetitionTime": "4000"})  # fmt: skip
    write_series(tmp_path / "in" / "ct", petct, [image], modality="CT", description="CT",
                 series_number=3)  # fmt: skip
    write_series(tmp_path / "in" / "pet", petct, [image], modality="PT", description="PET",
                 series_number=4, pet=pet)  # fmt: skip
    inventory = tmp_path / "inventory.csv"
    assert main(["dicom", "scan", "-i", str(tmp_path / "in"), "-o", str(inventory), "-q"]) == 0
    (tmp_path / "secret").write_text(SECRET)
    code = main(
        ["dicom", "assemble", "-i", str(tmp_path / "in"), "--inventory", str(inventory), "-o",
         str(tmp_path / "cohort"), "--secret-file", str(tmp_path / "secret"), "-q"]
    )  # fmt: skip
    assert code == 0
    case = Pseudonymiser(secret=SECRET.encode())(IDENTITIES["petct"]["PatientID"])
    files = json.loads((tmp_path / "cohort" / case / "case.json").read_text())["files"]
    tokens = {name: entry["frame_of_reference"] for name, entry in files.items()}
    assert tokens == {"t2w.nii.gz": "FoR-1", "ct.nii.gz": "FoR-2", "pet.nii.gz": "FoR-2"}
    text = "".join(p.read_text() for p in (tmp_path / "cohort").rglob("*.json"))
    assert mr.frame_of_reference not in text and petct.frame_of_reference not in text


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_seg_without_a_referenced_series_is_matched_by_its_source_images(tmp_path):
    case = "STS_012"
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(ibsi_sts_nifti(case, "PET", "mask")))) > 0
    folder = tmp_path / "in"
    folder.mkdir()
    images = ibsi_sts_dicom(case) / "PET" / "image"
    os.symlink(images, folder / "pet", target_is_directory=True)
    path = folder / "seg" / "seg.dcm"
    _write_seg(path, images, {"tumour": truth}, "BINARY")
    seg = pydicom.dcmread(path)
    del seg.ReferencedSeriesSequence
    seg.save_as(path)
    rows = {r["modality"]: r for r in inventory_rows(scan_folder(folder)) if r["series_uid"]}
    assert rows["SEG"]["output"] == "tumour_pet" and rows["SEG"]["status"] == "ok"


def test_a_structure_set_referencing_a_missing_series_falls_back_to_its_frame_of_reference(
    ct_with_contours, tmp_path
):
    folder = tmp_path / "in"
    folder.mkdir()
    os.symlink(ct_with_contours["root"] / "in" / "ct", folder / "ct", target_is_directory=True)
    rs = pydicom.dcmread(ct_with_contours["root"] / "in" / "rs" / "RS.dcm")
    series = rs.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    series.RTReferencedSeriesSequence[0].SeriesInstanceUID = pydicom.uid.generate_uid()
    del series.RTReferencedSeriesSequence[0].ContourImageSequence  # an export with new UIDs
    rs.save_as(folder / "RS.dcm")
    rows = {r["modality"]: r for r in inventory_rows(scan_folder(folder)) if r["series_uid"]}
    assert rows["RTSTRUCT"]["output"] == "tumour_ct", rows["RTSTRUCT"]["reason"]
    (tmp_path / "secret").write_text(SECRET)
    code = main(
        ["dicom", "assemble", "-i", str(folder), "--inventory", str(_write_inventory(tmp_path, folder)),
         "-o", str(tmp_path / "cohort"), "--secret-file", str(tmp_path / "secret"), "-q"]
    )  # fmt: skip
    assert code == 0
    result = tmp_path / "cohort" / ct_with_contours["case"]
    entry = json.loads((result / "case.json").read_text())["files"]["tumour_ct.nii.gz"]
    assert entry["matched_by"] == "frame of reference"
    code, cohort = _assemble(ct_with_contours, "referenced")  # the same, found by reference
    assert code == 0
    reference = cohort / ct_with_contours["case"] / "tumour_ct.nii.gz"
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(sitk.ReadImage(str(result / "tumour_ct.nii.gz"))),
        sitk.GetArrayFromImage(sitk.ReadImage(str(reference))),
    )


def test_without_a_series_reference_several_images_in_one_frame_are_ambiguous(tmp_path):
    """IBSI's PET, CT and MR share one frame of reference: a structure set that names none of
    them is not guessed onto one."""
    case = ibsi_sts_dicom("STS_012")
    folder = tmp_path / "in"
    folder.mkdir()
    for series in ("CT", "PET", "MR_T1"):
        os.symlink(case / series / "image", folder / series, target_is_directory=True)
    rs = pydicom.dcmread(case / "PET" / "mask" / "RS.dcm")
    del rs.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence
    rs.save_as(folder / "RS.dcm")
    rows = {r["modality"]: r for r in inventory_rows(scan_folder(folder)) if r["series_uid"]}
    assert rows["RTSTRUCT"]["status"] == "error" and rows["RTSTRUCT"]["output"] == ""
    assert "3 images share its frame of reference (t1w, ct, pet)" in rows["RTSTRUCT"]["reason"]


def _write_inventory(tmp_path: Path, folder: Path) -> Path:
    inventory = tmp_path / "inventory.csv"
    assert main(["dicom", "scan", "-i", str(folder), "-o", str(inventory), "-q"]) == 0
    return inventory
