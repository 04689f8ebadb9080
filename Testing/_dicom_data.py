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


def leaks(paths: list[Path], extra_text: str = "") -> list[str]:
    """``file: string`` for every identifying string found in the files (gzip opened too)."""
    found = []
    needles = [s.encode() for s in identifying_strings()]
    for path in paths:
        blobs = [path.read_bytes()]
        if path.name.endswith(".gz"):
            blobs.append(gzip.decompress(blobs[0]))
        for needle in needles:
            if any(needle.lower() in blob.lower() for blob in blobs):
                found.append(f"{path}: {needle.decode()}")
    for needle in identifying_strings():
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
