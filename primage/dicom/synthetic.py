"""Write realistic synthetic DICOM series from the digital patient (tests, demo, examples).

:func:`write_series` turns 3D volumes (one per b-value or time point) into classic
single-frame files or one enhanced multi-frame file, with the geometry, rescale, timing and
b-value conventions of the chosen vendor. :func:`write_example_cohort` writes a small
multi-vendor cohort: localiser, T2w, T1w, T1w post-contrast, DWI with b-values in the
standard and in Siemens / GE / Philips private tags, scanner ADC, DCE as one 4D series
and as one series per time point, an enhanced multi-frame DWI, a derived MPR, CT, PET
with the radiopharmaceutical tags SUV needs, and the tumour as a DICOM SEG on the CT.
Every patient carries invented identifying data (:data:`IDENTITIES`), so tests can prove
none of it reaches an output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from primage.synthetic import TISSUES, make_digital_patient

MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
PET_STORAGE = "1.2.840.10008.5.1.4.1.1.128"

#: Invented identities of the example patients: every value must stay out of the outputs.
IDENTITIES = {
    "siemens": {
        "PatientName": "Zyxwarth^Quilliamina^Ottoline",
        "PatientID": "PRMID47114711",
        "PatientBirthDate": "20140502",
        "AccessionNumber": "ACCX88231977",
    },
    "ge": {
        "PatientName": "Brannoxville^Theodorick",
        "PatientID": "PRMID58225822",
        "PatientBirthDate": "20120917",
        "AccessionNumber": "ACCX99342088",
    },
    "philips": {
        "PatientName": "Quernleigh^Ambrosine",
        "PatientID": "PRMID69336933",
        "PatientBirthDate": "20160123",
        "AccessionNumber": "ACCX10453199",
    },
    "petct": {
        "PatientName": "Vellacourt^Isembard",
        "PatientID": "PRMID70447044",
        "PatientBirthDate": "20110630",
        "AccessionNumber": "ACCX21564200",
    },
}

#: Per-tissue SUVbw (g/ml) of the synthetic PET (tissue label -> SUV).
PET_SUV = {0: 0.0, 1: 0.4, 2: 1.0, 3: 0.8, 4: 1.5, 5: 2.0, 6: 3.0, 7: 1.8, 8: 6.0, 9: 0.5}

#: DCE frame times (s) of the example: irregular on purpose (exact times are checked).
EXAMPLE_FRAME_TIMES = (0.0, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.5)


def _ds(value: float) -> str:
    """A DS string of at most 16 characters (DICOM's limit)."""
    for digits in (8, 7, 6, 5, 4):
        text = np.format_float_positional(float(value), precision=digits, trim="-")
        if len(text) <= 16:
            return text
    raise ValueError(f"cannot write {value} as DS")


def _tm(seconds: float) -> str:
    """Seconds since midnight as a DICOM TM string (microseconds)."""
    micro = int(round(seconds * 1e6))
    whole, fraction = divmod(micro, 1_000_000)
    return f"{whole // 3600:02d}{whole // 60 % 60:02d}{whole % 60:02d}.{fraction:06d}"


@dataclass
class Study:
    """Patient and study attributes shared by a study's series."""

    identity: dict
    manufacturer: str
    study_uid: str = field(default_factory=generate_uid)
    date: str = "20240110"
    time_s: float = 9 * 3600.0  # study start, seconds since midnight
    weight_kg: float | None = None
    frame_of_reference: str = field(default_factory=generate_uid)


def _base(study: Study, modality: str, sop_class: str) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.Modality = modality
    ds.Manufacturer = study.manufacturer
    ds.StudyInstanceUID = study.study_uid
    ds.StudyDate = study.date
    ds.StudyTime = _tm(study.time_s)
    ds.StudyID = "1"
    ds.FrameOfReferenceUID = study.frame_of_reference
    ds.PatientSex = "F"
    for keyword, value in study.identity.items():
        setattr(ds, keyword, value)
    if study.weight_kg is not None:
        ds.PatientWeight = _ds(study.weight_kg)
    ds.PatientPosition = "HFS"
    return ds


def _b_tags(ds: Dataset, b: float, convention: str) -> None:
    if convention == "standard":
        ds.DiffusionBValue = float(b)
    elif convention == "siemens":
        block = ds.private_block(0x0019, "SIEMENS MR HEADER", create=True)
        block.add_new(0x0C, "IS", int(round(b)))
        ds.SequenceName = f"*ep_b{int(round(b))}{'t' if b else ''}"
    elif convention == "ge":
        block = ds.private_block(0x0043, "GEMS_PARM_01", create=True)
        block.add_new(0x39, "IS", [1_000_000_000 + int(round(b)), 8, 0, 0])
    elif convention == "philips":
        ds.DiffusionBValue = float(b)
        block = ds.private_block(0x2001, "Philips Imaging DD 001", create=True)
        block.add_new(0x03, "FL", float(b))
    elif convention != "none":
        raise ValueError(f"unknown b-value convention {convention!r}")


def _stored(values: np.ndarray, slope: float, intercept: float, signed: bool) -> np.ndarray:
    stored = np.round((values - intercept) / slope)
    info = np.iinfo(np.int16 if signed else np.uint16)
    if stored.min() < info.min or stored.max() > info.max:
        raise ValueError("values do not fit the stored pixel type; choose another rescale")
    return stored.astype(np.int16 if signed else np.uint16)


def _geometry(image: sitk.Image, slice_order: int):
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    origin = np.asarray(image.GetOrigin())
    spacing = image.GetSpacing()
    positions = [origin + direction[:, 2] * spacing[2] * k for k in range(image.GetSize()[2])]
    orientation = [_ds(v) for v in (*direction[:, 0], *direction[:, 1])]
    order = list(range(image.GetSize()[2]))[::slice_order]
    return positions, orientation, order


def write_series(
    folder: str | Path,
    study: Study,
    volumes: list[sitk.Image],
    *,
    modality: str = "MR",
    description: str,
    series_number: int,
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "M", "ND"),
    attributes: dict | None = None,
    b_values: list[float] | None = None,
    b_convention: str = "standard",
    times_s: list[float] | None = None,
    slice_time_s: float = 0.0,
    rescale: tuple[float, float] | str = (1.0, 0.0),
    enhanced: bool = False,
    slice_order: int = 1,
    series_uid: str | None = None,
    time_tags: tuple[str, ...] = ("AcquisitionTime", "ContentTime"),
    pet: dict | None = None,
) -> list[Path]:
    """Write one series; returns the files written.

    ``volumes`` are 3D images on one grid (modality values), one per b-value (``b_values``,
    s/mm^2, written with ``b_convention``: standard / siemens / ge / philips / none) or
    time point (``times_s``, seconds after the series time; each slice ``slice_time_s``
    later than the previous, as in 2D multi-slice acquisitions). ``rescale`` is
    (slope, intercept) or ``"per_slice"`` (PET: slope per slice, Int16 stored values).
    ``slice_order=-1`` writes instance numbers from the last slice. ``enhanced=True``
    writes one Enhanced MR multi-frame file (per-frame functional groups). ``time_tags``
    are the classic tags that carry frame times (TM values, or ms for ``TriggerTime``);
    ``pet`` adds PET tags (see
    :func:`write_example_cohort`).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    attributes = dict(attributes or {})
    series_time = study.time_s + 600.0 + 60.0 * series_number
    positions, orientation, order = _geometry(volumes[0], slice_order)
    spacing = volumes[0].GetSpacing()
    arrays = [sitk.GetArrayFromImage(v).astype(np.float64) for v in volumes]
    signed = bool(min(float(a.min()) for a in arrays) < 0) or rescale == "per_slice"
    sop_class = {"MR": MR_STORAGE, "CT": CT_STORAGE, "PT": PET_STORAGE}[modality]
    if enhanced:
        sop_class = ENHANCED_MR_STORAGE

    def frame_attributes(volume: int, k: int) -> tuple[dict, float, float, float]:
        values = arrays[volume][k]
        if rescale == "per_slice":
            slope = max(float(np.abs(values).max()), 1e-6) / 32000.0
            intercept = 0.0
        else:
            slope, intercept = rescale
        seconds = series_time + (times_s[volume] if times_s else 0.0) + slice_time_s * k
        return values, slope, intercept, seconds

    written = []
    if not enhanced:
        instance = 0
        for volume in range(len(volumes)):
            for k in order:
                values, slope, intercept, seconds = frame_attributes(volume, k)
                ds = _base(study, modality, sop_class)
                ds.update(
                    _series_header(
                        series_uid, series_number, description, image_type, series_time, study
                    )
                )
                for keyword, value in attributes.items():
                    setattr(ds, keyword, value)
                instance += 1
                ds.SOPInstanceUID = generate_uid()
                ds.InstanceNumber = instance
                ds.ImagePositionPatient = [_ds(v) for v in positions[k]]
                ds.ImageOrientationPatient = orientation
                ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]
                ds.SliceThickness = _ds(spacing[2])
                ds.SpacingBetweenSlices = _ds(spacing[2])
                ds.AcquisitionDate = study.date
                for tag in time_tags:
                    if tag == "TriggerTime":  # ms from the start of the series (DS)
                        ds.TriggerTime = _ds((seconds - series_time) * 1000.0)
                    else:
                        setattr(ds, tag, _tm(seconds))
                if b_values is not None:
                    _b_tags(ds, b_values[volume], b_convention)
                if pet is not None:
                    _pet_tags(ds, pet, study)
                ds.RescaleSlope = _ds(slope)
                ds.RescaleIntercept = _ds(intercept)
                _pixels(ds, _stored(values, slope, intercept, signed), signed)
                path = folder / f"{generate_uid(prefix=None)[-12:]}.dcm"
                _save(ds, path)
                written.append(path)
        return written

    # Enhanced MR: one file, frames ordered volume by volume, slice by slice.
    ds = _base(study, modality, sop_class)
    ds.update(
        _series_header(series_uid, series_number, description, image_type, series_time, study)
    )
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceNumber = 1
    ds.ContentDate = study.date
    ds.ContentTime = _tm(series_time)
    ds.AcquisitionDateTime = study.date + _tm(series_time)
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]
    measures.SliceThickness = _ds(spacing[2])
    measures.SpacingBetweenSlices = _ds(spacing[2])
    shared.PixelMeasuresSequence = Sequence([measures])
    plane = Dataset()
    plane.ImageOrientationPatient = orientation
    shared.PlaneOrientationSequence = Sequence([plane])
    transform = Dataset()
    slope, intercept = rescale if rescale != "per_slice" else (1.0, 0.0)
    transform.RescaleSlope = _ds(slope)
    transform.RescaleIntercept = _ds(intercept)
    transform.RescaleType = "US"
    shared.PixelValueTransformationSequence = Sequence([transform])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame, stored = [], []
    for volume in range(len(volumes)):
        for k in order:
            values, _, _, seconds = frame_attributes(volume, k)
            item = Dataset()
            position = Dataset()
            position.ImagePositionPatient = [_ds(v) for v in positions[k]]
            item.PlanePositionSequence = Sequence([position])
            content = Dataset()
            content.FrameAcquisitionDateTime = study.date + _tm(seconds)
            content.TemporalPositionIndex = volume + 1
            content.InStackPositionNumber = k + 1
            content.StackID = "1"
            item.FrameContentSequence = Sequence([content])
            if b_values is not None:
                diffusion = Dataset()
                diffusion.DiffusionBValue = float(b_values[volume])
                diffusion.DiffusionDirectionality = "ISOTROPIC" if b_values[volume] else "NONE"
                item.MRDiffusionSequence = Sequence([diffusion])
            per_frame.append(item)
            stored.append(_stored(values, slope, intercept, signed))
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.NumberOfFrames = len(per_frame)
    _pixels(ds, np.stack(stored), signed)
    path = folder / f"{generate_uid(prefix=None)[-12:]}.dcm"
    _save(ds, path)
    return [path]


def _series_header(uid, number, description, image_type, series_time, study) -> Dataset:
    ds = Dataset()
    ds.SeriesInstanceUID = uid
    ds.SeriesNumber = number
    ds.SeriesDescription = description
    ds.ProtocolName = description
    ds.ImageType = list(image_type)
    ds.SeriesDate = study.date
    ds.SeriesTime = _tm(series_time)
    return ds


def _pixels(ds: Dataset, stored: np.ndarray, signed: bool) -> None:
    if stored.ndim == 2:
        ds.Rows, ds.Columns = stored.shape
    else:
        ds.Rows, ds.Columns = stored.shape[1:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelData = np.ascontiguousarray(stored).tobytes()


def _save(ds: Dataset, path: Path) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True)


def _pet_tags(ds: Dataset, pet: dict, study: Study) -> None:
    ds.Units = pet.get("units", "BQML")
    if pet.get("decay_correction") is not None:
        ds.DecayCorrection = pet["decay_correction"]
    ds.CorrectedImage = ["ATTN", "DECY", "NORM", "SCAT", "RAN", "DTIM"]
    item = Dataset()
    item.Radiopharmaceutical = "Fluorodeoxyglucose"
    if pet.get("dose_bq") is not None:
        item.RadionuclideTotalDose = _ds(pet["dose_bq"])
    if pet.get("half_life_s") is not None:
        item.RadionuclideHalfLife = _ds(pet["half_life_s"])
    if pet.get("injection_s") is not None:
        item.RadiopharmaceuticalStartTime = _tm(pet["injection_s"])
        item.RadiopharmaceuticalStartDateTime = study.date + _tm(pet["injection_s"])
    ds.RadiopharmaceuticalInformationSequence = Sequence([item])


def series_time_s(study: Study, series_number: int) -> float:
    """Series time (seconds since midnight) :func:`write_series` gives a series number."""
    return study.time_s + 600.0 + 60.0 * series_number


def split_volumes(series: sitk.Image) -> list[sitk.Image]:
    """3D volumes of a 4D image."""
    size = list(series.GetSize())
    size[3] = 0
    return [
        sitk.Extract(
            series, size, [0, 0, 0, i], sitk.ExtractImageFilter.DIRECTIONCOLLAPSETOSUBMATRIX
        )
        for i in range(series.GetSize()[3])
    ]


def flipped_slices(image: sitk.Image) -> sitk.Image:
    """The same voxels on a left-handed grid: slice axis reversed (origin at the last slice)."""
    array = sitk.GetArrayFromImage(image)[::-1]
    flipped = sitk.GetImageFromArray(np.ascontiguousarray(array))
    direction = np.asarray(image.GetDirection()).reshape(3, 3).copy()
    last = image.TransformIndexToPhysicalPoint([0, 0, image.GetSize()[2] - 1])
    direction[:, 2] *= -1
    flipped.SetSpacing(image.GetSpacing())
    flipped.SetDirection(direction.ravel().tolist())
    flipped.SetOrigin(last)
    return flipped


def pet_activity(
    tissues: sitk.Image, dose_bq: float, weight_kg: float, decay_factor: float
) -> sitk.Image:
    """Activity concentration (Bq/ml) whose SUVbw is :data:`PET_SUV` per tissue."""
    labels = sitk.GetArrayFromImage(tissues)
    lookup = np.zeros(max(TISSUES) + 1)
    for label, suv in PET_SUV.items():
        lookup[label] = suv
    activity = lookup[labels] * dose_bq * decay_factor / (weight_kg * 1000.0)
    image = sitk.GetImageFromArray(activity)
    image.CopyInformation(tissues)
    return image


@dataclass
class ExampleSeries:
    """Truth of one written series: its voxels and axis values."""

    patient: str
    description: str
    role: str
    series_uid: str
    study_uid: str
    images: list[sitk.Image]
    values: list[float] | None = None
    files: list[Path] = field(default_factory=list)


def write_example_cohort(
    folder: str | Path, *, seed: int = 0, size=(32, 32, 8), spacing=(4.0, 4.0, 5.0)
) -> dict[str, ExampleSeries]:
    """Write the example cohort (4 patients, 5 studies) under ``folder``; returns the truth.

    Keys: ``<patient>/<series>`` (e.g. ``siemens/dwi``). File names are random, folders
    nested per patient and study, as hospital exports are.
    """
    folder = Path(folder)
    patient = make_digital_patient(
        seed, size=size, spacing=spacing, frame_times_s=EXAMPLE_FRAME_TIMES
    )
    b_values = list(patient.b_values)
    dwi = split_volumes(patient.dwi)
    dce = split_volumes(patient.dce)
    times = list(patient.frame_times)
    truth: dict[str, ExampleSeries] = {}

    def add(key, study, files, description, role, images, values=None, uid=None):
        uid = uid or str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
        truth[key] = ExampleSeries(
            key.split("/")[0], description, role, uid, study.study_uid, images, values, files
        )

    # Patient 1: Siemens MR study.
    study = Study(IDENTITIES["siemens"], "SIEMENS")
    out = folder / "export_a" / "DICOM" / "ST000001"
    mr = {"MagneticFieldStrength": "1.5"}
    t2 = {**mr, "EchoTime": "100", "RepetitionTime": "4000", "ScanningSequence": "SE"}
    t1 = {
        **mr,
        "EchoTime": "2.1",
        "RepetitionTime": "5.4",
        "ScanningSequence": "GR",
        "FlipAngle": "15",
    }
    localizer = _localizer(patient.t2w)
    localizer_uid = generate_uid()
    files = []
    for image in localizer:
        files += write_series(
            out / "SE1",
            study,
            [image],
            description="localizer",
            series_number=1,
            image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
            attributes=t1,
            series_uid=localizer_uid,
        )
    add("siemens/localizer", study, files, "localizer", "localizer", localizer, uid=localizer_uid)
    files = write_series(
        out / "SE2", study, [patient.t2w], description="t2_tse_tra", series_number=2, attributes=t2
    )
    add("siemens/t2w", study, files, "t2_tse_tra", "t2w", [patient.t2w])
    files = write_series(
        out / "SE3", study, [patient.t1w], description="t1_vibe_tra", series_number=3, attributes=t1
    )
    add("siemens/t1w", study, files, "t1_vibe_tra", "t1w", [patient.t1w])
    dwi_attrs = {**mr, "EchoTime": "70", "RepetitionTime": "3500", "ScanningSequence": "EP"}
    files = write_series(
        out / "SE4",
        study,
        dwi,
        description="ep2d_diff_b0_1000",
        series_number=4,
        image_type=("ORIGINAL", "PRIMARY", "DIFFUSION", "NONE"),
        attributes=dwi_attrs,
        b_values=b_values,
        b_convention="siemens",
        slice_time_s=0.1,
    )
    add("siemens/dwi", study, files, "ep2d_diff_b0_1000", "dwi", dwi, b_values)
    adc = sitk.Cast(sitk.Round(patient.truth_images["adc"] * 1e6), sitk.sitkInt16)
    files = write_series(
        out / "SE5",
        study,
        [adc],
        description="ep2d_diff_b0_1000_ADC",
        series_number=5,
        image_type=("DERIVED", "PRIMARY", "DIFFUSION", "ADC"),
        attributes=dwi_attrs,
    )
    add("siemens/adc", study, files, "ep2d_diff_b0_1000_ADC", "adc_scanner", [adc])
    files = write_series(
        out / "SE6",
        study,
        dce,
        description="t1_vibe_dyn",
        series_number=6,
        attributes=t1,
        times_s=times,
        slice_time_s=0.2,
    )
    add("siemens/dce", study, files, "t1_vibe_dyn", "dce", dce, times)
    files = write_series(
        out / "SE7",
        study,
        [patient.t1w],
        description="t1_vibe_tra_post",
        series_number=7,
        attributes={**t1, "ContrastBolusAgent": "Gadobutrol"},
    )
    add("siemens/t1w_post", study, files, "t1_vibe_tra_post", "t1w_post", [patient.t1w])
    files = write_series(
        out / "SE8",
        study,
        [patient.t2w],
        description="t2_tse_tra_MPR",
        series_number=8,
        image_type=("DERIVED", "SECONDARY", "MPR"),
        attributes=t2,
    )
    add("siemens/mpr", study, files, "t2_tse_tra_MPR", "derived", [patient.t2w])

    # Patient 2: GE MR study; T2w slices stored from head to feet (left-handed grid),
    # DWI b-values in GE's private tag, DCE as one series per time point.
    study = Study(IDENTITIES["ge"], "GE MEDICAL SYSTEMS", date="20240212", time_s=14 * 3600.0)
    out = folder / "export_b"
    t2_flipped = flipped_slices(patient.t2w)
    files = write_series(
        out / "s100", study, [t2_flipped], description="Ax T2 FRFSE", series_number=3, attributes=t2
    )
    add("ge/t2w", study, files, "Ax T2 FRFSE", "t2w", [t2_flipped])
    files = write_series(
        out / "s200",
        study,
        dwi,
        description="Ax DWI b1000",
        series_number=4,
        image_type=("ORIGINAL", "PRIMARY", "OTHER"),
        attributes=dwi_attrs,
        b_values=b_values,
        b_convention="ge",
    )
    add("ge/dwi", study, files, "Ax DWI b1000", "dwi", dwi, b_values)
    dce_files, dce_uids = [], []
    for number, volume in enumerate(dce):
        # One series per time point: series times 1 min apart, acquisition times carry the
        # real frame times.
        written = write_series(
            out / f"s3{number:02d}",
            study,
            [volume],
            description="Ax LAVA Multiphase",
            series_number=10 + number,
            attributes=t1,
            times_s=[times[number] - 60.0 * number],
            slice_time_s=0.0,
        )
        dce_files += written
        dce_uids.append(str(pydicom.dcmread(written[0], stop_before_pixels=True).SeriesInstanceUID))
    truth["ge/dce"] = ExampleSeries(
        "ge",
        "Ax LAVA Multiphase",
        "dce",
        ",".join(dce_uids),
        study.study_uid,
        dce,
        times,
        dce_files,
    )

    # Patient 3: Philips, two studies: classic DWI with standard and private b-values that
    # agree; then an enhanced multi-frame DWI and a T1w.
    study = Study(
        IDENTITIES["philips"], "Philips Medical Systems", date="20240301", time_s=8 * 3600.0
    )
    out = folder / "export_c" / "study1"
    files = write_series(
        out, study, [patient.t2w], description="T2W_TSE", series_number=401, attributes=t2
    )
    add("philips/t2w", study, files, "T2W_TSE", "t2w", [patient.t2w])
    files = write_series(
        out,
        study,
        dwi,
        description="DWI_b0-1000",
        series_number=501,
        image_type=("ORIGINAL", "PRIMARY", "M_SE", "M", "SE"),
        attributes=dwi_attrs,
        b_values=b_values,
        b_convention="philips",
    )
    add("philips/dwi", study, files, "DWI_b0-1000", "dwi", dwi, b_values)
    study = Study(
        IDENTITIES["philips"], "Philips Medical Systems", date="20240610", time_s=8 * 3600.0
    )
    out = folder / "export_c" / "study2"
    files = write_series(
        out,
        study,
        dwi,
        description="DWI_enhanced",
        series_number=601,
        image_type=("ORIGINAL", "PRIMARY", "DIFFUSION", "NONE"),
        attributes=dwi_attrs,
        b_values=b_values,
        enhanced=True,
    )
    add("philips/dwi_enhanced", study, files, "DWI_enhanced", "dwi", dwi, b_values)
    files = write_series(
        out, study, [patient.t1w], description="T1W_3D", series_number=701, attributes=t1
    )
    add("philips/t1w", study, files, "T1W_3D", "t1w", [patient.t1w])

    # Patient 4: PET/CT, and the tumour as a DICOM SEG drawn on the CT.
    write_petct(folder / "export_d", patient, truth)
    ct = truth["petct/ct"]
    files = write_tumour_seg(folder / "export_d" / "seg", ct.files, patient.tumour)
    uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    truth["petct/seg"] = ExampleSeries(
        "petct", "tumour", "seg", uid, ct.study_uid, [patient.tumour], None, files
    )
    return truth


def write_tumour_seg(folder: Path, image_files: list[Path], mask: sitk.Image) -> list[Path]:
    """Write ``mask`` (on the grid of the series of ``image_files``) as a binary DICOM SEG
    with one segment, "Tumour", made with highdicom; returns the file written."""
    import highdicom
    from pydicom.sr.codedict import codes

    sources = [pydicom.dcmread(f) for f in image_files]
    normal = np.cross(
        np.asarray(sources[0].ImageOrientationPatient[:3], float),
        np.asarray(sources[0].ImageOrientationPatient[3:], float),
    )
    sources.sort(key=lambda d: float(normal @ np.asarray(d.ImagePositionPatient, float)))
    # The mask array follows the image's slice order, which is the sources' order here.
    pixels = sitk.GetArrayFromImage(mask).astype(np.uint8)
    segment = highdicom.seg.SegmentDescription(
        segment_number=1,
        segment_label="Tumour",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=highdicom.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    seg = highdicom.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        segmentation_type="BINARY",
        segment_descriptions=[segment],
        series_instance_uid=generate_uid(),
        series_number=90,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="PRIMAGE synthetic",
        manufacturer_model_name="digital patient",
        software_versions="1",
        device_serial_number="0",
        series_description="tumour",
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{generate_uid(prefix=None)[-12:]}.dcm"
    seg.save_as(path)
    return [path]


PET_EXAMPLE = {
    "weight_kg": 23.5,
    "dose_bq": 1.2e8,
    "half_life_s": 6586.2,
    "uptake_s": 3720.0,  # injection 62 min before the series time
    "decay_correction": "START",
    "units": "BQML",
}


def write_petct(
    folder: Path, patient, truth: dict, *, pet: dict | None = None, key: str = "petct"
) -> None:
    """Write a PET/CT study (CT in HU with intercept -1024; PET in Bq/ml, per-slice slopes)."""
    pet = {**PET_EXAMPLE, **(pet or {})}
    study = Study(
        IDENTITIES["petct"],
        "SIEMENS",
        date="20240415",
        time_s=10 * 3600.0,
        weight_kg=pet["weight_kg"],
    )
    ct_files = write_series(
        folder / "ct",
        study,
        [patient.ct],
        modality="CT",
        description="CT WB 5mm",
        series_number=2,
        image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
        rescale=(1.0, -1024.0),
        attributes={"KVP": "100"},
    )
    uid = str(pydicom.dcmread(ct_files[0], stop_before_pixels=True).SeriesInstanceUID)
    truth[f"{key}/ct"] = ExampleSeries(
        key, "CT WB 5mm", "ct", uid, study.study_uid, [patient.ct], None, ct_files
    )
    number = 3
    series_time = series_time_s(study, number)
    decay = 2.0 ** (-pet["uptake_s"] / pet["half_life_s"])
    activity = pet_activity(patient.tissues, pet["dose_bq"], pet["weight_kg"], decay)
    tags = {
        **pet,
        "injection_s": None if pet.get("no_injection") else series_time - pet["uptake_s"],
    }
    pet_files = write_series(
        folder / "pet",
        study,
        [activity],
        modality="PT",
        description="PET WB AC",
        series_number=number,
        image_type=("ORIGINAL", "PRIMARY"),
        rescale="per_slice",
        pet=tags,
        time_tags=("AcquisitionTime",),
    )
    uid = str(pydicom.dcmread(pet_files[0], stop_before_pixels=True).SeriesInstanceUID)
    truth[f"{key}/pet"] = ExampleSeries(
        key, "PET WB AC", "pet", uid, study.study_uid, [activity], None, pet_files
    )


def _localizer(image: sitk.Image) -> list[sitk.Image]:
    """Three single-slice images in axial, coronal and sagittal planes through the centre."""
    size = image.GetSize()
    centre = image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in size])
    slices = []
    for normal_axis in (2, 1, 0):
        axes = [a for a in range(3) if a != normal_axis] + [normal_axis]
        direction = np.eye(3)[:, axes]
        if np.linalg.det(direction) < 0:
            direction[:, 0] *= -1
        grid = sitk.Image([32, 32, 1], sitk.sitkInt16)
        grid.SetSpacing([4.0, 4.0, 5.0])
        grid.SetDirection(direction.ravel().tolist())
        grid.SetOrigin((np.asarray(centre) - direction[:, :2] @ np.array([62.0, 62.0])).tolist())
        slices.append(
            sitk.Resample(
                image, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkInt16
            )
        )
    return slices
