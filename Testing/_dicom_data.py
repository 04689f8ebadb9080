"""DICOM test data: the example cohort, a folder of bad input, and checks shared by tests."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.uid import generate_uid

from primage.dicom.synthetic import (
    IDENTITIES,
    Study,
    split_volumes,
    write_petct,
    write_series,
)
from primage.synthetic import make_digital_patient

SECRET = "test-secret-0123456789abcdef"

MR_T2 = {"EchoTime": "100", "RepetitionTime": "4000"}
MR_T1 = {"EchoTime": "2.1", "RepetitionTime": "5.4", "FlipAngle": "15"}


def _uid(files) -> str:
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)


def write_bad_folder(folder: Path) -> dict[str, str]:
    """One study per kind of bad input (plus a good T2w); returns ``name -> series UID``.

    Kinds: non-DICOM files, a truncated file (header cut: unreadable; pixel data cut: the
    series is refused), a missing slice, two series sharing a UID, conflicting b-value
    sources, a DCE series without usable times, a PET series without decay information.
    """
    folder = Path(folder)
    patient = make_digital_patient(
        3,
        size=(16, 16, 6),
        spacing=(8.0, 8.0, 6.0),
        b_values=(0, 500, 1000),
        frame_times_s=(0, 10, 20, 30),
    )
    study = Study(IDENTITIES["siemens"], "SIEMENS", date="20240501")
    uids = {}
    files = write_series(
        folder / "good",
        study,
        [patient.t2w],
        description="t2_tse_tra",
        series_number=2,
        attributes=MR_T2,
    )
    uids["good_t2w"] = _uid(files)

    # Non-DICOM files mixed in.
    (folder / "notes.txt").write_text("scanned at the radiology department\n")
    (folder / "good" / "thumbnail.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    (folder / "empty.dcm").write_bytes(b"")
    (folder / "DICOMDIR.bak").write_bytes(b"\x00" * 200)

    # Truncated: one file cut inside its header, one series with pixel data cut short.
    files = write_series(
        folder / "trunc",
        study,
        [patient.t1w],
        description="t1_vibe_tra",
        series_number=3,
        attributes=MR_T1,
    )
    uids["truncated_pixels"] = _uid(files)
    data = files[2].read_bytes()
    files[2].write_bytes(data[: len(data) - 100])
    data = files[3].read_bytes()
    (folder / "cut_header.dcm").write_bytes(data[:300])

    # Missing slice: the middle file of a T2w series removed.
    files = write_series(
        folder / "missing",
        study,
        [patient.t2w],
        description="t2_haste_tra",
        series_number=4,
        attributes=MR_T2,
    )
    uids["missing_slice"] = _uid(files)
    positions = sorted(
        files,
        key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]),
    )
    positions[3].unlink()

    # Two different series sharing one SeriesInstanceUID.
    shared = generate_uid()
    write_series(
        folder / "shared_a",
        study,
        [patient.t1w],
        description="t1_se_tra",
        series_number=5,
        attributes=MR_T1,
        series_uid=shared,
    )
    write_series(
        folder / "shared_b",
        study,
        [patient.t2w],
        description="pd_tse_tra",
        series_number=6,
        attributes=MR_T2,
        series_uid=shared,
    )
    uids["shared_uid"] = shared

    # Conflicting b-value sources: Siemens private tag says b, the standard tag b + 100.
    dwi = split_volumes(patient.dwi)
    files = write_series(
        folder / "dwi",
        study,
        dwi,
        description="ep2d_diff",
        series_number=7,
        attributes={"EchoTime": "70", "RepetitionTime": "3500"},
        b_values=list(patient.b_values),
        b_convention="siemens",
    )
    for path in files:
        ds = pydicom.dcmread(path)
        b = float(ds.private_block(0x0019, "SIEMENS MR HEADER")[0x0C].value)
        ds.DiffusionBValue = b + 100.0 if b else 0.0
        ds.save_as(path)
    uids["conflicting_b"] = _uid(files)

    # DCE without usable times: every frame has the same acquisition and content time.
    dce = split_volumes(patient.dce)
    files = write_series(
        folder / "dce",
        study,
        dce,
        description="t1_vibe_dyn",
        series_number=8,
        attributes=MR_T1,
        times_s=[0.0] * len(dce),
    )
    uids["dce_no_times"] = _uid(files)

    # PET without decay information (DecayCorrection missing), in a PET/CT study.
    truth = {}
    write_petct(folder / "petct", patient, truth, pet={"decay_correction": None}, key="bad")
    uids["pet_no_decay"] = truth["bad/pet"].series_uid
    uids["ct"] = truth["bad/ct"].series_uid
    return uids


def identifying_strings() -> list[str]:
    """Every identifying value of the example patients, in the forms it could leak."""
    strings = []
    for identity in IDENTITIES.values():
        strings += identity["PatientName"].split("^")
        strings += [identity["PatientName"], identity["PatientID"], identity["AccessionNumber"]]
        birth = identity["PatientBirthDate"]
        strings += [birth, f"{birth[:4]}-{birth[4:6]}-{birth[6:]}"]
    return strings


def leaks(paths: list[Path], extra_text: str = "", also: list[str] = ()) -> list[str]:
    """``file: string`` for every identifying string (and every string of ``also``, e.g.
    FrameOfReferenceUIDs) found in the files (gzip opened too) or in ``extra_text``."""
    found = []
    strings = [*identifying_strings(), *also]
    needles = [s.encode() for s in strings]
    for path in paths:
        blobs = [path.read_bytes()]
        if path.name.endswith(".gz"):
            blobs.append(gzip.decompress(blobs[0]))
        for needle in needles:
            if any(needle.lower() in blob.lower() for blob in blobs):
                found.append(f"{path}: {needle.decode()}")
    for needle in strings:
        if needle.lower() in extra_text.lower():
            found.append(f"console output: {needle}")
    return found


def same_voxels(assembled: sitk.Image, source: sitk.Image, *, tolerance_mm: float = 1e-3) -> float:
    """Check every voxel of ``assembled`` sits on a voxel centre of ``source`` with the same
    value; returns the largest distance (mm) between corresponding voxel centres."""
    assert assembled.GetSize() == source.GetSize(), (assembled.GetSize(), source.GetSize())
    size = np.array(assembled.GetSize())
    k, j, i = np.meshgrid(*(np.arange(n) for n in size[::-1]), indexing="ij")
    index = np.stack([i.ravel(), j.ravel(), k.ravel()]).astype(float)

    def to_physical(image, idx):
        d = np.asarray(image.GetDirection()).reshape(3, 3)
        return (
            d @ (idx * np.asarray(image.GetSpacing())[:, None])
            + np.asarray(image.GetOrigin())[:, None]
        )

    points = to_physical(assembled, index)
    d = np.asarray(source.GetDirection()).reshape(3, 3)
    continuous = (d.T @ (points - np.asarray(source.GetOrigin())[:, None])) / np.asarray(
        source.GetSpacing()
    )[:, None]
    nearest = np.round(continuous).astype(int)
    distance = float(
        np.max(np.linalg.norm(to_physical(source, nearest.astype(float)) - points, axis=0))
    )
    assert distance < tolerance_mm, f"voxels are {distance} mm off the source grid"
    assert np.all(nearest >= 0) and np.all(nearest < size[:, None]), (
        "voxels outside the source grid"
    )
    values = sitk.GetArrayFromImage(assembled).ravel()
    expected = sitk.GetArrayFromImage(source)[nearest[2], nearest[1], nearest[0]]
    np.testing.assert_allclose(values, expected, rtol=0, atol=1e-9 + 1e-6 * np.abs(expected).max())
    return distance


RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"


def write_structure_set(
    path: Path, image_files: list[Path], rois: dict[str, list[np.ndarray]]
) -> str:
    """Write an RT Structure Set drawn on the series of ``image_files``; returns its UID.

    ``rois``: ROI name -> closed planar contours, each an (n, 3) array of LPS points (mm).
    The references (study, frame of reference, series, contour images) are the images'.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian

    images = [pydicom.dcmread(f, stop_before_pixels=True) for f in image_files]
    first = images[0]
    ds = Dataset()
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                    "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber"):  # fmt: skip
        if keyword in first:
            setattr(ds, keyword, first.get(keyword))
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = RT_STRUCTURE_SET_STORAGE
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "RTSTRUCT"
    ds.SeriesNumber = 90
    ds.SeriesDescription = "contours"
    ds.FrameOfReferenceUID = first.FrameOfReferenceUID
    ds.StructureSetLabel = "contours"
    ds.StructureSetDate = first.StudyDate
    ds.StructureSetTime = "120000"
    contour_images = []
    for image in images:
        item = Dataset()
        item.ReferencedSOPClassUID = image.SOPClassUID
        item.ReferencedSOPInstanceUID = image.SOPInstanceUID
        contour_images.append(item)
    series = Dataset()
    series.SeriesInstanceUID = first.SeriesInstanceUID
    series.ContourImageSequence = Sequence(contour_images)
    study = Dataset()
    study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    study.ReferencedSOPInstanceUID = first.StudyInstanceUID
    study.RTReferencedSeriesSequence = Sequence([series])
    frame = Dataset()
    frame.FrameOfReferenceUID = first.FrameOfReferenceUID
    frame.RTReferencedStudySequence = Sequence([study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame])
    structures, contours, observations = [], [], []
    for number, (name, polygons) in enumerate(rois.items(), start=1):
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = first.FrameOfReferenceUID
        roi.ROIName = name
        roi.ROIGenerationAlgorithm = "MANUAL"
        structures.append(roi)
        items = []
        for polygon in polygons:
            item = Dataset()
            item.ContourGeometricType = "CLOSED_PLANAR"
            item.NumberOfContourPoints = len(polygon)
            item.ContourData = [f"{v:.6f}" for v in np.asarray(polygon, float).ravel()]
            items.append(item)
        contour = Dataset()
        contour.ReferencedROINumber = number
        contour.ROIDisplayColor = [255, 0, 0]
        contour.ContourSequence = Sequence(items)
        contours.append(contour)
        observation = Dataset()
        observation.ObservationNumber = number
        observation.ReferencedROINumber = number
        observation.RTROIInterpretedType = "GTV"
        observation.ROIInterpreter = ""
        observations.append(observation)
    ds.StructureSetROISequence = Sequence(structures)
    ds.ROIContourSequence = Sequence(contours)
    ds.RTROIObservationsSequence = Sequence(observations)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return str(ds.SeriesInstanceUID)


def winding_inside(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Points (m, 2) strictly inside a simple polygon (n, 2) by the winding number: an
    algorithm independent of the rasteriser's even-odd crossing count."""
    x, y = points[:, 0:1], points[:, 1:2]
    x1, y1 = polygon[None, :, 0], polygon[None, :, 1]
    x2, y2 = np.roll(polygon[:, 0], -1)[None], np.roll(polygon[:, 1], -1)[None]
    side = (x2 - x1) * (y - y1) - (x - x1) * (y2 - y1)
    up = (y1 <= y) & (y2 > y) & (side > 0)
    down = (y1 > y) & (y2 <= y) & (side < 0)
    return (up.sum(axis=1) - down.sum(axis=1)) != 0
