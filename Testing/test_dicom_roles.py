"""Role rules on series as archives hold them: usable derived series (SUV-converted PET,
registered MR, full reformats) against secondary captures, screenshots, MPR thumbnails,
scanner-computed maps, projections and localisers, each with the reason it is not used."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from primage.dicom import scan_folder
from primage.dicom.inventory import inventory_rows
from primage.dicom.rules import load_rules
from primage.dicom.synthetic import IDENTITIES, Study, write_series

T1 = {"EchoTime": "2.1", "RepetitionTime": "5.4"}
T2 = {"EchoTime": "100", "RepetitionTime": "4000"}
PET_GML = {"units": "GML", "decay_correction": "START", "dose_bq": 2e8, "half_life_s": 6586.2}

#: name -> (write_series arguments, slices, expected role, expected rule, file edit)
CASES = {
    "registered MR (DERIVED\\SECONDARY)": (
        dict(description="t1_se_tra registered", image_type=("DERIVED", "SECONDARY"), attributes=T1),
        12, "t1w", "t1w-description", None),
    "resampled MR (DERIVED\\PRIMARY)": (
        dict(description="T1 axial", image_type=("DERIVED", "PRIMARY", "AXIAL"), attributes=T1),
        12, "t1w", "t1w-description", None),
    "full reformat": (
        dict(description="t2_tse_cor_MPR", image_type=("DERIVED", "SECONDARY", "MPR"), attributes=T2),
        12, "t2w", "t2w-description", None),
    "SUV-converted PET": (
        dict(modality="PT", description="PET AC SUV", image_type=("DERIVED", "SECONDARY"), pet=PET_GML),
        12, "pet", "pet-activity", None),
    "MPR thumbnail": (
        dict(description="t2_tse_cor_MPR", image_type=("DERIVED", "SECONDARY", "MPR"), attributes=T2),
        3, "derived", "mpr-thumbnail", None),
    "secondary capture": (
        dict(description="t2 key series", attributes=T2), 12, "derived", "secondary-capture", "sc"),
    "colour screenshot": (
        dict(description="T2 axial", attributes=T2), 12, "derived", "colour-image", "rgb"),
    "scanner FA map": (
        dict(description="ep2d_diff_FA", image_type=("DERIVED", "PRIMARY", "DIFFUSION", "FA"), attributes=T2),
        12, "derived", "scanner-parametric-map", None),
    "scanner ADC map": (
        dict(description="ep2d_diff_ADC", image_type=("DERIVED", "PRIMARY", "DIFFUSION", "ADC"), attributes=T2),
        12, "adc_scanner", "adc-image-type", None),
    "PET MIP": (
        dict(modality="PT", description="PET MIP", image_type=("DERIVED", "SECONDARY", "MIP"), pet=PET_GML),
        12, "derived", "derived-projection", None),
    "PET attenuation map": (
        dict(modality="PT", description="PET CTAC", image_type=("ORIGINAL", "PRIMARY"), pet={**PET_GML, "units": "1CM"}),
        12, "derived", "pet-attenuation-map", None),
    "subtraction": (
        dict(description="t1_vibe_post", image_type=("DERIVED", "PRIMARY", "M", "SUB"), attributes=T1),
        12, "derived", "derived-subtraction", None),
    "localiser": (
        dict(description="AAHScout", image_type=("ORIGINAL", "PRIMARY", "M"), attributes=T2),
        3, "localizer", "localizer-description", None),
}  # fmt: skip


def _edit(files, kind: str) -> None:
    for path in files:
        ds = pydicom.dcmread(path)
        if kind == "sc":
            ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
            ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
            ds.ConversionType = "WSD"
        elif kind == "rgb":
            grey = ds.pixel_array.astype(float)
            grey = (255 * (grey - grey.min()) / max(np.ptp(grey), 1)).astype(np.uint8)
            ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
            ds.PixelData = np.repeat(grey[..., None], 3, axis=-1).tobytes()
            del ds.RescaleSlope, ds.RescaleIntercept
        ds.save_as(path)


@pytest.fixture(scope="module")
def scanned(tmp_path_factory):
    root = tmp_path_factory.mktemp("roles")
    study = Study(IDENTITIES["siemens"], "SIEMENS", weight_kg=60.0)
    uids = {}
    for number, (name, (arguments, slices, _, _, edit)) in enumerate(CASES.items(), start=2):
        image = sitk.Image([16, 16, slices], sitk.sitkInt16) + 100 + number
        image.SetSpacing((2.0, 2.0, 4.0 + 0.1 * number))  # own grid: not a split DCE
        files = write_series(root / f"s{number}", study, [image], series_number=number, **arguments)
        if edit:
            _edit(files, edit)
        uids[name] = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    result = scan_folder(root)
    rows = {row["series_uid"]: row for row in inventory_rows(result)}
    return {name: rows[uid] for name, uid in uids.items()}


@pytest.mark.parametrize("name", list(CASES))
def test_each_kind_of_series_gets_its_role_and_a_reason(scanned, name):
    row = scanned[name]
    _, _, role, rule, _ = CASES[name]
    assert (row["proposed_role"], row["rule"]) == (role, rule), row["reason"]
    if role in ("derived", "localizer"):
        reason = next(r["reason"] for r in load_rules()["rules"] if r["name"] == rule)
        assert row["reason"] == f"{role}: {reason}" and row["status"] == "ok"
        assert row["output"] == ""
    else:
        assert row["status"] == "ok" and row["output"] in (role, f"{role}_2"), row["reason"]


def test_every_rule_of_a_role_not_assembled_says_why():
    for rule in load_rules()["rules"]:
        if rule["role"] in ("derived", "localizer", "unknown"):
            assert rule.get("reason"), rule["name"]
